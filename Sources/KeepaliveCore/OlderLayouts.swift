// SPDX-License-Identifier: MIT
import BPF
import CLibBPF
import Glibc

import struct SystemPackage.FilePath

/// The pinned maps of older layouts, the one-time migration of their
/// policies into the current maps, and the guard that keeps keepalive 0.1.0
/// off newer state.
///
/// Layout 1 (keepalive 0.1.0, no ka_meta) recorded no path, so the cgroup
/// tree is walked once to find its policies; layout 2's record is layout 3's
/// without the origin. Layouts 2 and 3 kept counters in per-CPU arrays sized
/// for every slot (ka_counters, ka_rule_counters); layout 4 keeps them in
/// chunks made as slots are taken, and takes their counts over. keepalive 0.1.0 knew nothing of versions: it would
/// reuse its maps by name over any state. So this state pins, under the
/// names of 0.1.0's own maps, guards of another shape: libbpf refuses to
/// reuse them and 0.1.0's load fails, changing nothing.
struct OlderLayouts {
    /// keepalive 0.1.0's struct ka_policy, as it was pinned in "ka_policies".
    struct Policy: BitwiseCopyable {
        var keepidle, keepintvl, keepcnt, userTimeout, syncnt, maxseg, windowClamp: Int32
        var flags, slot, generation: UInt32
    }

    static let programPins = ["prog", "prog-setsockopt"]
    static let policiesPin = "ka_policies"
    static let socketsPin = "ka_sockets"
    static let layout2PoliciesPin = "ka_policies_v2"
    static let layout3CountersPin = "ka_counters"
    static let layout3RuleCountersPin = "ka_rule_counters"
    /// Pins of older layouts that this one removes once it took them over.
    static let replacedPins = programPins + [layout2PoliciesPin, layout3CountersPin, layout3RuleCountersPin]
    static var pins: [String] { replacedPins + [policiesPin, socketsPin] }

    /// The guard's shape: nothing 0.1.0 could reuse in place of its maps.
    static let guardShape = MapShape(type: BPF_MAP_TYPE_ARRAY, keySize: 4, valueSize: 4)
    static let guardedPins = [policiesPin, socketsPin]

    let root: String

    /// What one of 0.1.0's map names holds now.
    enum Layout1Pin: Equatable { case absent, guarded, layout1 }

    func layout1Pin(_ name: String) throws -> Layout1Pin {
        guard let fd = try BPFFS.openIfPresent(pinned: root + "/" + name, as: .map) else { return .absent }
        do {
            _ = try MapHandle(fd, name: name, expecting: Self.guardShape)
            return .guarded
        } catch is MapIncompatible {
            return .layout1
        }
    }

    /// Whether some older layout's pin is still there (a guard is not one).
    func isPresent() throws -> Bool {
        for name in Self.replacedPins where try BPFFS.isPresent(root + "/" + name) {
            return true
        }
        return try Self.guardedPins.contains { try layout1Pin($0) == .layout1 }
    }

    /// Whether both guards are in place.
    func guarded() throws -> Bool {
        try Self.guardedPins.allSatisfy { try layout1Pin($0) == .guarded }
    }

    /// Pins the guards that are missing (after remove(): 0.1.0's maps are gone).
    func guardAgainstLayout1() throws {
        for name in Self.guardedPins where try layout1Pin(name) == .absent {
            let raw = bpf_map_create(BPF_MAP_TYPE_ARRAY, "ka_guard", 4, 4, 1, nil)
            let fd = FileDescriptor(owning: try SyscallError.check("create the guard map \(name)", raw))
            var key: UInt32 = 0
            var layout = UInt32(KA_STATE_LAYOUT)  // what it guards, for whoever looks
            try SyscallError.check("write the guard map \(name)", bpf_map_update_elem(fd.raw, &key, &layout, 0))
            try BPFFS.pin(fd, at: root + "/" + name)
        }
    }

    /// Ids of the programs 0.1.0 pinned: links may still run them.
    func programIDs() throws -> Set<UInt32> {
        var ids: Set<UInt32> = []
        for name in Self.programPins {
            if let fd = try BPFFS.openIfPresent(pinned: root + "/" + name, as: .program) {
                ids.insert(try BPFProgram(fd, name: name).id())
            }
        }
        return ids
    }

    /// Carries an older layout's policies into `kernel`'s maps (before its
    /// programs take over the links).
    func migrate(into kernel: PinnedKernel, from layout: UInt32, cgroups: CgroupFS) throws {
        switch layout {
        case 0:  // layout 1, or nothing yet
            for (slot, (id, migrated, configured)) in try layout1Policies(in: cgroups).enumerated() {
                var record = migrated
                record.slot = UInt32(slot)
                // A total: on one CPU only, so that the sum over CPUs is it.
                try kernel.counters.update(
                    record.slot,
                    perCPU: { ka_counters(configured: $0 == 0 ? configured : 0, reaped: (0, 0)) }
                )
                try kernel.policies.update(id, try record.encoded())
            }
        case 2, 3:
            if layout == 2 { for (id, record) in try layout2Policies() { try kernel.policies.update(id, record) } }
            try takeCountersOver(into: kernel)
        default:
            break
        }
    }

