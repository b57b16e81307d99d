// SPDX-License-Identifier: MIT
import Glibc

import struct SystemPackage.FilePath

/// A consistent view of the pinned state, valid while its lock is held.
///
/// The links are derived from the policies, never kept apart: for each
/// Attachment kind, its program is linked exactly at the topmost cgroups whose
/// policy wants it, so it runs once per socket and finds the nearest policy by
/// walking up. A change writes the policy record (one atomic map update), then
/// makes the links agree, adding before removing so that no socket goes
/// unconfigured. A crash in between leaves links that disagree; the next
/// transaction's repair() finds that from the kernel's own account and fixes it.
public final class Transaction {
    let kernel: StateKernel
    public private(set) var records: [UInt64: PolicyRecord]
    private let index = PolicyIndex()
    /// The policies' counter slots; the rules' counter slots, among the policies with rules.
    private var slots = SlotPool(), ruleSlots = SlotPool()
    /// Ids under which ka_rules holds rules (kept current by every change).
    private var ruleSetIDs: Set<UInt64>
    private var links: [Attachment: [String: LinkState]] = [:]
    private var announced = false

    public init(kernel: StateKernel) throws {
        self.kernel = kernel
        records = try kernel.readPolicies()
        ruleSetIDs = try kernel.readRuleSetIDs()
        for (id, record) in records {
            index.insert(record.path, id: id)
            take(record)
        }
        for kind in Attachment.allCases { links[kind] = try kernel.readLinks(kind) }
    }

    public enum Change: String, Sendable {
        case created, updated, unchanged
    }

    // MARK: repair

    /// What the opening check found and did.
    public struct Report: Sendable {
        /// Breaches of the invariant it fixed (what a crash or an outside hand left).
        public var repaired: [String] = []
        /// Policies dropped because their cgroup is proven gone.
        public var dropped: [String] = []
        /// What it could not interpret or check, and so kept.
        public var keptUnknown: [String] = []
        /// Links it could not fix (the error says why).
        public var failed: [String] = []
    }

    /// Checks the kernel's state against the invariant and repairs it: drops
    /// the policies of cgroups proven gone (nothing else), gives each policy
    /// counters of its own, and makes every kind's links exactly the derived ones.
    @discardableResult
    public func repair() throws -> Report {
        var report = Report()
        for (id, record) in records.sorted(by: { $0.key < $1.key }) {
            switch kernel.presence(of: record.path, id: id) {
            case .present:
                continue
            case .gone:
                try announce()
                try delete(id)
                forget(id)
                report.dropped.append("\(record.path.cgroupDisplay) (cgroup removed)")
            case .unknown(let code):
                report.keptUnknown.append(
                    "policy on \(record.path.cgroupDisplay): cannot tell whether the cgroup "
                        + "still exists (\(errnoText(code))); kept"
                )
            }
        }
        try repairSlots(&report)
        try repairRules(&report)
        for kind in Attachment.allCases {
            for (pin, state) in links[kind, default: [:]].sorted(by: { $0.key < $1.key }) {
                if case .foreign(let why) = state {
                    report.keptUnknown.append("\(kind.linksDirectory)/\(pin): \(why); left alone")
                } else if UInt64(pin) == nil {
                    report.keptUnknown.append("\(kind.linksDirectory)/\(pin): not a cgroup id; left alone")
                }
            }
            let candidates = Set(records.keys).union(links[kind, default: [:]].keys.compactMap(UInt64.init))
            let outcome = fixLinks(kind, candidates)
            report.repaired += outcome.actions
            report.failed += outcome.failures.map(\.description)
        }
        return report
    }

