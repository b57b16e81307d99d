// SPDX-License-Identifier: MIT
import struct SystemPackage.FilePath

/// What the kernel says about one pin in a links directory.
public enum LinkState: Equatable, Sendable {
    /// Runs this kind's current program at the cgroup its pin names.
    case current
    /// Ours, at the right cgroup, but an older program: an interrupted upgrade.
    case staleProgram
    /// Its cgroup is gone: the kernel detached it.
    case defunct
    /// Ours, but at another cgroup than its pin names.
    case misplaced
    /// Not a keepalive link, or unreadable: never touched.
    case foreign(String)
}

/// The kernel operations a Transaction needs: the policy map, the links and
/// the cgroups. PinnedState is the real one; `swift test` uses an in-memory one.
public protocol StateKernel: AnyObject {
    func readPolicies() throws -> [UInt64: PolicyRecord]
    /// How many policies the map holds: the slots are 0..<capacity.
    var policyCapacity: Int { get }
    /// Writes a policy. A new one (or one moved to another slot) gets its
    /// counters zeroed first, so that they count from its start.
    func writePolicy(_ record: PolicyRecord, for id: UInt64, freshCounters: Bool) throws
    func deletePolicy(_ id: UInt64) throws
    /// Every pin in a kind's links directory, by name (a cgroup id for ours).
    func readLinks(_ kind: Attachment) throws -> [String: LinkState]
    /// Attaches the kind's program to the cgroup and pins the link under its id.
    func createLink(_ kind: Attachment, at cgroup: Cgroup) throws
    func removeLink(_ kind: Attachment, pin: String) throws
    /// Makes a pinned link run the kind's current program (bpf_link_update).
    func updateLink(_ kind: Attachment, pin: String) throws
    func presence(of path: FilePath, id: UInt64) -> CgroupPresence
    /// Tells cached readers (the agent) that the state is about to change.
    func bumpChangeSequence() throws
}
