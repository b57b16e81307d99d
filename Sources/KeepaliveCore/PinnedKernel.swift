// SPDX-License-Identifier: MIT
import BPF
import CLibBPF
import Glibc

import struct SystemPackage.FilePath

/// Whether open handles are still the pinned state.
public enum Pinning: Equatable, Sendable {
    case intact
    /// Proven: the root or its maps are gone or another state's now.
    case replaced
    /// The check itself failed (errno): nothing is proven.
    case unknown(Int32)
}

/// Sockets configured and connections reaped under one policy, summed over CPUs.
public struct PolicyCounters: Equatable, Sendable {
    public var configured: UInt64 = 0
    public var reapedKeepalive: UInt64 = 0
    public var reapedUserTimeout: UInt64 = 0

    public var reaped: UInt64 { reapedKeepalive + reapedUserTimeout }
}

/// The programs linked to cgroups, by kind, with their kernel ids; nil for a
/// kind the kernel cannot run (setsockopt without `precedence`).
struct LinkedPrograms: Sendable {
    let sockops: (program: BPFProgram, id: UInt32)
    let setsockopt: (program: BPFProgram, id: UInt32)?

    subscript(kind: Attachment) -> (program: BPFProgram, id: UInt32)? {
        switch kind {
        case .sockops: sockops
        case .setsockopt: setsockopt
        }
    }
}

/// The StateKernel of a pinned state: its maps and programs (opened from
/// their pins, or fresh from a load), and its links as the kernel reports
/// them. Immutable: what changes is in the kernel.
final class PinnedKernel: StateKernel, Sendable {
    unowned let state: PinnedState
    let identity: ProgramIdentity
    let features: KernelFeatures
    let policies: BPFMap<UInt64, ka_policy>
    /// Each policy's counters, at its slot, in chunks made as slots are taken.
    let counters: PerCPUChunks<ka_counters>
    /// Each policy's rules by its cgroup id: what userspace reads back.
    let rules: BPFMap<UInt64, ka_rule_set>
    /// The same rule sets at their rule slots: what the programs read.
    let ruleSets: MapCells<ka_rule_set>
    /// Each rule set's counters, KA_MAX_RULES from its slot * KA_MAX_RULES, likewise.
    let ruleCounters: PerCPUChunks<ka_counters>
    let errors: BPFPerCPUMap<UInt32, UInt64>
    let meta: BPFMap<UInt32, ka_meta>
    let events: BPFMap<UInt32, ka_event>
    let eventsHead: BPFMap<UInt32, UInt64>
    /// Paths' idle gaps, observed for the policies that ask (bpf/keepalive.bpf.c, ka_paths).
    let paths: BPFMap<ka_path_key, ka_path>
    let programs: LinkedPrograms
    let reapedProgram: BPFProgram?
    /// Programs of ours that links may still run: an upgrade in progress.
    let staleProgramIDs: Set<UInt32>
    private let rootInode: ino_t

    var countingReaped: Bool { reapedProgram != nil }
    var allPrograms: [BPFProgram] {
        [programs.sockops.program] + [programs.setsockopt?.program, reapedProgram].compactMap { $0 }
    }

    /// The state as pinned, when it holds this binary's programs. A pin that
    /// is missing throws its ENOENT (an install repairs that); any other error too.
    convenience init(pinned object: MainObject, state: PinnedState) throws {
        try self.init(object, state: state, pinned: true, staleProgramIDs: [])
    }

    /// The state as `object` just loaded it (its maps pinned or reused by libbpf).
    convenience init(loaded object: MainObject, state: PinnedState, staleProgramIDs: Set<UInt32>) throws {
        try self.init(object, state: state, pinned: false, staleProgramIDs: staleProgramIDs)
    }

