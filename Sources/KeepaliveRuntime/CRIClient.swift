// SPDX-License-Identifier: MIT
import CRI
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import KeepaliveCore

import struct SystemPackage.FilePath

/// A pod as CRI lists it (ListPodSandbox, PodSandboxStatus): kubelet puts the
/// pod's labels and annotations on its sandbox.
public struct PodInfo: Sendable, Equatable {
    public let sandboxID: String
    public let uid: String
    public let namespace: String
    public let name: String
    public let labels: [String: String]
    public let annotations: [String: String]

    /// "shop/db-0"
    public var qualifiedName: String { "\(namespace)/\(name)" }
    public var origin: Origin { .pod(namespace: namespace, name: name) }
}

/// A container as a runtime lists it: its name and labels, and its pod's
/// name when it has one (CRI).
public struct ContainerInfo: Sendable, Equatable {
    public let id: String
    public let name: String
    public let labels: [String: String]
    public let podNamespace: String?
    public let podName: String?
    /// Where it came from, for messages ("CRI at unix:///...").
    public let source: String

    public var origin: Origin {
        Origin(namespace: podNamespace, pod: podName, container: name, containerID: id)
    }
}

/// A read-only CRI client (gRPC over the runtime's unix socket): lists and
/// status calls only. The socket is root-equivalent: nothing here creates,
/// stops or changes anything.
public final class CRIClient: Sendable {
    public let endpoint: RuntimeEndpoint
    private let grpc: GRPCClient<HTTP2ClientTransport.Posix>
    private let runtime: Runtime_V1_RuntimeService.Client<HTTP2ClientTransport.Posix>

    /// How long one call may take; a runtime that takes longer is unreachable for now.
    static let listTimeout = Duration.seconds(5)
    static let probeTimeout = Duration.seconds(2)

    public init(endpoint: RuntimeEndpoint) throws {
        self.endpoint = endpoint
        var config = HTTP2ClientTransport.Posix.Config.defaults
        // A runtime restarting comes back in seconds: try again soon, not after minutes.
        config.backoff = .init(initial: .milliseconds(100), max: .seconds(2), multiplier: 1.6, jitter: 0.2)
        let transport = try HTTP2ClientTransport.Posix(
            target: .unixDomainSocket(path: endpoint.path),
            transportSecurity: .plaintext,
            config: config,
            eventLoopGroup: EventLoopTaskExecutor.runtimes.loop
        )
        grpc = GRPCClient(transport: transport)
        runtime = Runtime_V1_RuntimeService.Client(wrapping: grpc)
    }

    /// Runs the client's connections until `shutdown()`: in a task of its own.
    public func run() async throws { try await grpc.runConnections() }
    public func shutdown() { grpc.beginGracefulShutdown() }