    /// Gives each policy counters of its own, and each policy with rules
    /// rule counters of its own (a crash or an outside hand may leave two
    /// sharing a slot).
    private func repairSlots(_ report: inout Report) throws {
        var taken: Set<UInt32> = []
        var takenRules: Set<UInt32> = []
        var sharedRuleSlots: Set<UInt32> = []
        for (id, record) in records.sorted(by: { $0.key < $1.key }) {
            var moved = record
            if !taken.insert(record.slot).inserted || Int(record.slot) >= kernel.policyCapacity {
                moved.slot = try freeSlot(avoiding: taken)
                report.repaired.append(
                    "gave the policy on \(record.path.cgroupDisplay) counters of its own "
                        + "(slot \(record.slot) was shared)"
                )
            }
            if !record.policy.rules.isEmpty,
                !takenRules.insert(record.ruleSlot).inserted || Int(record.ruleSlot) >= kernel.ruleSetCapacity
            {
                moved.ruleSlot = try freeRuleSlot(avoiding: takenRules)
                report.repaired.append(
                    "gave the rules on \(record.path.cgroupDisplay) counters of their own "
                        + "(rule slot \(record.ruleSlot) was shared)"
                )
            }
            guard moved.slot != record.slot || moved.ruleSlot != record.ruleSlot else { continue }
            moved.rulesStale = false  // written where the programs read them
            if moved.ruleSlot != record.ruleSlot { sharedRuleSlots.insert(record.ruleSlot) }
            try announce()
            try write(
                moved,
                for: id,
                freshCounters: moved.slot != record.slot,
                freshRuleCounters: moved.ruleSlot != record.ruleSlot
            )
            remember(moved, for: id)
            taken.insert(moved.slot)
            if !moved.policy.rules.isEmpty { takenRules.insert(moved.ruleSlot) }
        }
        // The set at a slot two policies shared may be the one that moved: the one left there is written again.
        for (id, record) in records where !record.policy.rules.isEmpty && sharedRuleSlots.contains(record.ruleSlot) {
            records[id]?.rulesStale = true
        }
    }

    /// Rules no policy points at (a crash between the writes) go; a
    /// policy whose rules an outside hand removed keeps its own values, as
    /// the program already gives it, and says so; rules the programs do not
    /// read where the record says are written there again.
    private func repairRules(_ report: inout Report) throws {
        for id in ruleSetIDs.sorted() where records[id].map({ $0.policy.rules.isEmpty }) ?? true {
            try announce()
            try deleteRules(id)
            ruleSetIDs.remove(id)
            report.repaired.append(
                "removed the rules kept for \(records[id]?.path.cgroupDisplay ?? "cgroup id \(id)"), "
                    + "which no policy has"
            )
        }
        // The set the programs may still read at such a policy's rule slot
        // goes first (they then read ka_rules, which holds none): a run
        // killed between finds the policy as it was and does both again.
        for record in records.values where record.rulesMissing {
            guard let slot = record.orphanedRuleSlot, ruleSlots.users(of: slot) == 0 else { continue }
            try announce()
            try kernel.releaseRuleSet(at: slot)
        }
        try rewrite(\.rulesMissing, &report) {
            "the policy on \($0.path.cgroupDisplay) had lost its rules (ka_rules held none): "
                + "its own values apply to all its connections"
        }
        // Rules the programs do not read at the policy's rule slot: an older
        // binary's records point elsewhere, and a run killed while writing
        // them left its mark in ka_rules.
        try rewrite(\.rulesStale, &report) {
            "put the rules of the policy on \($0.path.cgroupDisplay) where the programs read them "
                + "(rule slot \($0.ruleSlot))"
        }
    }

    /// Writes again each record the kernel's account flags (`flag`, which
    /// it never writes), saying so.
    private func rewrite(
        _ flag: WritableKeyPath<PolicyRecord, Bool>,
        _ report: inout Report,
        saying: (PolicyRecord) -> String
    ) throws {
        for (id, record) in records.sorted(by: { $0.key < $1.key }) where record[keyPath: flag] {
            var fixed = record
            fixed[keyPath: flag] = false
            try announce()
            try write(fixed, for: id, freshCounters: false, freshRuleCounters: false)
            remember(fixed, for: id)
            report.repaired.append(saying(record))
        }
    }

    // MARK: changes

