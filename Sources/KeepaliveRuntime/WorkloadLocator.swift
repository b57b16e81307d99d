// SPDX-License-Identifier: MIT
import BPF
import KeepaliveCore

import struct SystemPackage.FilePath

/// The runtimes keepalive may ask, as the flags, the policy file and the
/// environment name them (else their usual sockets).
public struct Runtimes: Sendable {
    public let cri: EndpointChoice
    public let docker: EndpointChoice

    public init(cri: String?, docker: String?, environment: [String: String]) throws(EndpointError) {
        self.cri = try EndpointChoice(.cri, given: cri, environment: environment)
        self.docker = try EndpointChoice(.docker, given: docker, environment: environment)
    }

    public subscript(kind: RuntimeKind) -> EndpointChoice {
        switch kind {
        case .cri: cri
        case .docker: docker
        }
    }
}

/// Finds a pod's or a container's cgroup through the runtimes, for the
/// command line's --pod and --container and for the agent.
public struct WorkloadLocator: Sendable {
    public let runtimes: Runtimes
    public let cgroups: CgroupFS

    public init(runtimes: Runtimes, cgroups: CgroupFS) {
        self.runtimes = runtimes
        self.cgroups = cgroups
    }

    /// `--pod NAMESPACE/NAME`: the pod's own cgroup, which holds every container it has and will have.
    public func pod(_ reference: String) async throws -> (cgroup: Cgroup, origin: Origin) {
        let parts = reference.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
            throw LocatorError("--pod takes NAMESPACE/NAME, not '\(reference)'")
        }
        let (namespace, name) = (String(parts[0]), String(parts[1]))
        let endpoints = runtimes.cri.candidates
        guard !endpoints.isEmpty else { throw RuntimeError.noEndpoint(.cri, looked: runtimes.cri.description) }
        var failures: [RuntimeError] = []
        for endpoint in endpoints {
            do {
                let found = try await CRIClient.with(endpoint) { client in
                    let pods = try await client.pods().filter { $0.namespace == namespace && $0.name == name }
                    guard let pod = pods.first else { return nil as (FilePath, PodInfo)? }
                    return (try await podCgroup(pod, client: client), pod)
                }
                if let (path, pod) = found { return (try existing(path, "pod \(pod.qualifiedName)"), pod.origin) }
            } catch let error as RuntimeError {
                failures.append(error)
            }
        }
        if let failure = failures.first { throw failure }  // not found where it could be asked: no proof it is absent
        throw RuntimeError.noSuchPod(reference, looked: endpoints.map { "CRI at \($0)" }.joined(separator: ", "))
    }

    /// `--container NAME|ID`: a docker or podman container by name, id or id
    /// prefix, else a CRI container by name or id; exactly one must match.
    public func container(_ reference: String) async throws -> (cgroup: Cgroup, origin: Origin) {
        var matches: [(path: FilePath, info: ContainerInfo)] = []
        var failures: [RuntimeError] = []
        var looked: [String] = []
        for endpoint in runtimes.docker.candidates {
            let source = "Docker-compatible API at \(endpoint)"
            looked.append(source)
            let client = DockerClient(endpoint: endpoint)
            do {
                if let found = try await client.container(reference) {
                    matches.append((try await client.cgroup(of: found), found.info(source: source)))
                }
            } catch {
                failures.append(error)
            }
        }
        for endpoint in runtimes.cri.candidates {
            looked.append("CRI at \(endpoint)")
            do {
                let found = try await CRIClient.with(endpoint) { client in
                    var found: [(FilePath, ContainerInfo)] = []
                    for info in try await client.containers()
                    where info.name == reference || info.id == reference
                        || (reference.count >= 12 && info.id.hasPrefix(reference))
                    {
                        guard let path = try await client.containerCgroup(id: info.id).cgroup else {
                            throw RuntimeError.noCgroup("container \(info.name)", "its status names no cgroup")
                        }
                        found.append((path, info))
                    }
                    return found
                }
                matches += found.map { (path: $0.0, info: $0.1) }
            } catch let error as RuntimeError {
                failures.append(error)
            }
        }
        if matches.count > 1 {
            throw RuntimeError.ambiguous(
                reference,
                matches: matches.map { "\($0.info.origin.display ?? $0.info.id) (\($0.info.source))" }
            )
        }
        // A runtime that did not answer might have one more: no proof the match is the only one.
        if let failure = failures.first { throw failure }
        if let match = matches.first {
            return (try existing(match.path, "container \(match.info.name)"), match.info.origin)
        }
        guard !looked.isEmpty else {
            throw RuntimeError.noEndpoint(
                .docker,
                looked: runtimes.docker.description + ", " + runtimes.cri.description
            )
        }
        throw RuntimeError.noSuchContainer(reference, looked: looked.joined(separator: ", "))
    }

    /// A pod's cgroup below the hierarchy's root: what its sandbox status says
    /// (cgroup_parent, or its own container's parent), else the parent of one
    /// of its containers' cgroups, else a directory named after its uid.
    public func podCgroup(_ pod: PodInfo, client: CRIClient) async throws -> FilePath {
        if let status = try await client.pod(sandboxID: pod.sandboxID), let cgroup = status.cgroup { return cgroup }
        for container in try await client.containers(inPod: pod.sandboxID) {
            if let cgroup = try await client.containerCgroup(id: container.id).cgroup {
                return cgroup.removingLastComponent()
            }
        }
        let found: FilePath?
        do {
            found = try podDirectory(uid: pod.uid)
        } catch {
            throw RuntimeError.noCgroup("pod \(pod.qualifiedName)", "its status names none, and \(error)")
        }
        guard let found else {
            throw RuntimeError.noCgroup(
                "pod \(pod.qualifiedName)",
                "its status names none, and no pod\(pod.uid) directory exists"
            )
        }
        return found
    }

    /// kubelet's directory for a pod uid, under the cgroupfs or systemd driver's tree.
    /// A directory that cannot be read is an error: the pod may be in it.
    func podDirectory(uid: String) throws(SyscallError) -> FilePath? {
        for root in ["kubepods", "kubepods.slice"].map({ FilePath($0) }) {
            var level = [root]
            for _ in 0..<2 {  // the pod is below its QoS class, or directly below (guaranteed)
                var next: [FilePath] = []
                for directory in level {
                    for child in try cgroups.children(of: directory) {
                        guard let name = child.path.lastComponent?.string else { continue }
                        if CgroupNaming.kind(of: name) == .pod(uid: uid) { return child.path }
                        next.append(child.path)
                    }
                }
                level = next
            }
        }
        return nil
    }

    /// The cgroup at a runtime's path, which must exist under the cgroup2 mount.
    func existing(_ path: FilePath, _ what: String) throws -> Cgroup {
        guard let cgroup = cgroups.cgroup(at: path) else {
            throw RuntimeError.noCgroup(what, "\(cgroups.absolute(path).displayString) does not exist")
        }
        return cgroup
    }
}

public struct LocatorError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
