// SPDX-License-Identifier: MIT
import Testing

import struct SystemPackage.FilePath

@testable import KeepaliveCore

@Suite struct PolicyTests {
    @Test func defaultsAreTheSeeds() {
        let p = Policy()
        #expect(p.keepidle == 15 && p.keepintvl == 15 && p.keepcnt == 9 && p.userTimeout == -1)
        #expect(p.syncnt == 0 && p.maxseg == 0 && p.windowClamp == 0)
        #expect(p.effectiveUserTimeout == 150_000)
    }

    @Test func derivedUserTimeoutUsesValuesInForce() {
        #expect(Policy([.keepidle: 5, .keepintvl: 2, .keepcnt: 3]).effectiveUserTimeout == 11_000)
        // 0 leaves the kernel's default in force, and the derivation counts that default.
        #expect(Policy([.keepidle: 0, .keepintvl: 0, .keepcnt: 0]).effectiveUserTimeout == (7200 + 75 * 9) * 1000)
        #expect(Policy([.userTimeout: 0]).effectiveUserTimeout == 0)
        #expect(Policy([.userTimeout: 4500]).effectiveUserTimeout == 4500)
    }

    @Test func derivedUserTimeoutIsCappedAtIntMax() {
        let p = Policy([.keepidle: 32767, .keepintvl: 32767, .keepcnt: 127])
        #expect(p.effectiveUserTimeout == Int32.max)
    }

    @Test func recordRoundTripKeepsDerivation() throws {
        let derived = Policy([.keepidle: 30, .keepcnt: 3])
        let record = try PolicyRecord(policy: derived, owner: .agent, path: "pods/a", slot: 7).encoded()
        #expect(record.values.user_timeout == 75_000 && record.slot == 7)
        #expect(PolicyRecord(record) == PolicyRecord(policy: derived, owner: .agent, path: "pods/a", slot: 7))
        let explicit = Policy([.keepidle: 30, .keepcnt: 3, .userTimeout: 75_000])
        let roundTrip = { (policy: Policy) in
            try PolicyRecord(PolicyRecord(policy: policy, owner: .cli, path: "x").encoded()).policy
        }
        #expect(try roundTrip(explicit) == explicit)
        #expect(try roundTrip(explicit) != derived)
    }

    @Test func aRecordHoldsAPathOfUpTo511Bytes() throws {
        let fits = FilePath(String(repeating: "a", count: 511))
        #expect(try PolicyRecord(PolicyRecord(policy: Policy(), owner: .cli, path: fits).encoded()).path == fits)
        let long = PolicyRecord(policy: Policy(), owner: .cli, path: FilePath(String(repeating: "a", count: 512)))
        #expect(throws: PolicyError.self) { try long.encoded() }
    }

    @Test func summaryNamesValuesInForce() {
        #expect(Policy().summary == "keepidle=15 keepintvl=15 keepcnt=9 user_timeout=150000(derived)")
        #expect(Policy([.syncnt: 2, .userTimeout: 0]).summary.hasSuffix("user_timeout=0 syncnt=2"))
    }
}

@Suite struct PolicyOptionTests {
    @Test(arguments: [
        (PolicyOption.keepidle, "1", Int32(1)), (.keepidle, "32767", 32767), (.keepidle, "0", 0),
        (.keepintvl, "32767", 32767), (.keepcnt, "127", 127), (.userTimeout, "-1", -1),
        (.userTimeout, "2147483647", Int32.max), (.syncnt, "127", 127), (.maxseg, "88", 88),
        (.maxseg, "32767", 32767), (.windowClamp, "1", 1),
    ])
    func acceptsKernelRange(option: PolicyOption, text: String, value: Int32) throws {
        #expect(try option.parse(text) == value)
    }

    @Test(arguments: [
        (PolicyOption.keepidle, "32768"), (.keepidle, "-1"), (.keepintvl, "32768"), (.keepcnt, "128"),
        (.userTimeout, "-2"), (.userTimeout, "2147483648"), (.syncnt, "128"), (.maxseg, "87"),
        (.maxseg, "32768"), (.windowClamp, "-1"), (.keepidle, "99999999999999999999"),
    ])
    func rejectsOutOfRange(option: PolicyOption, text: String) {
        #expect(throws: PolicyError.self) { try option.parse(text) }
    }

    @Test(arguments: ["", "abc", "15x", " 15", "0x10", "1.5", "1e3"])
    func rejectsNonNumbers(text: String) {
        #expect(throws: PolicyError.notANumber(option: .keepidle, value: text)) {
            try PolicyOption.keepidle.parse(text)
        }
    }

    @Test func errorIsOneLineNamingOptionAndRange() {
        let error = PolicyError.outOfRange(option: .keepcnt, value: "128")
        #expect(error.description == "keepcnt: 128 is out of range (0 for the system default, or 1..127 count)")
        #expect(!error.description.contains("\n"))
    }

    @Test func namesComeFromTheSharedHeader() {
        #expect(
            PolicyOption.allCases.map(\.key) == [
                "keepidle", "keepintvl", "keepcnt", "user_timeout", "syncnt", "maxseg", "window_clamp",
            ]
        )
    }
}
