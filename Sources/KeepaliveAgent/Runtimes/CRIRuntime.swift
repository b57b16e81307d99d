// SPDX-License-Identifier: MIT
import KeepaliveCore
import KeepaliveRuntime
import Synchronization

import struct SystemPackage.FilePath

/// Kubernetes' CRI (containerd, CRI-O): pods and their containers, through
/// one long-lived gRPC client per endpoint whose connections run in the
/// agent's task group until shutdown() or until they fail (said, then made
/// anew at the next call).
final class CRIRuntime: WorkloadRuntime {
    let kind = RuntimeKind.cri
    private let context: RuntimeContext
    private let clients = Mutex<[RuntimeEndpoint: CRIClient]>([:])

    init(_ context: RuntimeContext) { self.context = context }

    private var endpoints: EndpointChoice { context.runtimes.cri }
    var hasEndpoint: Bool { !endpoints.candidates.isEmpty }

    /// The client of the first endpoint there is, made once per endpoint.
    private func client() throws(RuntimeError) -> CRIClient {
        guard let endpoint = endpoints.candidates.first else {
            throw .noEndpoint(.cri, looked: endpoints.description)
        }
        return try clients.withLock { clients throws(RuntimeError) -> CRIClient in
            if let client = clients[endpoint] { return client }
            let client: CRIClient
            do {
                client = try CRIClient(endpoint: endpoint)
            } catch {
                throw .unreachable(.cri, endpoint: endpoint.description, "\(error)")
            }
            clients[endpoint] = client
            context.tasks.restart(.runtimeConnections(endpoint.description)) { [context] in
                do {
                    try await client.run()
                } catch {
                    context.connectionsEnded(.cri, .unreachable(.cri, endpoint: endpoint.description, "\(error)"))
                }
                self.forget(client, at: endpoint)
            }
            return client
        }
    }

    /// A client whose connections ended is not asked again: the next call makes another.
    private func forget(_ client: CRIClient, at endpoint: RuntimeEndpoint) {
        clients.withLock { clients in
            if clients[endpoint] === client { clients[endpoint] = nil }
        }
    }

    func shutdown() {
        for client in clients.withLock({ clients in
            defer { clients = [:] }
            return Array(clients.values)
        }) {
            client.shutdown()
        }
    }

    func probe() async throws(RuntimeError) {
        _ = try await client().version()
    }

    func workloads(_ config: AgentConfig) async throws(RuntimeError) -> [ListedWorkload] {
        let client = try client()
        let locator = WorkloadLocator(runtimes: context.runtimes, cgroups: context.cgroups)
        var listed: [ListedWorkload] = []
        if config.selectsPods {
            for pod in try await client.pods() {
                listed.append(
                    ListedWorkload(pod, config) { () async throws -> FilePath in
                        try await locator.podCgroup(pod, client: client)
                    }
                )
            }
        }
        if config.selectsContainers {
            for container in try await client.containers() {
                listed.append(
                    ListedWorkload(container, config) {
                        () async throws -> FilePath in
                        guard let path = try await client.containerCgroup(id: container.id).cgroup else {
                            throw RuntimeError.noCgroup("container \(container.name)", "its status names no cgroup")
                        }
                        return path
                    }
                )
            }
        }
        return listed
    }

    func identify(_ question: CgroupQuestion) async throws(RuntimeError) -> Identified? {
        let (name, directory, config) = (question.name, question.directory, question.config)
        switch name {
        case .pod(let uid) where config.selectsPods:
            // kubelet labels every sandbox with its pod's uid: CRI filters on it.
            let pods = try await client().pods(labels: question.fullList ? [:] : ["io.kubernetes.pod.uid": uid])
            return pods.first { $0.uid == uid }.map { .pod($0, directory, config.selecting($0)) }
        case .container(let id, let family) where family != .docker && config.selectsContainers && hasEndpoint:
            let container = try await client().containers().first { $0.id == id }
            return container.map { .container($0, directory, config.selecting($0)) }
        default:
            return nil
        }
    }
}
