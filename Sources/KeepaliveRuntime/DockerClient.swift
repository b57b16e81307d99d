// SPDX-License-Identifier: MIT
import Foundation
import Glibc
import KeepaliveCore
import NIOCore

import struct SystemPackage.FilePath

/// A read-only client of the Docker-compatible API (docker, and podman's
/// `podman system service`) over its unix socket: ping, list, inspect. The
/// socket is root-equivalent: nothing here creates, stops or changes anything.
public struct DockerClient: Sendable {
    public let endpoint: RuntimeEndpoint
    private let http: UnixHTTPClient

    static let apiVersion = "v1.41"  // docker 20.10 and podman 4 both speak it
    static let libpodVersion = "v4.0.0"  // podman's own API, for its cgroup path
    static let timeout = Duration.seconds(5)
    static let probeTimeout = Duration.seconds(2)

    public init(endpoint: RuntimeEndpoint) {
        self.endpoint = endpoint
        http = UnixHTTPClient(socketPath: endpoint.path)
    }

    /// A cheap call that proves the API answers.
    public func ping() async throws(RuntimeError) {
        let reply = try await get("/_ping", timeout: Self.probeTimeout)
        guard reply.status == .ok else { throw unexpected("/_ping answered \(reply.status.code)") }
    }

    /// The running containers.
    public func containers() async throws(RuntimeError) -> [ContainerInfo] {
        let reply = try await get("/\(Self.apiVersion)/containers/json", timeout: Self.timeout)
        return try read(reply) { json throws(ReplyError) in try RuntimeReplies.containers(listed: json) }.map { item in
            ContainerInfo(
                id: item.id,
                name: RuntimeReplies.containerName(item.names?.first ?? item.id),
                labels: item.labels ?? [:],
                podNamespace: nil,
                podName: nil,
                source: "Docker-compatible API at \(endpoint)"
            )
        }
    }

    /// A container by id, name or unique id prefix, as docker resolves them; nil if none.
    public func container(_ reference: String) async throws(RuntimeError) -> RuntimeReplies.Inspected? {
        guard
            let escaped = reference.addingPercentEncoding(
                withAllowedCharacters: .alphanumerics.union(.init(charactersIn: "-_."))
            )
        else {
            return nil
        }
        let reply = try await get("/\(Self.apiVersion)/containers/\(escaped)/json", timeout: Self.timeout)
        if reply.status == .notFound { return nil }
        return try read(reply) { json throws(ReplyError) in try RuntimeReplies.container(inspected: json) }
    }

    /// The cgroup of a running container, below the hierarchy's root: podman's
    /// own account (libpod State.CgroupPath), else the process's cgroup
    /// checked against the runtime's naming (docker-<id>.scope, /docker/<id>).
    public func cgroup(of container: RuntimeReplies.Inspected) async throws(RuntimeError) -> FilePath {
        let reply = try await get(
            "/\(Self.libpodVersion)/libpod/containers/\(container.id)/json",
            timeout: Self.timeout
        )
        if reply.status == .ok,
            let path = try read(reply, { json throws(ReplyError) in try RuntimeReplies.libpodCgroup(inspected: json) })
        {
            return path
        }
        guard let pid = container.pid, pid > 0 else {
            throw .noCgroup("container \(RuntimeReplies.containerName(container.name))", "it has no running process")
        }
        return try ProcessCgroup.containerCgroup(pid: pid, id: container.id)
    }

    // MARK: calls

    private func get(_ target: String, timeout: Duration) async throws(RuntimeError) -> UnixHTTPClient.Reply {
        do {
            return try await http.get(target, timeout: timeout)
        } catch {
            throw .unreachable(.docker, endpoint: endpoint.description, "GET \(target): \(error)")
        }
    }

    /// A reply's body read by `body`; another status than 200, or a shape it
    /// does not know, is an unexpected reply.
    private func read<T>(
        _ reply: UnixHTTPClient.Reply,
        _ body: (Data) throws(ReplyError) -> T
    ) throws(RuntimeError) -> T {
        guard reply.status == .ok else {
            throw unexpected("status \(reply.status.code): \(String(buffer: reply.body).prefix(200))")
        }
        do { return try body(Data(buffer: reply.body)) } catch { throw unexpected(error.description) }
    }

    private func unexpected(_ why: String) -> RuntimeError {
        .unexpectedReply(.docker, endpoint: endpoint.description, why)
    }
}

/// A container's cgroup from its process's own: the cgroup v2 line of
/// /proc/PID/cgroup, cut at the directory the runtime named after the
/// container (the process may sit in a child of it).
enum ProcessCgroup {
    static func containerCgroup(pid: Int32, id: String) throws(RuntimeError) -> FilePath {
        let what = "container \(id.prefix(12))"
        let text: String
        do {
            text = try String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8)
        } catch {
            throw .noCgroup(
                what,
                "cannot read /proc/\(pid)/cgroup (the process exited?): \(error.localizedDescription)"
            )
        }
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("0::") }) else {
            throw .noCgroup(what, "/proc/\(pid)/cgroup has no cgroup v2 line")
        }
        var path = FilePath()
        for component in FilePath(String(line.dropFirst(3))).components {
            path.append(component)
            if case .container(let named, _) = CgroupNaming.kind(of: component.string), named == id { return path }
        }
        throw .noCgroup(what, "its process is in \(line.dropFirst(3)), which no runtime named after it")
    }
}

extension Data {
    init(buffer: ByteBuffer) {
        self = buffer.withUnsafeReadableBytes { Data($0) }
    }
}
