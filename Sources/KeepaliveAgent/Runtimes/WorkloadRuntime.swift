// SPDX-License-Identifier: MIT
import KeepaliveCore
import KeepaliveRuntime

import struct SystemPackage.FilePath

/// A container runtime the agent asks about pods and containers: CRI
/// (CRIRuntime) and the Docker-compatible API (DockerRuntime). Read calls
/// only. A third is one file conforming to this and one line in `registry`
/// (and its RuntimeKind: name, sockets, environment variables).
protocol WorkloadRuntime: Sendable {
    var kind: RuntimeKind { get }
    /// Whether there is an endpoint to ask (named, or found at a usual socket).
    var hasEndpoint: Bool { get }
    /// One cheap call: throws unless the runtime answers now.
    func probe() async throws(RuntimeError)
    /// Every pod and container it runs of the kinds `config` selects.
    func workloads(_ config: AgentConfig) async throws(RuntimeError) -> [ListedWorkload]
    /// What a new cgroup named like a workload's is, asked now: nil while the
    /// runtime does not know it, or when the name is not of its kind.
    func identify(_ question: CgroupQuestion) async throws(RuntimeError) -> Identified?
    /// Ends its connections (those `tasks` runs end).
    func shutdown()
}

/// What the agent asks a runtime about a new cgroup.
struct CgroupQuestion: Sendable {
    /// What its name says it is.
    let name: CgroupNaming.Kind
    let directory: Cgroup
    let config: AgentConfig
    /// List everything rather than filter (for runtimes driven by something
    /// that labels nothing).
    let fullList: Bool
}

/// What a runtime needs from the agent: where its endpoints are, a task
/// group for its connections, and whom to tell when they fail.
struct RuntimeContext: Sendable {
    let runtimes: Runtimes
    let cgroups: CgroupFS
    let tasks: ChildTasks<AgentTask>
    /// A runtime's connections ended with this error: it does not answer.
    let connectionsEnded: @Sendable (RuntimeKind, RuntimeError) -> Void
}

/// Every runtime the agent knows, in the order a new container's cgroup is
/// asked about (a docker or podman container's name says nothing of CRI's).
let registry: [@Sendable (RuntimeContext) -> any WorkloadRuntime] = [
    DockerRuntime.init,
    CRIRuntime.init,
]

/// A pod or container a runtime listed, and how to find its cgroup (asked
/// once: the agent caches it by `id`).
struct ListedWorkload: Sendable {
    /// Sandbox or container id.
    let id: String
    /// For messages.
    let name: String
    let origin: Origin
    /// The entry that selects it, its values, and its annotations that were ignored.
    let entry: SelectingEntry?
    let locate: @Sendable () async throws -> FilePath
}

extension ListedWorkload {
    init(_ pod: PodInfo, _ config: AgentConfig, locate: @escaping @Sendable () async throws -> FilePath) {
        self.init(
            id: pod.sandboxID,
            name: pod.qualifiedName,
            origin: pod.origin,
            entry: config.selecting(pod),
            locate: locate
        )
    }

    init(
        _ container: ContainerInfo,
        _ config: AgentConfig,
        locate: @escaping @Sendable () async throws -> FilePath
    ) {
        self.init(
            id: container.id,
            name: container.origin.display ?? container.id,
            origin: container.origin,
            entry: config.selecting(container),
            locate: locate
        )
    }
}

/// The entry of the file that selects a workload, and the values it gets there.
struct SelectingEntry: Sendable {
    let spec: Int
    let policy: Policy
    var problems: [PodAnnotations.Problem] = []
}

/// A new cgroup's pod or container, and the entry that selects it (if one does).
enum Identified: Sendable {
    case pod(PodInfo, Cgroup, SelectingEntry?)
    case container(ContainerInfo, Cgroup, SelectingEntry?)

    var cgroup: Cgroup {
        switch self {
        case .pod(_, let cgroup, _), .container(_, let cgroup, _): cgroup
        }
    }
}

extension AgentConfig {
    func selecting(_ pod: PodInfo) -> SelectingEntry? {
        entry(for: pod).map { SelectingEntry(spec: $0.spec, policy: $0.policy, problems: $0.problems) }
    }

    func selecting(_ container: ContainerInfo) -> SelectingEntry? {
        entry(for: container).map { SelectingEntry(spec: $0.spec, policy: $0.policy) }
    }
}