    /// Each policy's (and rule set's) counts, CPU by CPU, from layout 2's and
    /// 3's per-CPU arrays of every slot into chunks of the slots in use; a
    /// crash half-way takes them over again from the start (the old arrays
    /// go only when all is done).
    private func takeCountersOver(into kernel: PinnedKernel) throws {
        let records = try kernel.readPolicies().values
        if let old = try layout3Counters(Self.layout3CountersPin) {
            for record in records { try copy(record.slot, from: old, to: kernel.counters) }
        }
        if let old = try layout3Counters(Self.layout3RuleCountersPin) {
            for record in records where !record.policy.rules.isEmpty {
                for key in PinnedKernel.ruleCounterKeys(record.ruleSlot) {
                    try copy(key, from: old, to: kernel.ruleCounters)
                }
            }
        }
    }

    private func copy(
        _ key: UInt32,
        from old: BPFPerCPUMap<UInt32, ka_counters>,
        to new: PerCPUChunks<ka_counters>
    ) throws {
        let counts = try old.lookup(key) ?? []
        try new.update(key, perCPU: { counts.indices.contains($0) ? counts[$0] : ka_counters() })
    }

    private func layout3Counters(_ name: String) throws -> BPFPerCPUMap<UInt32, ka_counters>? {
        try BPFFS.openIfPresent(pinned: root + "/" + name, as: .map).map {
            try BPFPerCPUMap($0, name: name, type: BPF_MAP_TYPE_PERCPU_ARRAY)
        }
    }

    /// Layout 2's policies, as layout 3 records (no origin); their slots and
    /// so their counters stay as they were.
    func layout2Policies() throws -> [(id: UInt64, record: ka_policy)] {
        guard let fd = try BPFFS.openIfPresent(pinned: root + "/" + Self.layout2PoliciesPin, as: .map) else {
            return []
        }
        let map = try BPFMap<UInt64, ka_policy_layout2>(fd, name: Self.layout2PoliciesPin, type: BPF_MAP_TYPE_HASH)
        return try map.entries().map { id, old in
            var record = ka_policy()
            withUnsafeMutableBytes(of: &record) { new in
                withUnsafeBytes(of: old) { new.copyMemory(from: $0) }  // the same fields, in the same places
            }
            return (id, record)
        }
    }

    /// The policies 0.1.0 had in force, with their cgroup's path and socket count.
    func layout1Policies(in cgroups: CgroupFS) throws -> [(id: UInt64, record: PolicyRecord, configured: UInt64)] {
        guard try layout1Pin(Self.policiesPin) == .layout1,
            let fd = try BPFFS.openIfPresent(pinned: root + "/" + Self.policiesPin, as: .map)
        else { return [] }
        let map = try BPFMap<UInt64, Policy>(fd, name: Self.policiesPin, type: BPF_MAP_TYPE_HASH)
        let sockets =
            try layout1Pin(Self.socketsPin) == .layout1
            ? try BPFFS.openIfPresent(pinned: root + "/" + Self.socketsPin, as: .map).map {
                try BPFMap<UInt32, UInt64>($0, name: Self.socketsPin, type: BPF_MAP_TYPE_ARRAY)
            } : nil
        let entries = try map.entries()
        guard !entries.isEmpty else { return [] }
        var paths: [UInt64: FilePath] = [cgroups.rootID: FilePath()]
        let unreadable = cgroups.walk(below: FilePath()) {
            paths[$0.id] = $0.path
            return true
        }
        var result: [(id: UInt64, record: PolicyRecord, configured: UInt64)] = []
        for (id, old) in entries {
            guard let path = paths[id] else {
                // Not found: gone, unless part of the tree could not be read.
                if let failure = unreadable.first { throw StateError.migrationBlocked("\(failure)") }
                continue
            }
            var record = ka_policy()
            record.values = ka_values(
                keepidle: old.keepidle,
                keepintvl: old.keepintvl,
                keepcnt: old.keepcnt,
                user_timeout: old.userTimeout,
                syncnt: old.syncnt,
                maxseg: old.maxseg,
                window_clamp: old.windowClamp
            )
            record.flags = old.flags & ~KA_POLICY_HAS_RULES  // 0.1.0 had no rules
            var migrated = PolicyRecord(record)
            migrated.path = path
            result.append((id, migrated, try sockets?.lookup(old.slot) ?? 0))
        }
        return result
    }

    /// Unpins what older layouts pinned (never the guards).
    func remove() throws {
        for name in Self.replacedPins { try BPFFS.unpin(root + "/" + name) }
        for name in Self.guardedPins where try layout1Pin(name) == .layout1 { try BPFFS.unpin(root + "/" + name) }
    }
}