    /// Each program the kernel runs, from its pin or from the object, under its pin's name.
    private init(_ object: MainObject, state: PinnedState, pinned: Bool, staleProgramIDs: Set<UInt32>) throws {
        func map<M>(_ map: OpaquePointer, _ make: (FileDescriptor, String, bpf_map_type) throws -> M) throws -> M {
            let fd =
                pinned ? try BPFFS.open(pinned: try object.pinPath(map), as: .map) : try BPFObject.mapDescriptor(map)
            return try make(fd, BPFObject.name(ofMap: map), bpf_map__type(map))
        }
        func program(_ loaded: OpaquePointer, pin name: String) throws -> BPFProgram {
            pinned
                ? try BPFProgram.pinned(at: state.root + "/" + name, name: name)
                : try BPFObject.program(loaded, name: name)
        }
        func linked(_ kind: Attachment) throws -> (program: BPFProgram, id: UInt32) {
            let program = try program(object.programs[kind], pin: MainObject.Programs.pin(kind))
            return (program, try program.id())
        }
        self.state = state
        identity = object.identity
        features = object.features
        let maps = object.maps
        policies = try map(maps.policies) { try BPFMap($0, name: $1, type: $2) }
        counters = try map(maps.counters) { fd, name, _ in
            try PerCPUChunks(fd, name: name, chunkSize: Int(KA_COUNTER_CHUNK))
        }
        rules = try map(maps.rules) { try BPFMap($0, name: $1, type: $2) }
        ruleSets = try map(maps.ruleSets) { fd, name, _ in try MapCells(fd, name: name) }
        ruleCounters = try map(maps.ruleCounters) { fd, name, _ in
            try PerCPUChunks(fd, name: name, chunkSize: Int(KA_COUNTER_CHUNK))
        }
        errors = try map(maps.errors) { try BPFPerCPUMap($0, name: $1, type: $2) }
        meta = try map(maps.meta) { try BPFMap($0, name: $1, type: $2) }
        events = try map(maps.events) { try BPFMap($0, name: $1, type: $2) }
        eventsHead = try map(maps.eventsHead) { try BPFMap($0, name: $1, type: $2) }
        paths = try map(maps.paths) { try BPFMap($0, name: $1, type: $2) }
        programs = LinkedPrograms(
            sockops: try linked(.sockops),
            setsockopt: object.programs.hasSetsockopt ? try linked(.setsockopt) : nil
        )
        reapedProgram =
            object.programs.hasReaped
            ? try program(object.programs.reaped, pin: MainObject.Programs.reapedPin) : nil
        self.staleProgramIDs = staleProgramIDs
        guard let st = FilePath(state.root).status() else { throw SyscallError("inspect \(state.root)", errno: errno) }
        rootInode = st.st_ino
    }

    // MARK: identity

    /// Whether these handles are still the state pinned at the root: its
    /// directory and its meta map. Replaced only on proof (ENOENT, or
    /// another inode or map there); a check that fails otherwise (EMFILE,
    /// ...) proves nothing.
    func pinning() -> Pinning {
        guard let st = FilePath(state.root).status() else { return errno == ENOENT ? .replaced : .unknown(errno) }
        guard st.st_ino == rootInode else { return .replaced }
        do {
            guard let fd = try BPFFS.openIfPresent(pinned: state.root + "/" + meta.handle.name, as: .map) else {
                return .replaced
            }
            let pinned = try MapHandle(
                fd,
                name: meta.handle.name,
                expecting: MapShape(
                    type: BPF_MAP_TYPE_ARRAY,
                    keySize: 4,
                    valueSize: MemoryLayout<ka_meta>.size
                )
            )
            return pinned.id == meta.handle.id ? .intact : .replaced
        } catch is WrongObjectKind {
            return .replaced
        } catch is MapIncompatible {
            return .replaced
        } catch let error as SyscallError {
            return .unknown(error.errno)
        } catch {
            return .unknown(EIO)
        }
    }

    func metaMatches() throws -> Bool {
        guard let current = try meta.lookup(0) else { return false }
        return current.layout == KA_STATE_LAYOUT && current.object_hash == identity.hash
            && current.program_version == identity.version
    }

    func changeSequence() throws -> UInt64 {
        try meta.lookup(0)?.change_seq ?? 0
    }

    func writeIdentity(changeSeq: UInt64) throws {
        try meta.update(
            0,
            ka_meta(
                layout: UInt32(KA_STATE_LAYOUT),
                program_version: identity.version,
                object_hash: identity.hash,
                change_seq: changeSeq,
                cgroup_root_id: state.cgroups.rootID
            )
        )
    }

