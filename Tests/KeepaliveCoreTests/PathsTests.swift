// SPDX-License-Identifier: MIT
import CLibBPF
import Testing

@testable import KeepaliveCore

/// A path's evidence, its bounds and the verdict on a policy's idle time,
/// from records as the BPF programs write them.
@Suite struct PathsTests {
    static func key(_ address: String, port: UInt16 = 5432, accepted: Bool = false, policy: UInt64 = 7) -> ka_path_key {
        var key = ka_path_key()
        key.policy_cgroup_id = policy
        withUnsafeMutableBytes(of: &key.remote_addr) { $0.copyBytes(from: CIDR.address(address)!.0) }
        key.port = port
        key.accepted = accepted ? 1 : 0
        return key
    }

    /// A record: survivals' longest and count, deaths as (gap ms, reset), the shortest first.
    static func record(survived: UInt32 = 0, survivals: UInt32 = 0, deaths: [(UInt32, Bool)] = []) -> ka_path {
        var record = ka_path()
        record.alive_max_ms = survived
        record.alive_count = survivals
        record.timeouts = UInt32(deaths.filter { !$0.1 }.count)
        record.resets = UInt32(deaths.filter { $0.1 }.count)
        withUnsafeMutableBytes(of: &record.deaths) { raw in
            for (index, death) in deaths.enumerated() {
                raw.storeBytes(
                    of: death.0 << 1 | (death.1 ? KA_PATH_DEATH_RESET : 0),
                    toByteOffset: index * 4,
                    as: UInt32.self
                )
            }
        }
        return record
    }

    @Test func boundsHoldTheLimitAndLeaveOutDeathsThatSurvivalsContradict() {
        let evidence = PathEvidence(Self.record(survived: 2200, survivals: 5, deaths: [(1300, true), (4500, false)]))
        #expect(
            evidence.deaths == [
                PathDeath(gapMilliseconds: 1300, reset: true), PathDeath(gapMilliseconds: 4500, reset: false),
            ]
        )
        let bounds = evidence.bounds
        #expect(bounds.survived == 2200 && bounds.died == PathDeath(gapMilliseconds: 4500, reset: false))
        #expect(bounds.notIdle == 1)  // died after 1.3 s, survived 2.2 s: a restart, not the path
        #expect(PathEvidence(Self.record()).bounds == PathBounds(survived: nil, died: nil, notIdle: 0))
        #expect(PathEvidence(Self.record(deaths: [(900, false)])).bounds.died?.gapMilliseconds == 900)
    }

    @Test(
        arguments: [
            // idle (s), survived, died -> verdict
            (2, 2100, 4500, PathVerdict.below),
            (5, 2100, 5200, .above(lowerBelow: 5200)),  // the probe of keepidle 5 came at 5.2 s: its own death
            (4, 2100, 4500, .above(lowerBelow: 4500)),  // 4 s probes may come at 4.5 s
            (3, 2100, 4500, .unknown),  // between the bounds
            (30, 2100, 0, .unknown),  // survivals only
            (1, 0, 4500, .unknown),  // deaths only: nothing says 1 s survives
        ] as [(Int32, UInt32, UInt32, PathVerdict)]
    )
    func verdictAllowsForLateProbes(idle: Int32, survived: UInt32, died: UInt32, verdict: PathVerdict) {
        let bounds = PathBounds(
            survived: survived == 0 ? nil : survived,
            died: died == 0 ? nil : PathDeath(gapMilliseconds: died, reset: false),
            notIdle: 0
        )
        #expect(PathVerdict(idleSeconds: idle, bounds: bounds) == verdict)
        #expect(PathVerdict(idleSeconds: nil, bounds: bounds) == .off)
    }

    @Test func prefixesMergeAndTheRuleInForceGivesTheIdleTime() throws {
        var policy = Policy([.keepidle: 300])
        policy.observation = .only
        policy.rules = [try Rule(parsing: "remote=10.20.0.0/16,remote_ports=5432,keepidle=20")]
        let observed = [
            (PathKey(Self.key("10.20.1.5")), PathEvidence(Self.record(survived: 30000, survivals: 2))),
            (
                PathKey(Self.key("10.20.9.9")),
                PathEvidence(Self.record(survived: 10000, survivals: 1, deaths: [(240000, false)]))
            ),
            (PathKey(Self.key("10.21.0.1")), PathEvidence(Self.record(deaths: [(240000, true)]))),
            (PathKey(Self.key("10.20.1.5", policy: 8)), PathEvidence(Self.record(survived: 1000, survivals: 1))),
        ]
        // Policy 8's path is not asked for.
        let each = PathReport.reports(observed, policies: [7: policy], systemKeepidle: 7200)
        #expect(each.map(\.key.display) == ["10.20.1.5:5432", "10.20.9.9:5432", "10.21.0.1:5432"])
        #expect(each.map(\.idleSeconds) == [20, 20, 300])
        #expect(each.map(\.verdict) == [.below, .unknown, .above(lowerBelow: 240000)])
        #expect(each[2].suggestedRule == "remote=10.21.0.1,remote_ports=5432,keepidle=120")
        let merged = PathReport.reports(observed, policies: [7: policy], ipv4Prefix: 16, systemKeepidle: 7200)
        #expect(merged.map(\.key.display) == ["10.20.0.0/16:5432", "10.21.0.0/16:5432"])
        #expect(merged[0].evidence.survivals == 3 && merged[0].bounds.survived == 30000)
        #expect(merged[0].bounds.died?.gapMilliseconds == 240000 && merged[0].verdict == .below)
    }

    @Test func acceptedConnectionsAreTheirLocalPortsAndIPv6IsBracketed() throws {
        var policy = Policy([.keepidle: 0])
        policy.rules = [try Rule(parsing: "local_ports=8080,keepalive=off")]
        let accepted = PathKey(Self.key("2001:db8::7", port: 8080, accepted: true))
        #expect(accepted.display == "[2001:db8::7] -> :8080")
        #expect(accepted.idleSeconds(under: policy, systemDefault: 7200) == nil)  // the rule leaves them alone
        let made = PathKey(Self.key("2001:db8::7", port: 8080))
        #expect(made.display == "[2001:db8::7]:8080" && made.idleSeconds(under: policy, systemDefault: 7200) == 7200)
        #expect(made.merged(ipv4Prefix: 24, ipv6Prefix: 64).display == "2001:db8::/64:8080")
    }

    @Test func theSuggestionIsBelowTheDeathsLateProbesIncluded() {
        func suggested(survived: UInt32?, died: UInt32) -> Int32? {
            let bounds = PathBounds(
                survived: survived,
                died: PathDeath(gapMilliseconds: died, reset: false),
                notIdle: 0
            )
            let report = PathReport(
                key: PathKey(Self.key("192.0.2.1")),
                evidence: PathEvidence(),
                bounds: bounds,
                idleSeconds: 300,
                verdict: PathVerdict(idleSeconds: 300, bounds: bounds)
            )
            return report.suggestedKeepidle
        }
        #expect(suggested(survived: nil, died: 240000) == 120)  // half the shortest death
        #expect(suggested(survived: 200000, died: 240000) == 200)  // what survived, when more
        #expect(suggested(survived: 2200, died: 4500) == 2)
        #expect(suggested(survived: 3900, died: 4000) == 3)  // 3.9 s probes could reach 4 s: 3 s
        #expect(suggested(survived: nil, died: 1100) == 1)  // never below a second
    }
}