    /// Sets a cgroup's policy: a new one is linked where needed, an existing
    /// one updated in place. On failure what was in force is restored.
    @discardableResult
    public func apply(
        _ policy: Policy,
        to cgroup: Cgroup,
        owner: PolicyOwner = .cli,
        origin: Origin = .none
    ) throws -> Change {
        if let lacking = kernel.features.unsupported(by: policy) { throw lacking }  // before anything changes
        let previous = records[cgroup.id]
        let keepsRuleSlot = !(previous?.policy.rules.isEmpty ?? true)
        let ruleSlot = policy.rules.isEmpty ? 0 : keepsRuleSlot ? previous!.ruleSlot : try freeRuleSlot()
        let record = PolicyRecord(
            policy: policy,
            owner: owner,
            path: cgroup.path,
            slot: try previous?.slot ?? freeSlot(),
            origin: origin,
            ruleSlot: ruleSlot
        )
        let rewrite = previous.map { !$0.sameSettings(as: record) } ?? true
        if rewrite {
            try announce()
            // A rule's counters count what its rule did: fresh when the rules change.
            try write(
                record,
                for: cgroup.id,
                freshCounters: previous == nil,
                freshRuleCounters: !keepsRuleSlot || previous?.policy.rules != policy.rules
            )
            remember(record, for: cgroup.id)
        }
        let outcome = fixLinks(around: cgroup.path, id: cgroup.id)
        if let failure = outcome.failures.first {
            if rewrite { try restore(previous, for: cgroup, after: failure) }
            throw failure
        }
        if !rewrite { return outcome.actions.isEmpty ? .unchanged : .updated }
        return previous == nil ? .created : .updated
    }

    /// Removes a cgroup's policy; its sockets fall back to the nearest
    /// ancestor's. Returns false if it had none.
    @discardableResult
    public func remove(_ id: UInt64) throws -> Bool {
        guard let record = records[id] else { return false }
        try announce()
        try delete(id)
        forget(id)
        if let failure = fixLinks(around: record.path, id: id).failures.first {
            try restore(record, for: Cgroup(path: record.path, id: id), after: failure)
            throw failure
        }
        return true
    }

    /// One cgroup's policy as the agent wants it in force.
    public struct Desire: Sendable {
        public let cgroup: Cgroup
        public let policy: Policy
        public let source: String
        public let origin: Origin

        public init(cgroup: Cgroup, policy: Policy, source: String, origin: Origin = .none) {
            self.cgroup = cgroup
            self.policy = policy
            self.source = source
            self.origin = origin
        }
    }

    /// What a reconcile changed, and the cgroups it could not change.
    public struct Outcome: Sendable {
        public var changes: [AppliedChange] = []
        public var failures: [Failure] = []

        public init() {}
    }

    /// A cgroup a change could not reach, and whose trouble that is.
    public struct Failure: Sendable {
        public let cgroup: FilePath
        /// As thrown: its scope and text are read from it where it is reported.
        public let error: any Error
        public let scope: FailureScope

        public init(cgroup: FilePath, error: any Error) {
            self.cgroup = cgroup
            self.error = error
            scope = FailureScope(of: error)
        }
    }

    /// Makes the agent's policies in force exactly `desired`. Stale ones go
    /// first (so a full map has room), then new and changed ones come, parents
    /// first; unchanged ones are not touched. Policies set with the CLI stay
    /// unless `desired` names their cgroup. One cgroup's failure does not stop
    /// the others. A policy `desired` leaves out is withdrawn only when its
    /// absence proves something: `keeping` says which to keep although they
    /// are not desired (part of the cgroup tree could not be read, the runtime
    /// that named a pod did not answer: not seeing a cgroup is no proof).
    public func reconcile(
        _ desired: [Desire],
        owner: PolicyOwner = .agent,
        keeping keep: (UInt64, PolicyRecord) -> Bool = { _, _ in false }
    ) -> Outcome {
        let wanted = Set(desired.map(\.cgroup.id))
        let stale = records.filter { $0.value.owner == owner && !wanted.contains($0.key) && !keep($0.key, $0.value) }
        var outcome = withdraw(stale.map(\.key), owner: owner)
        let enforced = enforce(desired, owner: owner)
        outcome.changes += enforced.changes
        outcome.failures += enforced.failures
        return outcome
    }

    /// Puts these policies in force (parents first), leaving every other one as it is.
    public func enforce(_ desired: [Desire], owner: PolicyOwner = .agent) -> Outcome {
        var outcome = Outcome()
        for want in desired.sorted(by: { $0.cgroup.path.depth < $1.cgroup.path.depth }) {
            do {
                let change = try apply(want.policy, to: want.cgroup, owner: owner, origin: want.origin)
                guard change != .unchanged else { continue }
                outcome.changes.append(
                    AppliedChange(
                        kind: change == .created ? .attached : .updated,
                        cgroup: want.cgroup.path,
                        cgroupID: want.cgroup.id,
                        policy: want.policy,
                        source: want.source,
                        origin: want.origin
                    )
                )
            } catch {
                outcome.failures.append(Failure(cgroup: want.cgroup.path, error: error))
            }
        }
        return outcome
    }

