// SPDX-License-Identifier: MIT
import CLibBPF

/// A policy's rules as `struct ka_rule_set` holds them (bpf/keepalive_policy.h),
/// and back: each rule's values resolved against its policy for the BPF
/// program, with the options it gives itself kept for reading back.
enum RuleSetRecord {
    static func encode(_ rules: [Rule], under policy: Policy, slot: UInt32) -> ka_rule_set {
        var set = ka_rule_set()
        set.count = UInt32(rules.count)
        set.slot = slot
        set.unrestricted = rules.indices.reduce(0) { rules[$1].remote.isEmpty ? $0 | 1 << $1 : $0 }
        let bounds = RemoteBounds(rules)
        store(bounds.starts.map(\.encoded), into: &set.bounds)
        store(bounds.covered, into: &set.covered)
        store(rules.map { encode($0, under: policy) }, into: &set.rules)
        return set
    }

    static func rules(of set: ka_rule_set) -> [Rule] {
        load(ka_rule.self, count: min(Int(set.count), Int(KA_MAX_RULES)), from: set.rules).map(decode)
    }

    /// Elements into a C array (a tuple), from its start.
    private static func store<Element, Tuple>(_ elements: [Element], into tuple: inout Tuple) {
        withUnsafeMutableBytes(of: &tuple) { raw in
            for (index, element) in elements.enumerated() {
                raw.storeBytes(of: element, toByteOffset: index * MemoryLayout<Element>.stride, as: Element.self)
            }
        }
    }

    /// The first `count` elements of a C array (a tuple).
    private static func load<Element, Tuple>(_: Element.Type, count: Int, from tuple: Tuple) -> [Element] {
        withUnsafeBytes(of: tuple) { raw in
            (0..<count).map { raw.load(fromByteOffset: $0 * MemoryLayout<Element>.stride, as: Element.self) }
        }
    }

    private static func encode(_ rule: Rule, under policy: Policy) -> ka_rule {
        var record = ka_rule()
        let values = rule.values(under: policy)
        record.values = values.encodedValues
        record.flags = (rule.off ? KA_RULE_OFF : 0) | (values.derivesUserTimeout ? KA_RULE_USER_TIMEOUT_DERIVED : 0)
        record.given = rule.options.keys.reduce(0) { $0 | 1 << $1.bpfOption.rawValue }
        record.remote_count = UInt8(rule.remote.count)
        record.remote_port_count = UInt8(rule.remotePorts.count)
        record.local_port_count = UInt8(rule.localPorts.count)
        store(rule.remote.map(\.encoded), into: &record.remote)
        store(rule.remotePorts, into: &record.remote_ports)
        store(rule.localPorts, into: &record.local_ports)
        if let name = rule.name { store(Array(name.utf8), into: &record.name) }
        return record
    }

    private static func decode(_ record: ka_rule) -> Rule {
        var rule = Rule()
        var values = Policy()
        values.setValues(record.values, derivedUserTimeout: record.flags & KA_RULE_USER_TIMEOUT_DERIVED != 0)
        for option in PolicyOption.allCases where record.given & (1 << option.bpfOption.rawValue) != 0 {
            rule.options[option] = values[option]
        }
        rule.off = record.flags & KA_RULE_OFF != 0
        let cidrs = load(
            ka_cidr.self,
            count: min(Int(record.remote_count), Int(KA_RULE_MAX_REMOTES)),
            from: record.remote
        )
        rule.remote = cidrs.map { CIDR($0) }
        rule.remotePorts = load(
            UInt16.self,
            count: min(Int(record.remote_port_count), Int(KA_RULE_MAX_PORTS)),
            from: record.remote_ports
        )
        rule.localPorts = load(
            UInt16.self,
            count: min(Int(record.local_port_count), Int(KA_RULE_MAX_PORTS)),
            from: record.local_ports
        )
        let nameBytes = load(UInt8.self, count: Int(KA_RULE_NAME_MAX), from: record.name).prefix { $0 != 0 }
        rule.name = nameBytes.isEmpty ? nil : String(decoding: nameBytes, as: UTF8.self)
        return rule
    }
}

/// The intervals that the rules' CIDRs cut the address space into, each
/// covered by the same rules, as `ka_rule_set.bounds` and `.covered` hold
/// them: where each starts, ascending, padded to KA_RULE_BOUNDS by repeating
/// the last (the highest address, covered by none, when there is none).
struct RemoteBounds {
    private(set) var starts: [UInt128] = []
    /// Bit r: rule r's remote holds the interval.
    private(set) var covered: [UInt16] = []

    init(_ rules: [Rule]) {
        let blocks = rules.enumerated().flatMap { index, rule in rule.remote.map { (index, $0.addresses) } }
        // A block starts an interval, and the address after its last starts the next.
        let cuts = blocks.flatMap { _, range in
            [range.lowerBound] + (range.upperBound == .max ? [] : [range.upperBound + 1])
        }
        starts = Array(Set(cuts)).sorted()
        covered = starts.map { start in
            blocks.reduce(0) { bits, block in block.1.contains(start) ? bits | 1 << block.0 : bits }
        }
        let padding = Int(KA_RULE_BOUNDS) - starts.count
        starts += repeatElement(starts.last ?? .max, count: padding)
        covered += repeatElement(covered.last ?? 0, count: padding)
    }
}

extension UInt128 {
    /// As the BPF program compares addresses: high half, low half.
    var encoded: ka_address {
        ka_address(high: UInt64(truncatingIfNeeded: self >> 64), low: UInt64(truncatingIfNeeded: self))
    }
}
