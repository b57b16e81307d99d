// SPDX-License-Identifier: MIT
import CLibBPF
import Testing

@testable import KeepaliveCore

/// Rules by destination: the blocks and the command line's form, and the
/// record the BPF program reads, there and back.
@Suite struct RuleTests {
    static func address(_ text: String) -> [UInt8] { CIDR.address(text)!.0 }

    @Test func blocksMatchIPv4AndItsV4MappedFormAlike() throws {
        let v4 = try CIDR(parsing: "192.0.2.0/24")
        #expect(v4.contains(Self.address("192.0.2.77")) && v4.contains(Self.address("::ffff:192.0.2.77")))
        #expect(!v4.contains(Self.address("192.0.3.1")) && !v4.contains(Self.address("2001:db8::1")))
        let v6 = try CIDR(parsing: "2001:db8::/32")
        #expect(v6.contains(Self.address("2001:db8:1::5")) && !v6.contains(Self.address("2001:db9::1")))
        #expect(try CIDR(parsing: "0.0.0.0/0").contains(Self.address("198.51.100.1")))
        #expect(try !CIDR(parsing: "0.0.0.0/0").contains(Self.address("2001:db8::1")))  // IPv4's all, not IPv6's
        #expect(try CIDR(parsing: "::/0").contains(Self.address("198.51.100.1")))  // every address, mapped ones too
        #expect(try CIDR(parsing: "198.51.100.7").description == "198.51.100.7/32")
        #expect(try CIDR(parsing: "::1").description == "::1/128")
    }

    @Test(arguments: [
        "10.0.0.0/", "10.0.0.0/-1", "10.0.0.0/+8", "10.0.0/8", "10.0.0.0/8/8", "fe80::1%eth0/64", "", "::/129",
    ])
    func refusesWhatIsNotABlock(text: String) {
        #expect(throws: RuleError.self) { try CIDR(parsing: text) }
    }

