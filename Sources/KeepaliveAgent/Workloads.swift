// SPDX-License-Identifier: MIT
import KeepaliveCore
import KeepaliveRuntime
import Synchronization
import struct SystemPackage.FilePath

/// A pod or container the policy file selects: its cgroup, the entry that
/// selects it and the values it gets (a pod's annotations may change them).
struct SelectedWorkload: Sendable {
    let cgroup: Cgroup
    let spec: Int
    let policy: Policy
    let origin: Origin
}

/// What the runtimes said in one full pass.
struct WorkloadResolution: Sendable {
    var selected: [UInt64: SelectedWorkload] = [:]
    /// The cgroups of every workload the runtimes named and keepalive placed.
    /// A policy set for a workload is withdrawn only when its cgroup is among
    /// them and no entry selects it: a runtime that said nothing proves nothing.
    var known: Set<UInt64> = []
    /// Runtimes that did not answer, and why.
    var failures: [RuntimeKind: RuntimeError] = [:]
    /// Workloads whose cgroup could not be found, and why.
    var unplaced: [String: String] = [:]
    /// Annotations ignored, by pod.
    var problems: [String: [PodAnnotations.Problem]] = [:]
    /// Directories where more pods and containers appear: their parents.
    var parents: Set<FilePath> = []

    mutating func select(_ cgroup: Cgroup, _ entry: (spec: Int, policy: Policy), origin: Origin) {
        if let present = selected[cgroup.id], present.spec > entry.spec { return }
        selected[cgroup.id] = SelectedWorkload(cgroup: cgroup, spec: entry.spec, policy: entry.policy, origin: origin)
    }
}

/// The agent's view of pods and containers through the runtimes: a
/// long-lived CRI client, and what never changes cached (a sandbox's or a
/// container's cgroup). Read calls only.
final class Workloads: Sendable {
    let runtimes: Runtimes
    let cgroups: CgroupFS
    private let locator: WorkloadLocator
    private let state = Mutex(State())

    private struct State {
        var clients: [RuntimeEndpoint: CRIClient] = [:]
        /// sandbox id or container id -> its cgroup below the hierarchy's root.
        var placed: [String: FilePath] = [:]
    }

    init(runtimes: Runtimes, cgroups: CgroupFS) {
        self.runtimes = runtimes
        self.cgroups = cgroups
        locator = WorkloadLocator(runtimes: runtimes, cgroups: cgroups)
    }

    /// Directories where kubelet and the runtimes make pods' and containers'
    /// cgroups under either driver, watched from the start (those that exist).
    static let usualParents: [FilePath] = [
        "kubepods", "kubepods/besteffort", "kubepods/burstable",
        "kubepods.slice", "kubepods.slice/kubepods-besteffort.slice", "kubepods.slice/kubepods-burstable.slice",
        "libpod_parent", "machine.slice", "system.slice", "docker",
    ]

    /// Whether a directory that appeared is one where workloads appear, to be watched too.
    static func isParent(_ path: FilePath) -> Bool { usualParents.contains(path) }

    /// The usual parents that exist, and for those that do not (yet: kubelet
    /// or a runtime starts later) the nearest ancestor that does, to see them come.
    func usualParentsOrWhereTheyAppear() -> Set<FilePath> {
        Set(Self.usualParents.map { path in
            var nearest = path
            while !nearest.isEmpty && cgroups.cgroup(at: nearest) == nil { nearest.removeLastComponent() }
            return nearest
        })
    }

    /// The runtimes the file needs that are there to be asked: explicitly
    /// named, or found at a usual socket; CRI always when pods are selected
    /// (without it they cannot be found, which must show).
    func inUse(by config: AgentConfig) -> [RuntimeKind] {
        config.runtimesNeeded.filter { kind in
            runtimes[kind].chosen != nil || !runtimes[kind].candidates.isEmpty || (kind == .cri && config.selectsPods)
        }
    }

    // MARK: clients

    /// The CRI client of the first endpoint there is, made once per endpoint.
    private func criClient() throws(RuntimeError) -> CRIClient {
        guard let endpoint = runtimes.cri.candidates.first else {
            throw .noEndpoint(.cri, looked: runtimes.cri.description)
        }
        return try state.withLock { state throws(RuntimeError) -> CRIClient in
            if let client = state.clients[endpoint] { return client }
            let client: CRIClient
            do {
                client = try CRIClient(endpoint: endpoint)
            } catch {
                throw .unreachable(.cri, endpoint: endpoint.description, "\(error)")
            }
            state.clients[endpoint] = client
            // Its connections, until shutdown(); a failed run shows in every call.
            Task(executorPreference: EventLoopTaskExecutor.runtimes) { try? await client.run() }
            return client
        }
    }

    private func dockerClients() -> [DockerClient] {
        runtimes.docker.candidates.map(DockerClient.init)
    }

    func shutdown() {
        state.withLock { state in
            for client in state.clients.values { client.shutdown() }
            state.clients = [:]
        }
    }

    /// One cheap call: whether the runtime answers now.
    func probe(_ kind: RuntimeKind) async -> RuntimeError? {
        do {
            switch kind {
            case .cri: _ = try await criClient().version()
            case .docker:
                guard let client = dockerClients().first else {
                    throw RuntimeError.noEndpoint(.docker, looked: runtimes.docker.description)
                }
                try await client.ping()
            }
            return nil
        } catch let error as RuntimeError {
            return error
        } catch {
            return .unreachable(kind, endpoint: runtimes[kind].description, "\(error)")
        }
    }