    func bumpChangeSequence() throws {
        guard var current = try meta.lookup(0) else { return }
        current.change_seq &+= 1
        try meta.update(0, current)
    }

    // MARK: policies

    /// The policies, each with its rules (ka_rules, under the same id), and
    /// whether the programs read those rules at its rule slot: the record
    /// points there and no write of them was under way (ka_rules' mark).
    /// The set there is never read back: before Linux 6.7 each lookup in an
    /// array of maps from userspace waits for a grace period.
    func readPolicies() throws -> [UInt64: PolicyRecord] {
        let sets = Dictionary(try rules.entries().map { ($0.key, $0.value) }, uniquingKeysWith: { $1 })
        var records: [UInt64: PolicyRecord] = [:]
        for (id, pinned) in try policies.entries() {
            let set = sets[id]
            var record = PolicyRecord(pinned, rules: set.map { (RuleSetRecord.rules(of: $0), Self.slot(of: $0)) })
            if let set, !record.policy.rules.isEmpty {
                record.rulesStale =
                    set.slot & KA_RULE_SET_WRITING != 0 || pinned.flags & KA_POLICY_RULES_AT_SLOT == 0
                    || pinned.flags >> KA_POLICY_RULE_SLOT_SHIFT != Self.slot(of: set)
            }
            records[id] = record
        }
        return records
    }

    /// A rule set's slot, without the mark of a write under way.
    private static func slot(of set: ka_rule_set) -> UInt32 { set.slot & ~KA_RULE_SET_WRITING }

    func readRuleSetIDs() throws -> Set<UInt64> {
        Set(try rules.keys())
    }

    var policyCapacity: Int { policies.handle.capacity }
    var ruleSetCapacity: Int { rules.handle.capacity }

    /// Rules go in before the record that points at them: userspace's copy
    /// (marked: a write under way), the programs' at the rule slot, then the
    /// record, then the mark goes. The program never finds a new policy
    /// whose rules are not there yet, and a run killed anywhere between
    /// leaves the mark for the next to find. (Removing them is the
    /// Transaction's: deleteRules.)
    func writePolicy(_ record: PolicyRecord, for id: UInt64, freshCounters: Bool, freshRuleCounters: Bool) throws {
        let encoded = try record.encoded()
        if freshCounters { try counters.update(record.slot, perCPU: { _ in ka_counters() }) }
        guard let ruleSet = record.encodedRules else {
            return try insert(encoded, into: policies, at: id, whenFull: .full(capacity: policyCapacity))
        }
        if freshRuleCounters {
            for key in Self.ruleCounterKeys(record.ruleSlot) {
                try ruleCounters.update(key, perCPU: { _ in ka_counters() })
            }
        }
        var marked = ruleSet
        marked.slot |= KA_RULE_SET_WRITING
        try insert(marked, into: rules, at: id, whenFull: .rulesFull(capacity: ruleSetCapacity))
        try ruleSets.write(record.ruleSlot, ruleSet)
        do {
            try insert(encoded, into: policies, at: id, whenFull: .full(capacity: policyCapacity))
        } catch StateError.full(let capacity) {
            // Full: the id was not in the map, so the rules just written were its new ones alone.
            try deleteRules(id, releasingSetAt: { _ in true })
            throw StateError.full(capacity: capacity)
        }
        try rules.update(id, ruleSet)
    }

    /// A map full of cgroups is said as such, not as E2BIG.
    private func insert<Value>(
        _ value: Value,
        into map: BPFMap<UInt64, Value>,
        at id: UInt64,
        whenFull full: StateError
    ) throws {
        do {
            try map.update(id, value)
        } catch {
            throw error.errno == E2BIG ? full : error
        }
    }

    /// (Its counters stay in their chunk, zeroed when the slot is taken
    /// again; a chunk no slot uses goes with releaseCounterChunk.)
    func deletePolicy(_ id: UInt64) throws {
        try policies.delete(id)
    }

    /// A rule set, if there is one: marked, then the programs' copy goes
    /// (they read userspace's meanwhile), then userspace's. A run killed
    /// between leaves the mark, and the next puts the copy back.
    func deleteRules(_ id: UInt64, releasingSetAt release: (UInt32) -> Bool) throws {
        guard var set = try rules.lookup(id) else { return }
        let slot = Self.slot(of: set)
        if release(slot) {
            set.slot |= KA_RULE_SET_WRITING
            try rules.update(id, set)
            try releaseRuleSet(at: slot)
        }
        try rules.delete(id)
    }