    /// Removes the policies `owner` set on these cgroups (children first).
    public func withdraw(_ ids: [UInt64], owner: PolicyOwner = .agent) -> Outcome {
        var outcome = Outcome()
        let owned = ids.compactMap { id in records[id].flatMap { $0.owner == owner ? (id, $0) : nil } }
        for (id, record) in owned.sorted(by: { $0.1.path.depth > $1.1.path.depth }) {
            do {
                try remove(id)
                outcome.changes.append(.detached(record, id: id))
            } catch {
                outcome.failures.append(Failure(cgroup: record.path, error: error))
            }
        }
        return outcome
    }

    // MARK: status

    /// A policy as the kernel has it, with its coverage read from the links.
    public struct Entry: Sendable {
        public let cgroupID: UInt64
        public let record: PolicyRecord
        /// The sock_ops program is linked at this cgroup (the top of a covered subtree).
        public let linked: Bool
        /// It runs for this cgroup's sockets: linked here or at an ancestor.
        public let covered: Bool
    }

    public func entries() -> [Entry] {
        records.map { id, record in
            let linked = isLinked(.sockops, id)
            let covered = linked || index.ancestors(of: record.path).contains { isLinked(.sockops, $0) }
            return Entry(cgroupID: id, record: record, linked: linked, covered: covered)
        }.sorted { ($0.record.path.string, $0.cgroupID) < ($1.record.path.string, $1.cgroupID) }
    }

    // MARK: links

    private func wants(_ kind: Attachment, _ id: UInt64) -> Bool {
        records[id].map(kind.wants) ?? false
    }

    private func isLinked(_ kind: Attachment, _ id: UInt64) -> Bool {
        switch links[kind]?[String(id)] {
        case .current?, .staleProgram?: true
        default: false
        }
    }

    /// Whether `kind`'s program should be linked at cgroup `id`: its policy
    /// wants it and no policy above wants it too.
    private func shouldLink(_ kind: Attachment, _ id: UInt64) -> Bool {
        guard let record = records[id], kind.wants(record) else { return false }
        return !index.ancestors(of: record.path).contains { wants(kind, $0) }
    }

    /// The links a change at `path` can affect: its own, and those of the
    /// topmost policies below it.
    private func fixLinks(around path: FilePath, id: UInt64) -> (actions: [String], failures: [LinkFailure]) {
        var result: (actions: [String], failures: [LinkFailure]) = ([], [])
        for kind in Attachment.allCases {
            let below = index.topmost(below: path) { self.wants(kind, $0) }
            let outcome = fixLinks(kind, Set([id] + below))
            result.actions += outcome.actions
            result.failures += outcome.failures
        }
        return result
    }

    /// Makes `kind`'s links at `candidates` what the invariant says: missing
    /// ones made and stale ones updated first, then the extra ones removed.
    private func fixLinks(_ kind: Attachment, _ candidates: Set<UInt64>) -> (actions: [String], failures: [LinkFailure])
    {
        var actions: [String] = []
        var failures: [LinkFailure] = []
        let (wanted, unwanted) = candidates.sorted().reduce(into: ([UInt64](), [UInt64]())) { split, id in
            if shouldLink(kind, id) { split.0.append(id) } else { split.1.append(id) }
        }
        for id in wanted {
            let pin = String(id)
            let where_ = records[id]?.path.cgroupDisplay ?? "id \(id)"
            do {
                switch links[kind]?[pin] {
                case .current?:
                    continue
                case .staleProgram?:
                    try announce()
                    try kernel.updateLink(kind, pin: pin)
                    actions.append("updated the \(kind) link at \(where_) to the current program")
                case .foreign(let why)?:
                    throw LinkFailure(
                        kind: kind,
                        cgroup: where_,
                        reason: "its pin is taken by something else: \(why)",
                        scope: .state
                    )
                case .defunct?, .misplaced?, nil:
                    try announce()
                    if links[kind]?[pin] != nil { try kernel.removeLink(kind, pin: pin) }
                    links[kind]?[pin] = nil
                    try kernel.createLink(kind, at: Cgroup(path: records[id]!.path, id: id))
                    actions.append("linked the \(kind) program at \(where_)")
                }
                links[kind, default: [:]][pin] = .current
            } catch let failure as LinkFailure {
                failures.append(failure)
            } catch {
                failures.append(
                    LinkFailure(kind: kind, cgroup: where_, reason: "\(error)", scope: FailureScope(of: error))
                )
            }
        }
        for id in unwanted {
            let pin = String(id)
            guard let state = links[kind]?[pin] else { continue }
            if case .foreign = state { continue }
            do {
                try announce()
                try kernel.removeLink(kind, pin: pin)
                links[kind]?[pin] = nil
                let where_ = records[id]?.path.cgroupDisplay ?? "cgroup id \(id)"
                actions.append(
                    state == .defunct
                        ? "removed the \(kind) link of removed cgroup id \(id)"
                        : "removed the \(kind) link at \(where_), which \(records[id] == nil ? "has no policy" : "a link above covers")"
                )
            } catch {
                failures.append(
                    LinkFailure(
                        kind: kind,
                        cgroup: records[id]?.path.cgroupDisplay ?? "id \(id)",
                        reason: "\(error)",
                        scope: FailureScope(of: error)
                    )
                )
            }
        }
        return (actions, failures)
    }

