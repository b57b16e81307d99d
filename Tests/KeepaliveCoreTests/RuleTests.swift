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

    @Test(arguments: ["10.0.0.0/", "10.0.0.0/-1", "10.0.0.0/+8", "10.0.0/8", "10.0.0.0/8/8", "fe80::1%eth0/64", "", "::/129"])
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
        let policy = Policy([.keepidle: 60, .keepcnt: 4], rules: [
            try Rule(parsing: "name=db,remote=192.0.2.0/24,remote=2001:db8::/32,remote_ports=5432,keepidle=5"),
            try Rule(parsing: "remote=127.0.0.0/8,keepalive=off"),
            try Rule(parsing: "local_ports=8443,local_ports=9443,user_timeout=7000"),
        ])
        let set = try #require(PolicyRecord(policy: policy, owner: .cli, path: "a", ruleSlot: 9).encodedRules)
        #expect(set.count == 3 && set.slot == 9)
        #expect(set.rules.0.values.keepidle == 5 && set.rules.0.values.keepcnt == 4)  // the policy's where the rule gives none
        #expect(set.rules.0.values.user_timeout == ka_derived_user_timeout(5, 15, 4))
        #expect(set.rules.0.flags & KA_RULE_USER_TIMEOUT_DERIVED != 0 && set.rules.1.flags & KA_RULE_OFF != 0)
        #expect(set.rules.2.values.user_timeout == 7000 && set.rules.2.local_port_count == 2)
        #expect(RuleSetRecord.rules(of: set) == policy.rules)
        let record = PolicyRecord(try PolicyRecord(policy: policy, owner: .cli, path: "a", ruleSlot: 9).encoded(),
                                  rules: (RuleSetRecord.rules(of: set), set.slot))
        #expect(record.policy == policy && record.ruleSlot == 9 && !record.rulesMissing)
        // The flag without the rules: a record whose rules are gone, said so.
        #expect(PolicyRecord(try PolicyRecord(policy: policy, owner: .cli, path: "a").encoded()).rulesMissing)
    }

    @Test func matchingIsFirstRuleWinsAsTheProgramTriesThem() throws {
        let rules = [try Rule(parsing: "remote=192.0.2.0/24,remote_ports=5432,keepidle=5"),
                     try Rule(parsing: "remote=192.0.2.0/24,keepalive=off"),
                     try Rule(parsing: "local_ports=8443,keepidle=30")]
        let first = { (remote: String, rport: UInt16, lport: UInt16) in
            rules.firstIndex { $0.matches(remote: Self.address(remote), remotePort: rport, localPort: lport) }
        }
        #expect(first("192.0.2.9", 5432, 40000) == 0)
        #expect(first("::ffff:192.0.2.9", 5432, 40000) == 0)
        #expect(first("192.0.2.9", 80, 40000) == 1)
        #expect(first("198.51.100.1", 40000, 8443) == 2)
        #expect(first("198.51.100.1", 40000, 80) == nil)
    }
}