    @Test func theCommandLineFormReadsBackAsItsSummary() throws {
        let spec = "name=db,remote=10.20.0.0/16,remote=fd00:20::/32,remote_ports=5432,keepidle=5,user_timeout=20000"
        let rule = try Rule(parsing: spec)
        let again = try Rule(parsing: rule.summary)
        #expect(rule.summary == spec && again == rule)
        #expect(throws: RuleError("'10.0.0.0/8;keepidle=5': the prefix length must be 0..32")) {
            try Rule(parsing: "remote=10.0.0.0/8;keepidle=5")
        }
        #expect(throws: RuleError.self) { try Rule(parsing: "remote=10.0.0.0/8,,keepidle=5") }
        #expect(throws: RuleError.self) { try Rule(parsing: "keepidle=5") }  // matches nothing in particular
    }

    @Test func theRecordCarriesEachRulesResolvedValuesAndReadsBack() throws {
        let policy = Policy(
            [.keepidle: 60, .keepcnt: 4],
            rules: [
                try Rule(parsing: "name=db,remote=192.0.2.0/24,remote=2001:db8::/32,remote_ports=5432,keepidle=5"),
                try Rule(parsing: "remote=127.0.0.0/8,keepalive=off"),
                try Rule(parsing: "local_ports=8443,local_ports=9443,user_timeout=7000"),
            ]
        )
        let set = try #require(PolicyRecord(policy: policy, owner: .cli, path: "a", ruleSlot: 9).encodedRules)
        #expect(set.count == 3 && set.slot == 9)
        // The policy's where the rule gives none.
        #expect(set.rules.0.values.keepidle == 5 && set.rules.0.values.keepcnt == 4)
        #expect(set.rules.0.values.user_timeout == ka_derived_user_timeout(5, 15, 4))
        #expect(set.rules.0.flags & KA_RULE_USER_TIMEOUT_DERIVED != 0 && set.rules.1.flags & KA_RULE_OFF != 0)
        #expect(set.rules.2.values.user_timeout == 7000 && set.rules.2.local_port_count == 2)
        #expect(RuleSetRecord.rules(of: set) == policy.rules)
        let record = PolicyRecord(
            try PolicyRecord(policy: policy, owner: .cli, path: "a", ruleSlot: 9).encoded(),
            rules: (RuleSetRecord.rules(of: set), set.slot)
        )
        #expect(record.policy == policy && record.ruleSlot == 9 && !record.rulesMissing)
        // The flag without the rules: a record whose rules are gone, said so.
        #expect(PolicyRecord(try PolicyRecord(policy: policy, owner: .cli, path: "a").encoded()).rulesMissing)
    }

    @Test func matchingIsFirstRuleWinsAsTheProgramTriesThem() throws {
        let rules = [
            try Rule(parsing: "remote=192.0.2.0/24,remote_ports=5432,keepidle=5"),
            try Rule(parsing: "remote=192.0.2.0/24,keepalive=off"),
            try Rule(parsing: "local_ports=8443,keepidle=30"),
        ]
        let first = { (remote: String, rport: UInt16, lport: UInt16) in
            rules.firstIndex { $0.matches(remote: Self.address(remote), remotePort: rport, localPort: lport) }
        }
        #expect(first("192.0.2.9", 5432, 40000) == 0)
        #expect(first("::ffff:192.0.2.9", 5432, 40000) == 0)
        #expect(first("192.0.2.9", 80, 40000) == 1)
        #expect(first("198.51.100.1", 40000, 8443) == 2)
        #expect(first("198.51.100.1", 40000, 80) == nil)
    }

    /// The bounds the program searches say, for every address, which rules'
    /// remotes hold it: checked against each block's own test, at every
    /// block's edges and beyond, for nested, overlapping and disjoint blocks
    /// of both families, up to the most a record holds.
    @Test(arguments: 0..<40)
    func theBoundsHoldEveryAddressInTheRulesThatCoverIt(seed: UInt64) throws {
        var random = SplitMix(seed)
        let edges: [String] = [
            "0.0.0.0/0", "::/0", "::ffff:0:0/96", "255.255.255.255/32",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128", "::/128",
        ]
        let rules = try (0..<(seed == 0 ? 16 : 1 + random.below(16))).map { _ in
            let blocks = try (0..<(seed == 0 ? 8 : random.below(9))).map { _ -> CIDR in
                if random.below(8) == 0 { return try CIDR(parsing: edges[random.below(edges.count)]) }
                let v4 = random.below(3) > 0
                let prefix = v4 ? 8 + random.below(25) : 16 + random.below(113)
                let bytes = (0..<16).map { _ in UInt8(random.below(256)) }
                let mapped = [UInt8](repeating: 0, count: 10) + [0xff, 0xff] + bytes[12...]
                let width = v4 ? 96 + prefix : prefix
                return CIDR(network: CIDR.masked(v4 ? mapped : bytes, width), prefix: width, isIPv4: v4)
            }
            return Rule(remote: blocks, options: [.keepidle: 5])
        }
        let bounds = RemoteBounds(rules)
        #expect(bounds.starts.count == Int(KA_RULE_BOUNDS) && bounds.covered.count == Int(KA_RULE_BOUNDS))
        #expect(bounds.starts == bounds.starts.sorted())
        var probes: [UInt128] = [0, .max]
        for rule in rules {
            for block in rule.remote {
                let range = block.addresses
                probes += [
                    range.lowerBound, range.lowerBound &- 1, range.upperBound, range.upperBound &+ 1,
                    range.lowerBound + (range.upperBound - range.lowerBound) / 2,
                ]
            }
        }
        probes += (0..<200).map { _ in UInt128(random.next()) << 64 | UInt128(random.next()) }
        probes += (0..<200).map { _ in UInt128(0xffff) << 32 | UInt128(random.next() & 0xffff_ffff) }
        for address in probes {
            let bytes = (0..<16).map { UInt8(truncatingIfNeeded: address >> (120 - 8 * $0)) }
            let expected = rules.indices.reduce(UInt16(0)) { bits, index in
                rules[index].remote.contains { $0.contains(bytes) } ? bits | 1 << index : bits
            }
            #expect(Self.search(bounds, address) == expected, "address \(String(address, radix: 16))")
        }
    }

    /// The program's search (rules_covering in bpf/keepalive_common.bpf.h),
    /// step for step: the last bound at most the address.
    static func search(_ bounds: RemoteBounds, _ address: UInt128) -> UInt16 {
        guard bounds.starts[0] <= address else { return 0 }
        var at = 0
        var step = Int(KA_RULE_BOUNDS) / 2
        while step > 0 {
            if bounds.starts[at + step] <= address { at += step }
            step >>= 1
        }
        return bounds.covered[at]
    }
}

/// A seeded generator: the same cases on every run.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(_ seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
    mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }
}