    // MARK: bookkeeping

    /// The lowest slot no policy uses (nor `avoiding`); the map is full when there is none.
    private func freeSlot(avoiding also: Set<UInt32> = []) throws -> UInt32 {
        guard let slot = slots.free(avoiding: also, below: kernel.policyCapacity) else {
            throw StateError.full(capacity: kernel.policyCapacity)
        }
        return slot
    }

    /// Likewise among the policies with rules.
    private func freeRuleSlot(avoiding also: Set<UInt32> = []) throws -> UInt32 {
        guard let slot = ruleSlots.free(avoiding: also, below: kernel.ruleSetCapacity) else {
            throw StateError.rulesFull(capacity: kernel.ruleSetCapacity)
        }
        return slot
    }

    /// Bumps the change sequence once per transaction, before its first write.
    private func announce() throws {
        guard !announced else { return }
        try kernel.bumpChangeSequence()
        announced = true
    }

    /// Writes a policy (its rules first); rules it no longer has go after it.
    private func write(_ record: PolicyRecord, for id: UInt64, freshCounters: Bool, freshRuleCounters: Bool) throws {
        let hadRules = ruleSetIDs.contains(id)
        try kernel.writePolicy(record, for: id, freshCounters: freshCounters, freshRuleCounters: freshRuleCounters)
        if hadRules && record.policy.rules.isEmpty {
            ruleSetIDs.remove(id)
            try deleteRules(id)
        }
    }

    /// Removes a policy, its rules first: a policy whose rules are gone
    /// falls back to its own values, and a command run again still finds it.
    private func delete(_ id: UInt64) throws {
        if ruleSetIDs.contains(id) {
            try deleteRules(id)
            ruleSetIDs.remove(id)
        }
        try kernel.deletePolicy(id)
    }

    /// Removes the rules kept under an id, and the set the programs read at
    /// their slot unless another policy's rules are there too (until
    /// repair() gives each its own).
    private func deleteRules(_ id: UInt64) throws {
        let own = records[id].flatMap { $0.policy.rules.isEmpty ? nil : $0.ruleSlot }
        try kernel.deleteRules(id, releasingSetAt: { ruleSlots.users(of: $0) == ($0 == own ? 1 : 0) })
    }

    private func remember(_ record: PolicyRecord, for id: UInt64) {
        let previous = records[id]
        if let old = previous {
            if old.path != record.path { index.remove(old.path) }
            release(old)
        }
        records[id] = record
        index.insert(record.path, id: id)
        take(record)
        if record.policy.rules.isEmpty { ruleSetIDs.remove(id) } else { ruleSetIDs.insert(id) }
        if let old = previous { freeCountersIfUnused(old) }
    }

    private func forget(_ id: UInt64) {
        guard let record = records.removeValue(forKey: id) else { return }
        index.remove(record.path)
        release(record)
        ruleSetIDs.remove(id)
        freeCountersIfUnused(record)
    }

    /// The chunk of counters that held a policy's slot (or its rule slot)
    /// gives its memory back once no policy uses a slot in it. Called after
    /// the kernel no longer points there. Best effort: a chunk left is only
    /// memory, zeroed and used again by the next policy given a slot in it.
    private func freeCountersIfUnused(_ old: PolicyRecord) {
        let chunk = kernel.counterChunk
        if slots.noneInUse(chunkOf: old.slot, size: chunk.slots) {
            try? kernel.releaseCounterChunk(slot: old.slot)
        }
        if !old.policy.rules.isEmpty && ruleSlots.noneInUse(chunkOf: old.ruleSlot, size: chunk.ruleSlots) {
            try? kernel.releaseCounterChunk(ruleSlot: old.ruleSlot)
        }
    }

