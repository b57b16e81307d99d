// SPDX-License-Identifier: MIT
import KeepaliveCore
import KeepaliveRuntime

import struct SystemPackage.FilePath

/// The Docker-compatible API (docker, podman): containers. Each call opens
/// its own HTTP connection: nothing to run between calls.
struct DockerRuntime: WorkloadRuntime {
    let kind = RuntimeKind.docker
    private let endpoints: EndpointChoice

    init(_ context: RuntimeContext) { endpoints = context.runtimes.docker }

    var hasEndpoint: Bool { !endpoints.candidates.isEmpty }

    private var clients: [DockerClient] { endpoints.candidates.map(DockerClient.init) }

    func probe() async throws(RuntimeError) {
        guard let client = clients.first else { throw .noEndpoint(.docker, looked: endpoints.description) }
        try await client.ping()
    }

    func workloads(_ config: AgentConfig) async throws(RuntimeError) -> [ListedWorkload] {
        guard config.selectsContainers else { return [] }
        guard !clients.isEmpty else { throw .noEndpoint(.docker, looked: endpoints.description) }
        var listed: [ListedWorkload] = []
        for client in clients {
            for container in try await client.containers() {
                listed.append(
                    ListedWorkload(container, config) {
                        () async throws -> FilePath in
                        guard let inspected = try await client.container(container.id) else {
                            throw RuntimeError.noCgroup("container \(container.name)", "it is gone")
                        }
                        return try await client.cgroup(of: inspected)
                    }
                )
            }
        }
        return listed
    }

    func identify(_ question: CgroupQuestion) async throws(RuntimeError) -> Identified? {
        let (name, directory, config) = (question.name, question.directory, question.config)
        guard case .container(let id, let family) = name, family != .cri, config.selectsContainers else { return nil }
        for client in clients {
            if let inspected = try await client.container(id) {
                let info = inspected.info(source: "\(client.endpoint)")
                return .container(info, directory, config.selecting(info))
            }
        }
        return nil
    }

    func shutdown() {}
}
