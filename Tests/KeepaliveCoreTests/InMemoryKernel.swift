// SPDX-License-Identifier: MIT
import Glibc

import struct SystemPackage.FilePath

@testable import KeepaliveCore

/// A kernel in memory for the Transaction's logic: a cgroup tree, the policy
/// map, and each kind's links as the kernel would report them. Faults can
/// be injected where the real kernel would fail.
final class InMemoryKernel: StateKernel {
    var features = KernelFeatures.everything
    /// path -> id of every cgroup that exists.
    var cgroups: [FilePath: UInt64] = [FilePath(): 1]
    var policies: [UInt64: PolicyRecord] = [:]
    /// ka_rules: rules, their counters' slot and the mark of a write under way, by policy id.
    var ruleSets: [UInt64: (rules: [Rule], slot: UInt32, writing: Bool)] = [:]
    /// ka_rule_sets: the rules the programs read, by rule slot.
    var ruleSetsAtSlots: [UInt32: [Rule]] = [:]
    /// Slots whose counters were zeroed for a policy, in order.
    var zeroedSlots: [UInt32] = []
    /// Rule slots whose counters were zeroed, in order.
    var zeroedRuleSlots: [UInt32] = []
    var ruleCapacity = 1024
    var links: [Attachment: [String: LinkState]] = [.sockops: [:], .setsockopt: [:]]
    var capacity = 65536
    var changeSequence: UInt64 = 0
    /// Cgroups whose presence cannot be told (stat fails with this errno).
    var unreadable: [FilePath: Int32] = [:]
    /// Link operations that fail, by cgroup id.
    var failingLinks: [UInt64: Int32] = [:]
    private var nextID: UInt64 = 100
    private(set) var operations: [String] = []

    @discardableResult
    func mkdir(_ path: String) -> Cgroup {
        let filePath = FilePath(path)
        if let id = cgroups[filePath] { return Cgroup(path: filePath, id: id) }
        nextID += 1
        cgroups[filePath] = nextID
        return Cgroup(path: filePath, id: nextID)
    }

    func rmdir(_ path: String) {
        let filePath = FilePath(path)
        guard let id = cgroups.removeValue(forKey: filePath) else { return }
        // The kernel detaches the links of a removed cgroup.
        for kind in Attachment.allCases where links[kind]?[String(id)] != nil { links[kind]?[String(id)] = .defunct }
    }

    func cgroup(_ path: String) -> Cgroup { Cgroup(path: FilePath(path), id: cgroups[FilePath(path)]!) }

    func linked(_ kind: Attachment = .sockops) -> Set<String> {
        Set(
            links[kind]!.filter { $0.value == .current }.keys.map { pin in
                cgroups.first { String($0.value) == pin }.map { $0.key.string } ?? "id \(pin)"
            }
        )
    }

    // MARK: StateKernel

    /// Each record with the rules ka_rules holds for it, as the real one reads them.
    func readPolicies() throws -> [UInt64: PolicyRecord] {
        policies.mapValues { stored in
            var record = stored
            guard !stored.policy.rules.isEmpty else { return record }
            let id = policies.first { $0.value == stored }!.key
            if let set = ruleSets[id] {
                (record.policy.rules, record.ruleSlot) = (set.rules, set.slot)
                record.rulesStale = set.writing || stored.ruleSlot != set.slot
            } else {
                record.policy.rules = []
                record.rulesMissing = true
                (record.ruleSlot, record.orphanedRuleSlot) = (0, stored.ruleSlot)
            }
            return record
        }
    }

    /// The counters' chunks released, in order.
    var releasedChunks: [String] = []

    func readRuleSetIDs() throws -> Set<UInt64> { Set(ruleSets.keys) }

    var policyCapacity: Int { capacity }
    var ruleSetCapacity: Int { ruleCapacity }

    func writePolicy(_ record: PolicyRecord, for id: UInt64, freshCounters: Bool, freshRuleCounters: Bool) throws {
        _ = try record.encoded()
        if freshCounters { zeroedSlots.append(record.slot) }
        if !record.policy.rules.isEmpty {
            if ruleSets[id] == nil && ruleSets.count >= ruleCapacity {
                throw StateError.rulesFull(capacity: ruleCapacity)
            }
            if freshRuleCounters { zeroedRuleSlots.append(record.ruleSlot) }
            ruleSets[id] = (record.policy.rules, record.ruleSlot, true)
            ruleSetsAtSlots[record.ruleSlot] = record.policy.rules
            operations.append("rules \(record.path)")
        }
        if policies[id] == nil && policies.count >= capacity {
            ruleSets[id] = nil  // as the real one: a new policy's rules go with it
            ruleSetsAtSlots[record.ruleSlot] = nil
            throw StateError.full(capacity: capacity)
        }
        policies[id] = record
        ruleSets[id]?.writing = false
        operations.append("write \(record.path)")
    }

    func deletePolicy(_ id: UInt64) throws {
        policies[id] = nil
        operations.append("delete \(id)")
    }

    func deleteRules(_ id: UInt64, releasingSetAt release: (UInt32) -> Bool) throws {
        guard let set = ruleSets[id] else { return }
        if release(set.slot) {
            ruleSets[id]?.writing = true
            try releaseRuleSet(at: set.slot)
        }
        ruleSets[id] = nil
        operations.append("delete rules \(id)")
    }

    func releaseRuleSet(at slot: UInt32) throws {
        ruleSetsAtSlots[slot] = nil
        operations.append("release rule slot \(slot)")
    }

    /// Small chunks, so that tests can fill one.
    var counterChunk: (slots: Int, ruleSlots: Int) { (4, 2) }

    func releaseCounterChunk(slot: UInt32) throws {
        releasedChunks.append("slots \(slot / 4 * 4)...")
    }

    func releaseCounterChunk(ruleSlot: UInt32) throws {
        releasedChunks.append("rule slots \(ruleSlot / 2 * 2)...")
    }

    func readLinks(_ kind: Attachment) throws -> [String: LinkState] { links[kind]! }

    func createLink(_ kind: Attachment, at cgroup: Cgroup) throws {
        if let code = failingLinks[cgroup.id] { throw CgroupAccessError(path: cgroup.display, errno: code) }
        guard cgroups[cgroup.path] == cgroup.id else { throw CgroupAccessError(path: cgroup.display, errno: ENOENT) }
        links[kind]![String(cgroup.id)] = .current
        operations.append("link \(kind) \(cgroup.path)")
    }

    func removeLink(_ kind: Attachment, pin: String) throws {
        links[kind]![pin] = nil
        operations.append("unlink \(kind) \(pin)")
    }

    func updateLink(_ kind: Attachment, pin: String) throws {
        links[kind]![pin] = .current
        operations.append("update \(kind) \(pin)")
    }

    func presence(of path: FilePath, id: UInt64) -> CgroupPresence {
        if let code = unreadable[path] { return .unknown(errno: code) }
        return cgroups[path] == id ? .present : .gone
    }

    func bumpChangeSequence() throws { changeSequence += 1 }
}
