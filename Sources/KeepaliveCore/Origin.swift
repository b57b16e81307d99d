// SPDX-License-Identifier: MIT
import CLibBPF

/// Who a policy was set for when it was set for a workload rather than a
/// cgroup path: a Kubernetes pod, or a container (with its pod, when it has
/// one), as the container runtime names them. Recorded with the policy
/// (struct ka_origin), so that every command and the agent's metrics show it.
public struct Origin: Equatable, Hashable, Sendable {
    public var namespace: String?
    public var pod: String?
    public var container: String?
    public var containerID: String?

    public init(namespace: String? = nil, pod: String? = nil, container: String? = nil, containerID: String? = nil) {
        self.namespace = namespace
        self.pod = pod
        self.container = container
        self.containerID = containerID
    }

    /// A policy set for a cgroup path (or a unit, or a process's cgroup).
    public static let none = Origin()

    public static func pod(namespace: String, name: String) -> Origin {
        Origin(namespace: namespace, pod: name)
    }

    public var isEmpty: Bool { self == .none }

    /// "pod shop/db-0", "container redis-1", "container shop/db-0/app"; nil for none.
    public var display: String? {
        let podName = pod.map { name in namespace.map { "\($0)/\(name)" } ?? name }
        if let container { return "container " + (podName.map { "\($0)/" } ?? "") + container }
        if let id = containerID { return "container " + String(id.prefix(12)) }
        return podName.map { "pod \($0)" }
    }

    init(_ record: ka_origin) {
        self.init(
            namespace: cString(record.namespace_name),
            pod: cString(record.pod_name),
            container: cString(record.container_name),
            containerID: cString(record.container_id)
        )
    }

    /// The record's form: each string cut (at a character) to what its field holds.
    var encoded: ka_origin {
        var record = ka_origin()
        store(namespace, in: &record.namespace_name)
        store(pod, in: &record.pod_name)
        store(container, in: &record.container_name)
        store(containerID, in: &record.container_id)
        return record
    }
}

/// A NUL-terminated C char array's text; nil when empty.
private func cString<T>(_ field: T) -> String? {
    withUnsafeBytes(of: field) { raw in
        let bytes = raw.prefix { $0 != 0 }
        return bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self)
    }
}

/// Writes `text` into a C char array, NUL-terminated, cut at a character
/// boundary if it is longer than the array holds.
private func store<T>(_ text: String?, in field: inout T) {
    guard let text else { return }
    withUnsafeMutableBytes(of: &field) { raw in
        var length = 0
        for character in text {
            let bytes = character.utf8.count
            guard length + bytes < raw.count else { break }
            length += bytes
        }
        for (index, byte) in text.utf8.prefix(length).enumerated() { raw[index] = byte }
        raw[length] = 0
    }
}
