// SPDX-License-Identifier: MIT
import KeepaliveCore

/// Which entry of a policy file a pod or a container falls under, and with
/// which values: the last entry that selects it wins, as for cgroups.
extension AgentConfig {
    /// The entry that selects this pod, with the values its annotations
    /// choose where the entry allows them; nil if none selects it (or the pod
    /// opted out). `problems` are annotations that were ignored.
    public func entry(for pod: PodInfo) -> (spec: Int, policy: Policy, problems: [PodAnnotations.Problem])? {
        for (index, spec) in policies.enumerated().reversed() {
            guard case .pods(let selector) = spec.target,
                selector.matches(namespace: pod.namespace, name: pod.name, labels: pod.labels)
            else { continue }
            guard spec.annotations == .allow else { return (index, spec.policy, []) }
            let chosen = PodAnnotations.apply(pod.annotations, to: spec.policy)
            guard let policy = chosen.policy else { return nil }  // keepalive.dev/enabled: "false"
            return (index, policy, chosen.problems)
        }
        return nil
    }

    /// The entry that selects this container; nil if none does.
    public func entry(for container: ContainerInfo) -> (spec: Int, policy: Policy)? {
        for (index, spec) in policies.enumerated().reversed() {
            guard case .containers(let selector) = spec.target,
                selector.matches(name: container.name, labels: container.labels)
            else { continue }
            return (index, spec.policy)
        }
        return nil
    }

    /// Whether some entry selects pods; containers.
    public var selectsPods: Bool { policies.contains { if case .pods = $0.target { true } else { false } } }
    public var selectsContainers: Bool { policies.contains { if case .containers = $0.target { true } else { false } } }

    /// The runtimes the file's entries are resolved through: CRI for pods
    /// and its containers, the Docker-compatible API for containers.
    public var runtimesNeeded: [RuntimeKind] {
        RuntimeKind.allCases.filter { $0 == .cri ? selectsPods || selectsContainers : selectsContainers }
    }
}