    func releaseRuleSet(at slot: UInt32) throws {
        try ruleSets.remove(slot)
    }

    /// Forgets the counters' chunks opened for writing (see PerCPUChunks).
    func forgetOpenedChunks() {
        counters.forgetOpened()
        ruleCounters.forgetOpened()
    }

    var counterChunk: (slots: Int, ruleSlots: Int) { (Int(KA_COUNTER_CHUNK), Int(KA_COUNTER_CHUNK / KA_MAX_RULES)) }

    func releaseCounterChunk(slot: UInt32) throws {
        try counters.removeChunk(holding: slot)
    }

    func releaseCounterChunk(ruleSlot: UInt32) throws {
        try ruleCounters.removeChunk(holding: ruleSlot * UInt32(KA_MAX_RULES))
    }

    /// A policy's counters; a slot that is not there counts nothing yet.
    func counters(of record: PolicyRecord, in pass: CounterPass) throws -> PolicyCounters {
        sum(try pass.policies.lookup(record.slot) ?? [])
    }

    /// Each rule's counters, in order.
    func ruleCounters(of record: PolicyRecord, in pass: CounterPass) throws -> [PolicyCounters] {
        let keys = Self.ruleCounterKeys(record.ruleSlot)
        return try record.policy.rules.indices.map { sum(try pass.rules.lookup(keys[$0]) ?? []) }
    }

    /// One pass of counter reads (a status, a scrape): each chunk opened once.
    struct CounterPass {
        let policies: PerCPUChunks<ka_counters>.ReadPass
        let rules: PerCPUChunks<ka_counters>.ReadPass
    }

    func counterPass() -> CounterPass {
        CounterPass(policies: counters.readPass(), rules: ruleCounters.readPass())
    }

    /// Where a rule set's counters are, rule by rule: every rule a set may
    /// have, so that a set whose rules change keeps counting.
    static func ruleCounterKeys(_ slot: UInt32) -> [UInt32] {
        let first = slot * UInt32(KA_MAX_RULES)
        return Array(first..<first + UInt32(KA_MAX_RULES))
    }

    private func sum(_ perCPU: [ka_counters]) -> PolicyCounters {
        perCPU.reduce(into: PolicyCounters()) { sum, cpu in
            sum.configured &+= cpu.configured
            sum.reapedKeepalive &+= cpu.reaped.0
            sum.reapedUserTimeout &+= cpu.reaped.1
        }
    }

    /// The kernel memory the state's maps take, by the kernel's account:
    /// the maps, the counters' chunks that hold the records' slots (in the
    /// pass: its counter reads open them too), and a rule set's copy for
    /// each record with rules (as much as a copy made to be measured).
    func kernelMemory(of records: some Sequence<PolicyRecord>, in pass: CounterPass) throws -> UInt64 {
        let withRules = records.filter { !$0.policy.rules.isEmpty }
        let maps = try [
            policies.handle, counters.handle, rules.handle, ruleSets.outer.handle, ruleCounters.handle, errors.handle,
            meta.handle, events.handle, eventsHead.handle, paths.handle,
        ].reduce(0) { $0 &+ (try $1.memory()) }
        let chunks =
            try pass.policies.memory(holding: records.map(\.slot))
            &+ (try pass.rules.memory(holding: withRules.map { $0.ruleSlot * UInt32(KA_MAX_RULES) }))
        let sets = withRules.isEmpty ? 0 : UInt64(withRules.count) &* (try ruleSets.cellMemory())
        return maps &+ chunks &+ sets
    }

    func setsockoptErrors() throws -> [(option: String, count: UInt64)] {
        try ([(KA_OPT_KEEPALIVE, KA_SO_KEEPALIVE_KEY)] + PolicyOption.allCases.map { ($0.bpfOption, $0.key) })
            .map { index, name in (name, (try errors.lookup(index.rawValue) ?? []).reduce(0, &+)) }
    }

    // MARK: links