    // MARK: full resolution

    /// Every workload the runtimes list, placed and matched against the file.
    func resolve(_ config: AgentConfig) async -> WorkloadResolution {
        await withTaskExecutorPreference(EventLoopTaskExecutor.runtimes) {
            var resolution = WorkloadResolution()
            let needed = inUse(by: config)
            if needed.contains(.cri) { await resolveCRI(config, into: &resolution) }
            if needed.contains(.docker) { await resolveDocker(config, into: &resolution) }
            return resolution
        }
    }

    private func resolveCRI(_ config: AgentConfig, into resolution: inout WorkloadResolution) async {
        do {
            let client = try criClient()
            if config.selectsPods {
                for pod in try await client.pods() {
                    guard let cgroup = await place(pod.sandboxID, pod.qualifiedName, into: &resolution, {
                        try await locator.podCgroup(pod, client: client)
                    }) else { continue }
                    guard let entry = config.entry(for: pod) else { continue }
                    if !entry.problems.isEmpty { resolution.problems[pod.qualifiedName] = entry.problems }
                    resolution.select(cgroup, (entry.spec, entry.policy), origin: pod.origin)
                }
            }
            if config.selectsContainers {
                for container in try await client.containers() {
                    guard let cgroup = await place(container.id, container.origin.display ?? container.id, into: &resolution, {
                        guard let path = try await client.containerCgroup(id: container.id).cgroup else {
                            throw RuntimeError.noCgroup("container \(container.name)", "its status names no cgroup")
                        }
                        return path
                    }) else { continue }
                    if let entry = config.entry(for: container) { resolution.select(cgroup, entry, origin: container.origin) }
                }
            }
        } catch {
            resolution.failures[.cri] = error
        }
    }

    private func resolveDocker(_ config: AgentConfig, into resolution: inout WorkloadResolution) async {
        let clients = dockerClients()
        guard !clients.isEmpty else {
            resolution.failures[.docker] = .noEndpoint(.docker, looked: runtimes.docker.description)
            return
        }
        for client in clients {
            do {
                for container in try await client.containers() {
                    guard let cgroup = await place(container.id, container.origin.display ?? container.id, into: &resolution, {
                        guard let inspected = try await client.container(container.id) else {
                            throw RuntimeError.noCgroup("container \(container.name)", "it is gone")
                        }
                        return try await client.cgroup(of: inspected)
                    }) else { continue }
                    if let entry = config.entry(for: container) { resolution.select(cgroup, entry, origin: container.origin) }
                }
            } catch {
                resolution.failures[.docker] = error
            }
        }
    }

    /// A workload's cgroup, from the cache or `find`; marks it known. nil if
    /// it cannot be placed now (said in `unplaced`) or its cgroup is gone.
    private func place(_ id: String, _ name: String, into resolution: inout WorkloadResolution,
                       _ find: () async throws -> FilePath) async -> Cgroup? {
        var path = state.withLock { $0.placed[id] }
        if path == nil {
            do {
                path = try await find()
            } catch {
                resolution.unplaced[name] = "\(error)"
                return nil
            }
            state.withLock { $0.placed[id] = path }
        }
        guard let path, let cgroup = cgroups.cgroup(at: path) else { return nil }
        resolution.known.insert(cgroup.id)
        resolution.parents.insert(path.removingLastComponent())
        return cgroup
    }

    /// Forgets what was cached for workloads whose cgroup is gone.
    func forget(below path: FilePath) {
        state.withLock { state in state.placed = state.placed.filter { !$0.value.starts(with: path) } }
    }

    // MARK: one new cgroup

    /// What one new directory is, asked of the runtime now: a pod by its uid
    /// (nil while the runtime does not know it yet: RunPodSandbox returns
    /// after the pod's cgroup is made), or a container by its id.
    func identifyPod(uid: String, at directory: Cgroup, _ config: AgentConfig, fullList: Bool) async throws -> Identified? {
        let client = try criClient()
        // kubelet labels every sandbox with its pod's uid: CRI filters on it.
        let pods = try await client.pods(labels: fullList ? [:] : ["io.kubernetes.pod.uid": uid])
        guard let pod = pods.first(where: { $0.uid == uid }) else { return nil }
        state.withLock { $0.placed[pod.sandboxID] = directory.path }
        return .pod(pod, directory, config.entry(for: pod))
    }

    /// A container whose cgroup just appeared, through the runtime its name points at.
    func identifyContainer(id: String, family: CgroupNaming.RuntimeFamily, at directory: Cgroup,
                           _ config: AgentConfig) async throws -> Identified? {
        if family != .cri {
            for client in dockerClients() {
                if let inspected = try await client.container(id) {
                    return .container(inspected.info(source: "\(client.endpoint)"), directory,
                                      config.entry(for: inspected.info(source: "")))
                }
            }
        }
        if family != .docker, !runtimes.cri.candidates.isEmpty {
            let client = try criClient()
            if let container = try await client.containers().first(where: { $0.id == id }) {
                return .container(container, directory, config.entry(for: container))
            }
        }
        return nil
    }

    enum Identified: Sendable {
        case pod(PodInfo, Cgroup, (spec: Int, policy: Policy, problems: [PodAnnotations.Problem])?)
        case container(ContainerInfo, Cgroup, (spec: Int, policy: Policy)?)
    }
}
