import BPF
import CLibBPF
import Glibc

/// A consistent view of the pinned state, valid while its lock is held.
///
/// Invariant kept by every change, for each Attachment kind: its program is
/// linked exactly at the topmost cgroups whose policy wants it, so it runs
/// once per socket, and finds the nearest policy by walking up the cgroups.
public final class Transaction {
    let state: PinnedState
    private var records: [UInt64: ka_policy]
    private var linked: [Attachment: Set<UInt64>] = [:]
    private var usedSlots: Set<UInt32>
    private var slotCursor: UInt32 = 0

    init(state: PinnedState) throws {
        self.state = state
        var records: [UInt64: ka_policy] = [:]
        for (id, record) in try state.policies.entries() { records[id] = record }
        self.records = records
        usedSlots = Set(records.values.map(\.slot))
        for kind in Attachment.allCases { linked[kind] = state.pinnedLinkIDs(kind) }
    }

    public enum Change: String, Sendable {
        case created, updated, unchanged
    }

    /// Ids of the cgroups whose policy `owner` set.
    public func cgroupIDs(ownedBy owner: PolicyOwner) -> Set<UInt64> {
        Set(records.filter { PolicyOwner(record: $0.value) == owner }.keys)
    }

    /// Every existing cgroup by id, the root included.
    public func cgroupsByID() throws -> [UInt64: Cgroup] {
        let root = try state.cgroups.root
        var all = [root.id: root]
        state.cgroups.walk(below: root) { all[$0.id] = $0; return true }
        return all
    }

    /// Sets a cgroup's policy: a new one is attached, an existing one updated in place.
    @discardableResult
    public func apply(_ policy: Policy, to cgroup: Cgroup, owner: PolicyOwner = .cli) throws -> Change {
        let previous = records[cgroup.id]
        if let previous, Policy(record: previous) == policy, PolicyOwner(record: previous) == owner,
           Attachment.allCases.allSatisfy({ !$0.wants(previous) || isCovered(cgroup, $0) }) { return .unchanged }
        let slot = try previous?.slot ?? allocateSlot()
        if previous == nil { try state.sockets.update(slot, 0) }  // a reused slot starts from zero
        let record = policy.record(slot: slot, owner: owner)
        try state.policies.update(cgroup.id, record)
        records[cgroup.id] = record
        usedSlots.insert(slot)
        do {
            for kind in Attachment.allCases {
                if kind.wants(record) {
                    try cover(cgroup, kind)
                } else if linked[kind, default: []].contains(cgroup.id) {
                    try uncover(cgroup, kind)  // e.g. precedence back to application
                }
            }
        } catch {
            try restore(cgroup.id, previous)
            throw error
        }
        return previous == nil ? .created : .updated
    }

    /// Removes a cgroup's policy; its sockets fall back to the nearest ancestor's.
    /// Returns false if it had none.
    @discardableResult
    public func remove(_ cgroup: Cgroup) throws -> Bool {
        guard records[cgroup.id] != nil else { return false }
        for kind in Attachment.allCases where linked[kind, default: []].contains(cgroup.id) {
            try uncover(cgroup, kind)
        }
        try restore(cgroup.id, nil)
        return true
    }

    /// Removes every policy, link and pin: enforcement ends everywhere.
    public func removeAll() throws {
        try state.unpinAll()
        records = [:]
        linked = [:]
        usedSlots = []
    }

    /// Drops policies and links of cgroups that no longer exist (ids are never reused).
    /// Returns the ids dropped.
    @discardableResult
    public func prune() throws -> [UInt64] {
        let live = liveIDs()
        let allLinked = linked.values.reduce(Set<UInt64>()) { $0.union($1) }
        let gone = Set(records.keys).union(allLinked).subtracting(live)
        for id in gone {
            for kind in Attachment.allCases where linked[kind, default: []].contains(id) { try unlink(id, kind) }
            if records[id] != nil { try restore(id, nil) }
        }
        return gone.sorted()
    }

    // MARK: status

