// SPDX-License-Identifier: MIT
import Testing

@testable import KeepaliveCore

@Suite struct AgentConfigTests {
    @Test func parsesTheDocumentedExample() throws {
        let text = """
            policies:
              - cgroup: system.slice/postgresql.service
                keepidle: 30
                keepintvl: 5
                keepcnt: 3
                user_timeout: 45000
              - cgroup: "kubepods.slice/*"
                keepidle: 60
              - unit: nginx.service
                keepidle: 20
                precedence: policy
            """
        let config = try AgentConfig.parse(text, file: "k.yaml")
        #expect(
            config.policies.map(\.target) == [
                .cgroup("system.slice/postgresql.service"), .cgroup("kubepods.slice/*"), .unit("nginx.service"),
            ]
        )
        #expect(config.policies[0].policy == Policy([.keepidle: 30, .keepintvl: 5, .keepcnt: 3, .userTimeout: 45000]))
        #expect(config.policies[1].policy == Policy([.keepidle: 60]))
        #expect(config.policies[2].policy.precedence == .policy)
        #expect(config.policies.map(\.source) == ["k.yaml:2", "k.yaml:7", "k.yaml:9"])
    }

    @Test func readsWhatAPolicyObserves() throws {
        let text = """
            policies:
              - cgroup: a
                observe: true
                keepidle: 300
              - cgroup: b
                observe_paths: true
              - cgroup: c
                observe_paths: false
              - cgroup: d
                observe: true
                observe_paths: false
            """
        let policies = try AgentConfig.parse(text, file: "k.yaml").policies.map(\.policy)
        #expect(policies.map(\.observation) == [.only, .paths, .none, .only])  // observing only observes paths
        #expect(policies[0].keepidle == 300 && policies[0].summary.hasSuffix(" observe"))
        #expect(policies[1].summary.hasSuffix(" observe_paths") && !policies[2].summary.contains("observe"))
    }

    @Test func parsesPodsContainersAndRuntimes() throws {
        let text = """
            runtime:
              cri: unix:///run/containerd/containerd.sock
              docker: /run/podman/podman.sock
            policies:
              - pods:
                  namespace: "shop"
                  labels: { tier: db }
                  expressions: [ { key: env, operator: In, values: [prod, staging] }, { key: canary, operator: DoesNotExist } ]
                annotations: ignore
                keepidle: 30
              - containers:
                  name: "redis-*"
                  labels: { com.example.team: cache }
                keepidle: 60
              - pods:
            """
        let config = try AgentConfig.parse(text, file: "k.yaml")
        #expect(
            config.runtimeEndpoints == [
                .cri: try RuntimeEndpoint(parsing: "/run/containerd/containerd.sock"),
                .docker: try RuntimeEndpoint(parsing: "unix:///run/podman/podman.sock"),
            ]
        )
        #expect(
            config.policies.map(\.target) == [
                .pods(
                    PodSelector(
                        namespace: "shop",
                        labels: LabelSelector(
                            matchLabels: ["tier": "db"],
                            expressions: [
                                .init(key: "env", operator: .in, values: ["prod", "staging"]),
                                .init(key: "canary", operator: .doesNotExist),
                            ]
                        )
                    )
                ),
                .containers(
                    ContainerSelector(
                        name: "redis-*",
                        labels: LabelSelector(matchLabels: ["com.example.team": "cache"])
                    )
                ),
                .pods(PodSelector()),
            ]
        )
        #expect(config.policies.map(\.annotations) == [.ignore, .allow, .allow])
        #expect(config.policies.map(\.policy.keepidle) == [30, 60, 15])
    }

    @Test func parsesRulesInOrderWithListsOrSingleValues() throws {
        let config = try AgentConfig.parse(
            """
            policies:
              - unit: app.service
                keepidle: 60
                rules:
                  - remote: ["10.20.0.0/16", "fd00:20::/32"]
                    remote_ports: [5432, 6432]
                    keepidle: 5
                    user_timeout: 20000
                  - name: loopback
                    remote: 127.0.0.0/8
                    keepalive: off
                  - local_ports: 8443
                    keepidle: 30
            """,
            file: "f"
        )
        let policy = config.policies[0].policy
        #expect(policy.keepidle == 60 && policy.rules.count == 3)
        #expect(policy.rules[0].remote.map(\.description) == ["10.20.0.0/16", "fd00:20::/32"])
        #expect(
            policy.rules[0].remotePorts == [5432, 6432]
                && policy.rules[0].options == [.keepidle: 5, .userTimeout: 20000]
        )
        #expect(policy.rules[1].name == "loopback" && policy.rules[1].off)
        #expect(policy.rules[2].localPorts == [8443])
        // A rule's values: its own, else the entry's; the user timeout derived from the rule's own.
        let values = policy.rules[2].values(under: policy)
        #expect(values.keepidle == 30 && values.keepintvl == policy.keepintvl && values.effectiveUserTimeout == 165_000)
    }

    @Test(arguments: [
        ("rules: x", "'rules' must be a list of rules"),
        ("rules: [x]", "rule 1: a rule must be a mapping"),
        ("rules: [ { keepidle: 5 } ]", "rule 1: a rule needs remote, remote_ports or local_ports"),
        ("rules: [ { remote: 10.0.0.0/33 } ]", "rule 1: '10.0.0.0/33': the prefix length must be 0..32"),
        ("rules: [ { remote: 10.0.0.1/8 } ]", "has host bits set (the block is 10.0.0.0/8)"),
        ("rules: [ { remote: 2001:db8::/129 } ]", "the prefix length must be 0..128"),
        ("rules: [ { remote: [10.0.0.0/8], remote_ports: [0] } ]", "remote_ports: '0' is not a port (1..65535)"),
        ("rules: [ { local_ports: [65536] } ]", "local_ports: '65536' is not a port"),
        ("rules: [ { name: db, remote: 10.0.0.0/8, keepcnt: 500 } ]", "rule 1 (db): keepcnt: 500 is out of range"),
        ("rules: [ { remote: 10.0.0.0/8, keepalive: on } ]", "keepalive: only 'off'"),
        ("rules: [ { remote: 10.0.0.0/8, keepalive: off, keepidle: 5 } ]", "keepalive=off takes no values"),
        ("rules: [ { remote: 10.0.0.0/8, keepidel: 5 } ]", "unknown key 'keepidel'"),
        (
            "rules: [ { remote: 10.0.0.0/8, keepidle: 0 } ]",
            "keepidle: 0 is for policies; a rule gives a value (1..32767)"
        ),
        (
            "rules: [ { name: a, remote: 10.0.0.0/8 }, { name: a, remote: 10.1.0.0/16 } ]",
            "rule 2 (a): the name is taken"
        ),
        ("rules: [ { name: '7', remote: 10.0.0.0/8 } ]", "must not be a number"),
        (
            "rules: [" + Array(repeating: "{ remote_ports: 1 }", count: 17).joined(separator: ", ") + "]",
            "17 rules: a policy holds at most 16"
        ),
        (
            "rules: [ { remote: [" + (1...9).map { "10.0.\($0).0/24" }.joined(separator: ", ") + "] } ]",
            "at most 8 CIDRs"
        ),
    ])
    func rejectsABadRuleNamingIt(rules: String, problem: String) {
        do {
            _ = try AgentConfig.parse("policies:\n  - cgroup: x\n    \(rules)\n", file: "bad.yaml")
            Issue.record("accepted: \(rules)")
        } catch {
            #expect(error.description.hasPrefix("bad.yaml:3: ") && error.description.contains(problem), "\(error)")
            #expect(!error.description.contains("\n"))
        }
    }

    @Test func emptyFilesHaveNoPolicies() throws {
        #expect(try AgentConfig.parse("", file: "f").policies.isEmpty)
        #expect(try AgentConfig.parse("policies: []\n", file: "f").policies.isEmpty)
        #expect(try AgentConfig.parse("policies:\n", file: "f").policies.isEmpty)
    }

    @Test(arguments: [
        ("policies:\n  - cgroup: [unclosed\n", 2, "flow sequence"),
        ("policies:\n  - cgroup: x\n    keepidel: 5\n", 3, "unknown key 'keepidel'"),
        ("policies:\n  - cgroup: x\n    keepcnt: 500\n", 3, "keepcnt: 500 is out of range"),
        ("policies:\n  - cgroup: x\n    keepidle: fast\n", 3, "'keepidle' must be a whole number"),
        ("policies:\n  - cgroup: x\n    keepidle: \"30\"\n", 3, "'keepidle' must be a whole number"),
        ("policies:\n  - cgroup: x\n    keepidle: [1]\n", 3, "'keepidle' must be a whole number"),
        ("policies:\n  cgroup: x\n", 2, "must be a list of mappings"),
        ("policies:\n  - keepidle: 5\n", 2, "needs one of 'cgroup', 'unit', 'pods' or 'containers'"),
        (
            "policies:\n  - cgroup: x\n    unit: y.service\n", 3,
            "give one of 'cgroup', 'unit', 'pods' or 'containers', once"
        ),
        ("policies:\n  - pods: { namspace: x }\n", 2, "unknown key 'namspace' in 'pods'"),
        ("policies:\n  - pods: [x]\n", 2, "'pods' must be a mapping"),
        ("policies:\n  - pods: { labels: [a] }\n", 2, "'pods.labels' must be a mapping"),
        ("policies:\n  - containers: { namespace: x }\n", 2, "unknown key 'namespace' in 'containers'"),
        ("policies:\n  - pods:\n      expressions: [ { key: a, operator: In } ]\n", 3, "In needs a non-empty 'values'"),
        (
            "policies:\n  - pods:\n      expressions: [ { key: a, operator: Exists, values: [b] } ]\n", 3,
            "Exists takes no 'values'"
        ),
        (
            "policies:\n  - pods:\n      expressions: [ { key: a, operator: Like } ]\n", 3,
            "'operator' must be one of In, NotIn, Exists, DoesNotExist"
        ),
        ("policies:\n  - pods:\n      expressions: [ { operator: Exists } ]\n", 3, "needs 'key' and 'operator'"),
        ("policies:\n  - pods: {}\n    annotations: maybe\n", 3, "'annotations' must be 'allow' or 'ignore'"),
        ("policies:\n  - cgroup: x\n    annotations: allow\n", 3, "applies to 'pods' entries only"),
        ("runtime:\n  cri: tcp://1.2.3.4:5\n", 2, "runtime endpoint 'tcp://1.2.3.4:5' is not a unix socket"),
        ("runtime:\n  rkt: /x\n", 2, "unknown runtime 'rkt'"),
        ("policies:\n  - cgroup: a/../b\n", 2, "must not contain '..'"),
        ("policies:\n  - unit: a/b.service\n", 2, "a unit name, not a path"),
        ("policies:\n  - cgroup: x\n    precedence: sometimes\n", 3, "neither 'application' nor 'policy'"),
        ("policies:\n  - cgroup: x\n    observe: yes\n", 3, "'observe' must be true or false"),
        ("policies:\n  - cgroup: x\n    observe_paths: 1\n", 3, "'observe_paths' must be true or false"),
        ("policy:\n  - cgroup: x\n", 1, "unknown key 'policy'"),
        ("- cgroup: x\n", 1, "expected a mapping"),
    ])
    func rejectsWithFileLineAndProblem(text: String, line: Int, problem: String) {
        do {
            _ = try AgentConfig.parse(text, file: "bad.yaml")
            Issue.record("accepted: \(text)")
        } catch {
            #expect(error.file == "bad.yaml" && error.line == line, "\(error)")
            #expect(error.description.hasPrefix("bad.yaml:\(line): "))
            #expect(error.description.contains(problem), "\(error)")
            #expect(!error.description.contains("\n"))
        }
    }
}