    /// Every pin of a kind's links directory, as the kernel describes it. A
    /// pin that cannot be read throws: unreadable is not foreign, and a
    /// transaction that cannot see a link cannot say what to do with it.
    func readLinks(_ kind: Attachment) throws -> [String: LinkState] {
        let directory = state.linksDirectory(kind)
        var links: [String: LinkState] = [:]
        for name in try directoryNamesIfPresent(directory) ?? [] {
            links[name] = try classify(directory + "/" + name, name: name, kind: kind)
        }
        return links
    }

    private func classify(_ path: String, name: String, kind: Attachment) throws -> LinkState {
        let info: BPFLink.Info
        do {
            info = try BPFLink.pinned(at: path).info()
        } catch let other as WrongObjectKind {
            return .foreign("\(other)")
        } catch let error as SyscallError where error.errno == ENOENT {
            return .defunct  // unpinned meanwhile: nothing there to keep
        }
        guard info.type == BPF_LINK_TYPE_CGROUP, info.attachType == kind.attachType else {
            return .foreign("not a \(kind) cgroup link")
        }
        let current = info.programID == programs[kind]?.id
        guard current || staleProgramIDs.contains(info.programID) else {
            return .foreign("runs program \(info.programID), not keepalive's")
        }
        if info.cgroupID == 0 { return .defunct }
        guard UInt64(name) == info.cgroupID else { return .misplaced }
        return current ? .current : .staleProgram
    }

    func createLink(_ kind: Attachment, at cgroup: Cgroup) throws {
        let program = try runs(kind)
        let directory = state.cgroups.absolute(cgroup.path)
        let fd: FileDescriptor
        do {
            fd = try directory.openDirectory()
        } catch {
            throw CgroupAccessError(path: cgroup.display, errno: error.errno)
        }
        var st = stat()
        // The cgroup at that path must still be the one meant (ids are never reused).
        guard fstat(fd.raw, &st) == 0 else { throw CgroupAccessError(path: cgroup.display, errno: errno) }
        guard UInt64(st.st_ino) == cgroup.id else { throw CgroupAccessError(path: cgroup.display, errno: ENOENT) }
        let link: BPFLink
        do {
            link = try program.attach(cgroup: fd, type: kind.attachType, cgroupPath: directory.displayString)
        } catch {
            // Removed between the open and the attach: the kernel refuses a
            // cgroup that is no longer online. Gone on proof, so no failure.
            guard error.errno == ENOENT, state.cgroups.presence(of: cgroup.path, id: cgroup.id) == .gone else {
                throw error
            }
            throw CgroupAccessError(path: cgroup.display, errno: ENOENT)
        }
        try link.pin(at: state.linksDirectory(kind) + "/\(cgroup.id)")
    }

    func removeLink(_ kind: Attachment, pin: String) throws {
        try BPFFS.unpin(state.linksDirectory(kind) + "/" + pin)
    }

    func updateLink(_ kind: Attachment, pin: String) throws {
        try BPFLink.pinned(at: state.linksDirectory(kind) + "/" + pin).update(to: try runs(kind))
    }

    /// The program linked for `kind`; a kind this kernel cannot run is refused
    /// (the Transaction refuses the policies that would want it first).
    private func runs(_ kind: Attachment) throws -> BPFProgram {
        guard let program = programs[kind]?.program else {
            throw KernelLacks(feature: .precedence, requirement: features.lacking(.precedence) ?? .currentTaskInSockopt)
        }
        return program
    }

    /// Makes sure the reaped-connection tracepoint has its link (after an
    /// outside hand removed it, or an upgrade was interrupted before it). A
    /// pin that cannot be read throws; one that is not there is made.
    func repairReapedLink() throws {
        guard let reapedProgram else { return }
        let path = state.reapedLinkPath
        if let pinned = try BPFFS.openIfPresent(pinned: path, as: .link),
            try BPFLink(pinned, name: path).info().programID == (try reapedProgram.id())
        {
            return
        }
        try state.replaceReapedLink(running: reapedProgram)
        state.logger.notice("re-created the reaped-connection link at \(path)")
    }

    func presence(of path: FilePath, id: UInt64) -> CgroupPresence {
        state.cgroups.presence(of: path, id: id)
    }
}
