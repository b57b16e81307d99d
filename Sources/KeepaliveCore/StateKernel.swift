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
    /// What the kernel the programs run on gives: a policy that needs more is refused.
    var features: KernelFeatures { get }
    /// The policies, each with its rules.
    func readPolicies() throws -> [UInt64: PolicyRecord]
    /// The ids under which rules are kept (with or without their policy).
    func readRuleSetIDs() throws -> Set<UInt64>
    /// How many policies the map holds: the slots are 0..<capacity.
    var policyCapacity: Int { get }
    /// How many policies may have rules: the rule slots are 0..<capacity.
    var ruleSetCapacity: Int { get }
    /// Writes a policy and its rules (the rules first; the old rules of a
    /// policy that has none now are the caller's to remove). A new one (or one moved to another
    /// slot) gets its counters zeroed first, so that they count from its
    /// start; likewise its rules' counters.
    func writePolicy(_ record: PolicyRecord, for id: UInt64, freshCounters: Bool, freshRuleCounters: Bool) throws
    /// Removes a policy (its rules are the caller's to remove, first).
    func deletePolicy(_ id: UInt64) throws
    /// Removes rules kept under an id (none there: nothing to do), and the
    /// copy the programs read at their rule slot when `releasingSetAt` says
    /// so of that slot (no other policy's rules are there).
    func deleteRules(_ id: UInt64, releasingSetAt: (UInt32) -> Bool) throws
    /// Takes away the set the programs read at a rule slot (none there:
    /// nothing to do); they then read ka_rules under the policy's id.
    func releaseRuleSet(at slot: UInt32) throws
    /// Counters are kept in chunks of this many policy slots (and rule slots).
    var counterChunk: (slots: Int, ruleSlots: Int) { get }
    /// Frees the chunk of counters that holds a policy slot: no policy uses any slot in it.
    func releaseCounterChunk(slot: UInt32) throws
    /// Likewise for a rule slot's chunk of rule counters.
    func releaseCounterChunk(ruleSlot: UInt32) throws
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