    private func take(_ record: PolicyRecord) {
        slots.take(record.slot)
        if !record.policy.rules.isEmpty { ruleSlots.take(record.ruleSlot) }
    }

    private func release(_ record: PolicyRecord) {
        slots.release(record.slot)
        if !record.policy.rules.isEmpty { ruleSlots.release(record.ruleSlot) }
    }

    /// Puts back what was in force before a change that failed; what it
    /// cannot put back is part of the error (the next opening repairs it).
    private func restore(_ previous: PolicyRecord?, for cgroup: Cgroup, after failure: LinkFailure) throws {
        if let previous {
            try write(previous, for: cgroup.id, freshCounters: false, freshRuleCounters: false)
            remember(previous, for: cgroup.id)
        } else {
            try delete(cgroup.id)
            forget(cgroup.id)
        }
        let restored = fixLinks(around: cgroup.path, id: cgroup.id)
        guard restored.failures.isEmpty else {
            throw LinkFailure(
                kind: failure.kind,
                cgroup: failure.cgroup,
                reason: failure.reason + "; and putting back what was in force failed: "
                    + restored.failures.map(\.description).joined(separator: "; "),
                scope: .state
            )
        }
    }
}

/// A link the transaction could not make, update or remove.
public struct LinkFailure: Error, CustomStringConvertible, Sendable {
    public let kind: Attachment
    public let cgroup: String
    public let reason: String
    public let scope: FailureScope

    public var description: String { "\(kind) link at \(cgroup): \(reason)" }
}

/// One change the agent made, for its log.
public struct AppliedChange: Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable { case attached, updated, detached }
    public let kind: Kind
    public let cgroup: FilePath
    public let cgroupID: UInt64
    public let policy: Policy?
    public let source: String?
    public let origin: Origin

    /// A policy removed from the cgroup `record` names.
    public static func detached(_ record: PolicyRecord, id: UInt64) -> AppliedChange {
        AppliedChange(
            kind: .detached,
            cgroup: record.path,
            cgroupID: id,
            policy: nil,
            source: nil,
            origin: record.origin
        )
    }

    public var description: String {
        var line =
            "\(kind.rawValue) policy \(kind == .detached ? "from" : "on") \(origin.display.map { "\($0) (\(cgroup.cgroupDisplay))" } ?? cgroup.cgroupDisplay)"
        if let policy { line += ": \(policy.summary)" }
        if let source { line += " (\(source))" }
        return line
    }
}

extension Attachment: CustomStringConvertible {
    public var description: String {
        switch self {
        case .sockops: "sock_ops"
        case .setsockopt: "setsockopt"
        }
    }
}

/// Counter slots: how many policies use each (more than one only until
/// repair() gives each its own), and the lowest that may be free.
struct SlotPool {
    private var inUse: [UInt32: Int] = [:]
    private var lowestFree: UInt32 = 0  // no slot below it is free

    mutating func take(_ slot: UInt32) { inUse[slot, default: 0] += 1 }

    /// How many policies use `slot`.
    func users(of slot: UInt32) -> Int { inUse[slot] ?? 0 }

    mutating func release(_ slot: UInt32) {
        inUse[slot, default: 1] -= 1
        if inUse[slot] == 0 {
            inUse[slot] = nil
            lowestFree = min(lowestFree, slot)
        }
    }

    /// Whether no slot of the chunk of `size` slots that holds `slot` is in use.
    func noneInUse(chunkOf slot: UInt32, size: Int) -> Bool {
        let first = slot / UInt32(size) * UInt32(size)
        return !(first..<first + UInt32(size)).contains { inUse[$0] != nil }
    }

    /// The lowest slot in use by none (nor in `also`) below `capacity`; nil when there is none.
    mutating func free(avoiding also: Set<UInt32>, below capacity: Int) -> UInt32? {
        var slot = lowestFree
        while inUse[slot] != nil || also.contains(slot) { slot += 1 }
        guard Int(slot) < capacity else { return nil }
        if also.isEmpty { lowestFree = slot }
        return slot
    }
}
