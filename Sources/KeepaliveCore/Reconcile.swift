/// One change the agent made, for its log.
public struct AppliedChange: Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable { case attached, updated, detached }
    public let kind: Kind
    public let cgroup: String
    public let policy: Policy?
    public let source: String?

    public var description: String {
        var line = "\(kind.rawValue) policy \(kind == .detached ? "from" : "on") \(cgroup)"
        if let policy { line += ": \(policy.summary)" }
        if let source { line += " (\(source))" }
        return line
    }
}

extension Transaction {
    /// Makes the agent's policies in force exactly `desired`: new ones attached,
    /// changed ones updated in place, unchanged ones untouched (no window), and
    /// the agent's policies no longer desired removed. Policies set with the CLI
    /// are left alone unless `desired` names their cgroup.
    public func reconcile(_ desired: [DesiredPolicy]) throws -> [AppliedChange] {
        try prune()
        var changes: [AppliedChange] = []
        // Parents first, so a subtree gets one link at its top without churn below.
        for want in desired.sorted(by: { $0.cgroup.depth < $1.cgroup.depth }) {
            let change = try apply(want.policy, to: want.cgroup, owner: .agent)
            guard change != .unchanged else { continue }
            changes.append(AppliedChange(kind: change == .created ? .attached : .updated,
                                         cgroup: want.cgroup.relativePath, policy: want.policy, source: want.source))
        }
        let stale = cgroupIDs(ownedBy: .agent).subtracting(desired.map(\.cgroup.id))
        if !stale.isEmpty {
            let byID = try cgroupsByID()
            // Children first, so removing a parent hands coverage to nobody it need not.
            for cgroup in stale.compactMap({ byID[$0] }).sorted(by: { $0.depth > $1.depth }) {
                try remove(cgroup)
                changes.append(AppliedChange(kind: .detached, cgroup: cgroup.relativePath, policy: nil, source: nil))
            }
        }
        return changes
    }
}

extension Cgroup {
    var depth: Int { relativePath == "/" ? 0 : relativePath.split(separator: "/").count }
}