    /// Runs `body` with a client of `endpoint`, then shuts it down.
    public static func with<T: Sendable>(
        _ endpoint: RuntimeEndpoint,
        _ body: @Sendable (CRIClient) async throws -> T
    ) async throws -> T {
        let client = try CRIClient(endpoint: endpoint)
        return try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask {
                try await client.run()
                return nil
            }
            defer { client.shutdown() }
            let result = try await body(client)
            client.shutdown()
            return result
        }
    }

    private func options(_ timeout: Duration) -> CallOptions {
        var options = CallOptions.defaults
        options.timeout = timeout
        return options
    }

    /// Runs one call; a failure is an unreachable runtime, for this call.
    private func call<T>(_ what: String, _ body: () async throws -> T) async throws(RuntimeError) -> T {
        do {
            return try await body()
        } catch let error as RPCError {
            throw .unreachable(.cri, endpoint: endpoint.description, "\(what): \(error.described)")
        } catch {
            throw .unreachable(.cri, endpoint: endpoint.description, "\(what): \(error)")
        }
    }

    /// A reply's reading, its failure an unexpected reply of this runtime's.
    private func read<T>(_ body: () throws(ReplyError) -> T) throws(RuntimeError) -> T {
        do { return try body() } catch {
            throw .unexpectedReply(.cri, endpoint: endpoint.description, error.description)
        }
    }

    /// The runtime's name and version: a cheap call that proves it answers.
    public func version() async throws(RuntimeError) -> String {
        let reply = try await call("Version") {
            try await runtime.version(.with { $0.version = "v1" }, options: options(Self.probeTimeout))
        }
        return "\(reply.runtimeName) \(reply.runtimeVersion)"
    }

    /// The ready pods, or those whose labels match `labels` (CRI's own filter).
    public func pods(labels: [String: String] = [:]) async throws(RuntimeError) -> [PodInfo] {
        let reply = try await call("ListPodSandbox") {
            try await runtime.listPodSandbox(
                .with {
                    $0.filter.state.state = .sandboxReady
                    $0.filter.labelSelector = labels
                },
                options: options(Self.listTimeout)
            )
        }
        return reply.items.map { item in
            PodInfo(
                sandboxID: item.id,
                uid: item.metadata.uid,
                namespace: item.metadata.namespace,
                name: item.metadata.name,
                labels: item.labels,
                annotations: item.annotations
            )
        }
    }

    /// One pod by sandbox id, and its cgroup as the runtime reports it; nil
    /// if the runtime does not know it (yet: RunPodSandbox in progress).
    public func pod(sandboxID: String) async throws(RuntimeError) -> (pod: PodInfo, cgroup: FilePath?)? {
        let reply: Runtime_V1_PodSandboxStatusResponse
        do {
            reply = try await runtime.podSandboxStatus(
                .with {
                    $0.podSandboxID = sandboxID
                    $0.verbose = true
                },
                options: options(Self.listTimeout)
            )
        } catch let error as RPCError where error.code == .notFound {
            return nil
        } catch let error as RPCError {
            throw .unreachable(.cri, endpoint: endpoint.description, "PodSandboxStatus: \(error.described)")
        } catch {
            throw .unreachable(.cri, endpoint: endpoint.description, "PodSandboxStatus: \(error)")
        }
        let status = reply.status
        let pod = PodInfo(
            sandboxID: status.id,
            uid: status.metadata.uid,
            namespace: status.metadata.namespace,
            name: status.metadata.name,
            labels: status.labels,
            annotations: status.annotations
        )
        guard let json = reply.info["info"] else { return (pod, nil) }
        return (pod, try read { () throws(ReplyError) in try RuntimeReplies.podCgroup(verboseInfo: json) })
    }

    /// The running containers, with their pods' names (from their sandboxes).
    public func containers(inPod sandboxID: String? = nil) async throws(RuntimeError) -> [ContainerInfo] {
        let reply = try await call("ListContainers") {
            try await runtime.listContainers(
                .with {
                    $0.filter.state.state = .containerRunning
                    if let sandboxID { $0.filter.podSandboxID = sandboxID }
                },
                options: options(Self.listTimeout)
            )
        }
        guard !reply.containers.isEmpty else { return [] }
        let sandboxes = try await call("ListPodSandbox") {
            try await runtime.listPodSandbox(.with { _ in }, options: options(Self.listTimeout))
        }
        let pods = Dictionary(sandboxes.items.map { ($0.id, $0.metadata) }, uniquingKeysWith: { first, _ in first })
        return reply.containers.map { item in
            let pod = pods[item.podSandboxID]
            return ContainerInfo(
                id: item.id,
                name: item.metadata.name,
                labels: item.labels,
                podNamespace: pod?.namespace,
                podName: pod?.name,
                source: "CRI at \(endpoint)"
            )
        }
    }

    /// A container's cgroup (below the hierarchy's root) and pid, from its verbose status.
    public func containerCgroup(id: String) async throws(RuntimeError) -> (cgroup: FilePath?, pid: Int32?) {
        let reply = try await call("ContainerStatus") {
            try await runtime.containerStatus(
                .with {
                    $0.containerID = id
                    $0.verbose = true
                },
                options: options(Self.listTimeout)
            )
        }
        guard let json = reply.info["info"] else { return (nil, nil) }
        return try read { () throws(ReplyError) in try RuntimeReplies.container(verboseInfo: json) }
    }
}

extension RPCError {
    /// Its code and message, and what the transport threw, where it says.
    var described: String {
        "\(code): \(message)" + (cause.map { " (\($0))" } ?? "")
    }
}
