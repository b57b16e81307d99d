// SPDX-License-Identifier: MIT
import KeepaliveCore
import Testing

@testable import KeepaliveRuntime

/// Which entry a pod or container falls under: Kubernetes' label-selector
/// semantics, globs, the last entry winning, annotations within what it allows.
@Suite struct WorkloadMatchingTests {
    func pod(
        _ namespace: String,
        _ name: String,
        labels: [String: String] = [:],
        annotations: [String: String] = [:]
    ) -> PodInfo {
        PodInfo(sandboxID: "s", uid: "u", namespace: namespace, name: name, labels: labels, annotations: annotations)
    }

    func config(_ text: String) throws -> AgentConfig { try AgentConfig.parse(text, file: "t.yaml") }

    @Test func labelSelectorsAsKubernetesEvaluatesThem() {
        let requirement = { (op: LabelSelector.Requirement.Operator, values: Set<String>) in
            LabelSelector(expressions: [.init(key: "env", operator: op, values: values)])
        }
        let prod = ["env": "prod"]
        let none: [String: String] = [:]
        #expect(requirement(.in, ["prod", "qa"]).matches(prod) && !requirement(.in, ["qa"]).matches(prod))
        #expect(!requirement(.in, ["prod"]).matches(none))
        #expect(!requirement(.notIn, ["prod"]).matches(prod) && requirement(.notIn, ["prod"]).matches(none))
        #expect(requirement(.exists, []).matches(prod) && !requirement(.exists, []).matches(none))
        #expect(!requirement(.doesNotExist, []).matches(prod) && requirement(.doesNotExist, []).matches(none))
        let both = LabelSelector(matchLabels: ["tier": "db"], expressions: [.init(key: "env", operator: .exists)])
        #expect(both.matches(["tier": "db", "env": "x"]) && !both.matches(["tier": "db"]) && !both.matches(prod))
        #expect(LabelSelector().matches(none))
    }

    @Test func theLastEntryThatSelectsAPodWins() throws {
        let file = try config(
            """
            policies:
              - pods: { namespace: "shop*" }
                keepidle: 10
              - pods: { labels: { tier: db } }
                keepidle: 20
              - cgroup: "kubepods/*"
                keepidle: 30
            """
        )
        #expect(file.entry(for: pod("shop", "db-0", labels: ["tier": "db"]))?.spec == 1)
        #expect(file.entry(for: pod("shop-eu", "web"))?.policy.keepidle == 10)
        #expect(file.entry(for: pod("other", "web")) == nil)
    }

    @Test func annotationsReplaceOnlyTheirOwnValues() throws {
        let file = try config(
            """
            policies:
              - pods: {}
                keepidle: 30
                keepintvl: 5
              - pods: { namespace: strict }
                annotations: ignore
                keepidle: 40
            """
        )
        let chosen = file.entry(
            for: pod(
                "a",
                "b",
                annotations: [
                    "keepalive.dev/keepidle": "7", "keepalive.dev/user-timeout": "9000",
                    "keepalive.dev/precedence": "policy",
                    "keepalive.dev/keepcnt": "1000", "keepalive.dev/typo": "1", "other.io/keepidle": "1",
                ]
            )
        )
        #expect(chosen?.policy == Policy([.keepidle: 7, .keepintvl: 5, .userTimeout: 9000], precedence: .policy))
        #expect(chosen?.problems.map(\.key) == ["keepalive.dev/keepcnt", "keepalive.dev/typo"])
        #expect(
            chosen?.problems.first?.description
                == "annotation keepalive.dev/keepcnt=\"1000\" ignored: 1000 is out of range (0 for the system default, or 1..127 count)"
        )
        #expect(file.entry(for: pod("a", "b", annotations: ["keepalive.dev/enabled": "false"])) == nil)
        #expect(file.entry(for: pod("a", "b", annotations: ["keepalive.dev/enabled": "true"]))?.policy.keepidle == 30)
        #expect(file.entry(for: pod("a", "b", annotations: ["keepalive.dev/enabled": "no"]))?.problems.count == 1)
        let strict = file.entry(
            for: pod(
                "strict",
                "b",
                annotations: [
                    "keepalive.dev/keepidle": "7",
                    "keepalive.dev/enabled": "false",
                ]
            )
        )
        #expect(strict?.policy.keepidle == 40 && strict?.problems == [])
    }

    @Test func containersByNameGlobAndLabels() throws {
        let file = try config(
            """
            policies:
              - containers: { name: "redis-*", labels: { com.example.team: cache } }
                keepidle: 60
            """
        )
        let container = { (name: String, team: String) in
            ContainerInfo(
                id: "i",
                name: name,
                labels: ["com.example.team": team],
                podNamespace: nil,
                podName: nil,
                source: ""
            )
        }
        #expect(file.entry(for: container("redis-1", "cache"))?.policy.keepidle == 60)
        #expect(file.entry(for: container("redis-1", "db")) == nil)
        #expect(file.entry(for: container("memcached", "cache")) == nil)
        #expect(file.runtimesNeeded == [.cri, .docker])
        #expect(try config("policies:\n  - pods: {}\n").runtimesNeeded == [.cri])
        #expect(try config("policies:\n  - cgroup: x\n").runtimesNeeded == [])
    }
}