    public struct Entry: Sendable {
        /// Relative to the cgroup2 mount; nil if the cgroup was removed.
        public let path: String?
        public let cgroupID: UInt64
        public let policy: Policy
        public let owner: PolicyOwner
        public let effectiveUserTimeout: Int32
        public let socketsConfigured: UInt64
        /// Whether the program is linked at this cgroup (the top of a covered subtree).
        public let attached: Bool
    }

    public func entries() throws -> [Entry] {
        let cgroups = try cgroupsByID()
        return try records.map { id, record in
            Entry(path: cgroups[id]?.relativePath, cgroupID: id, policy: Policy(record: record),
                  owner: PolicyOwner(record: record), effectiveUserTimeout: record.user_timeout,
                  socketsConfigured: try state.sockets.lookup(record.slot) ?? 0,
                  attached: linked[.sockops, default: []].contains(id))
        }.sorted { ($0.path ?? "~", $0.cgroupID) < ($1.path ?? "~", $1.cgroupID) }
    }

    // MARK: coverage

    private func isCovered(_ cgroup: Cgroup, _ kind: Attachment) -> Bool {
        let ids = linked[kind, default: []]
        return ids.contains(cgroup.id) || state.cgroups.ancestors(of: cgroup).contains { ids.contains($0.id) }
    }

    /// Makes sure the program runs for `cgroup`: linked here unless an
    /// ancestor's link covers it, and then no longer below (which would run it twice).
    private func cover(_ cgroup: Cgroup, _ kind: Attachment) throws {
        guard !isCovered(cgroup, kind) else { return }
        try link(cgroup, kind)
        var redundant: [UInt64] = []
        state.cgroups.walk(below: cgroup) { child in
            if linked[kind, default: []].contains(child.id) { redundant.append(child.id) }
            return true
        }
        for id in redundant { try unlink(id, kind) }
    }

    /// Removes `cgroup`'s link after handing coverage down to the topmost
    /// cgroups below that still want it, so nothing below goes uncovered.
    private func uncover(_ cgroup: Cgroup, _ kind: Attachment) throws {
        for top in topmostPolicies(below: cgroup, wanting: kind) { try link(top, kind) }
        try unlink(cgroup.id, kind)
    }

    /// The cgroups strictly below `cgroup` whose policy wants `kind`, with none between.
    private func topmostPolicies(below cgroup: Cgroup, wanting kind: Attachment) -> [Cgroup] {
        var tops: [Cgroup] = []
        state.cgroups.walk(below: cgroup) { child in
            guard let record = records[child.id], kind.wants(record) else { return true }
            tops.append(child)
            return false
        }
        return tops
    }

    private func link(_ cgroup: Cgroup, _ kind: Attachment) throws {
        guard let program = state.programs[kind] else { return }
        let cgroupFD = try FileDescriptor.open(cgroup.path)
        let link = try program.attach(cgroup: cgroupFD, type: kind.attachType, cgroupPath: cgroup.path)
        try link.pin(at: state.linkPath(kind, cgroup.id))
        linked[kind, default: []].insert(cgroup.id)
    }

    private func unlink(_ id: UInt64, _ kind: Attachment) throws {
        try BPFFS.unpin(state.linkPath(kind, id))
        linked[kind, default: []].remove(id)
    }

    private func restore(_ id: UInt64, _ record: ka_policy?) throws {
        if let record {
            try state.policies.update(id, record)
            records[id] = record
        } else {
            try state.policies.delete(id)
            if let slot = records.removeValue(forKey: id)?.slot { usedSlots.remove(slot) }
        }
    }

    private func allocateSlot() throws -> UInt32 {
        guard usedSlots.count < Int(KA_MAX_POLICIES) else {
            throw BPFError("add policy (all \(KA_MAX_POLICIES) slots in use)", errno: ENOSPC)
        }
        while usedSlots.contains(slotCursor) { slotCursor = (slotCursor + 1) % UInt32(KA_MAX_POLICIES) }
        return slotCursor
    }

    private func liveIDs() -> Set<UInt64> {
        Set(((try? cgroupsByID()) ?? [:]).keys)
    }
}
