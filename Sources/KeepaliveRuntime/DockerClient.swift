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

    static let apiVersion = "v1.41"          // docker 20.10 and podman 4 both speak it
    static let libpodVersion = "v4.0.0"      // podman's own API, for its cgroup path
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
        let listed: [Listed] = try await decode(try await get("/\(Self.apiVersion)/containers/json", timeout: Self.timeout))
        return listed.map { item in
            ContainerInfo(id: item.id, name: Self.name(item.names?.first ?? item.id), labels: item.labels ?? [:],
                          podNamespace: nil, podName: nil, source: "Docker-compatible API at \(endpoint)")
        }
    }

    /// A container by id, name or unique id prefix, as docker resolves them; nil if none.
    public func container(_ reference: String) async throws(RuntimeError) -> Inspected? {
        guard let escaped = reference.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(.init(charactersIn: "-_."))) else {
            return nil
        }
        let reply = try await get("/\(Self.apiVersion)/containers/\(escaped)/json", timeout: Self.timeout)
        if reply.status == .notFound { return nil }
        let inspected: Inspected = try await decode(reply)
        return inspected
    }

    /// The cgroup of a running container, below the hierarchy's root: podman's
    /// own account (libpod State.CgroupPath), else the process's cgroup
    /// checked against the runtime's naming (docker-<id>.scope, /docker/<id>).
    public func cgroup(of container: Inspected) async throws(RuntimeError) -> FilePath {
        let reply = try await get("/\(Self.libpodVersion)/libpod/containers/\(container.id)/json", timeout: Self.timeout)
        if reply.status == .ok {
            let libpod: LibpodInspected = try await decode(reply)
            if let path = libpod.cgroupPath, !path.isEmpty {
                do {
                    return try CgroupNaming.path(ofCgroupsPath: path)
                } catch {
                    throw unexpected("libpod State.CgroupPath: \(error)")
                }
            }
        }
        guard let pid = container.pid, pid > 0 else {
            throw .noCgroup("container \(Self.name(container.name))", "it has no running process")
        }
        return try ProcessCgroup.containerCgroup(pid: pid, id: container.id)
    }

    // MARK: the API's shapes (only what keepalive reads)

    struct Listed: Decodable {
        let id: String
        let names: [String]?
        let labels: [String: String]?

        enum CodingKeys: String, CodingKey { case id = "Id", names = "Names", labels = "Labels" }
    }

    public struct Inspected: Decodable, Sendable {
        public let id: String
        public let name: String
        public let pid: Int32?
        public let labels: [String: String]

        private enum CodingKeys: String, CodingKey { case id = "Id", name = "Name", state = "State", config = "Config" }
        private enum StateKeys: String, CodingKey { case pid = "Pid" }
        private enum ConfigKeys: String, CodingKey { case labels = "Labels" }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            id = try container.decode(String.self, forKey: .id)
            name = try container.decode(String.self, forKey: .name)
            pid = try container.nestedContainer(keyedBy: StateKeys.self, forKey: .state).decodeIfPresent(Int32.self, forKey: .pid)
            if container.contains(.config), try !container.decodeNil(forKey: .config) {
                let config = try container.nestedContainer(keyedBy: ConfigKeys.self, forKey: .config)
                labels = try config.decodeIfPresent([String: String].self, forKey: .labels) ?? [:]
            } else {
                labels = [:]
            }
        }

        public func info(source: String) -> ContainerInfo {
            ContainerInfo(id: id, name: DockerClient.name(name), labels: labels, podNamespace: nil, podName: nil,
                          source: source)
        }
    }

    /// podman's own inspect: its State has the cgroup path.
    struct LibpodInspected: Decodable {
        let cgroupPath: String?

        private enum CodingKeys: String, CodingKey { case state = "State" }
        private enum StateKeys: String, CodingKey { case cgroupPath = "CgroupPath" }

        init(from decoder: any Decoder) throws {
            let state = try decoder.container(keyedBy: CodingKeys.self).nestedContainer(keyedBy: StateKeys.self, forKey: .state)
            cgroupPath = try state.decodeIfPresent(String.self, forKey: .cgroupPath)
        }
    }

    /// Docker's names carry a leading slash ("/redis-1").
    static func name(_ raw: String) -> String {
        raw.hasPrefix("/") ? String(raw.dropFirst()) : raw
    }

    // MARK: calls

    private func get(_ target: String, timeout: Duration) async throws(RuntimeError) -> UnixHTTPClient.Reply {
        do {
            return try await http.get(target, timeout: timeout)
        } catch {
            throw .unreachable(.docker, endpoint: endpoint.description, "GET \(target): \(error)")
        }
    }

    private func decode<T: Decodable>(_ reply: UnixHTTPClient.Reply) async throws(RuntimeError) -> T {
        guard reply.status == .ok else {
            throw unexpected("status \(reply.status.code): \(String(buffer: reply.body).prefix(200))")
        }
        do {
            return try JSONDecoder().decode(T.self, from: Data(buffer: reply.body))
        } catch {
            throw unexpected("\(error)")
        }
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
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8) else {
            throw .noCgroup(what, "cannot read /proc/\(pid)/cgroup (the process exited?)")
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
