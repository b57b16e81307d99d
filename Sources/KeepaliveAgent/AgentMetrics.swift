// SPDX-License-Identifier: MIT
import KeepaliveCore
import Prometheus
import Synchronization

/// The agent's metrics, in a swift-prometheus registry so that every family
/// has its # HELP (swift-metrics' API has no place for help text). What the
/// kernel keeps (policies, sockets configured, connections reaped,
/// setsockopt errors) is read from the pinned maps at every scrape, never
/// from a cache.
final class AgentMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    private let reloadSuccess, reloadFailure: Counter
    private let ready, failingCgroups, unwatchedDirectories, agentPolicies, policies, kernelMemory: Gauge
    /// The per-cgroup and per-option series the kernel's maps had at the last
    /// scrape, so that series of removed policies go away.
    private let kernelSeries = Mutex<[String: Counter]>([:])
    /// The path gauges of the last scrape, likewise.
    private let pathSeries = Mutex<[String: Gauge]>([:])
    /// Paths exported: the ones with the most evidence, so that the series stay bounded.
    static let pathsShown = 50

    /// Every family: its name's parts, unit and help, in one place.
    private enum Family {
        static func named(_ subsystem: String?, _ name: String, _ unit: String, _ help: String) -> MetricNameDescriptor
        {
            MetricNameDescriptor(
                namespace: "keepalive",
                subsystem: subsystem,
                metricName: name,
                unitName: unit,
                helpText: help
            )
        }
        static var socketsConfigured: MetricNameDescriptor {
            named(
                nil,
                "sockets_configured",
                "total",
                "Sockets the policy of this cgroup configured (BPF program), since the policy was set."
            )
        }
        static var deadConnections: MetricNameDescriptor {
            named(
                nil,
                "dead_connections",
                "total",
                "Connections of this cgroup's policy subtree the kernel ended because the peer stopped answering, by reason: keepalive (idle, probes unanswered) or user_timeout (data unacknowledged), since the policy was set."
            )
        }
        static var ruleSocketsMatched: MetricNameDescriptor {
            named(
                "rule",
                "sockets_matched",
                "total",
                "Sockets a rule of this cgroup's policy matched (the rule by its name, else its number): configured with its values, or left alone by keepalive: off; since the policy was set."
            )
        }
        static var ruleDeadConnections: MetricNameDescriptor {
            named(
                "rule",
                "dead_connections",
                "total",
                "Connections a rule of this cgroup's policy covered that the kernel ended because the peer stopped answering, by reason, since the policy was set."
            )
        }
        static var setsockoptErrors: MetricNameDescriptor {
            named(
                nil,
                "setsockopt_errors",
                "total",
                "bpf_setsockopt calls that failed, by option, since the pinned state was made."
            )
        }
        static var policies: MetricNameDescriptor {
            named(nil, "policies", "", "Policies in force (set by the agent or the CLI), read from the kernel.")
        }
        static var kernelMemory: MetricNameDescriptor {
            named(
                nil,
                "kernel_memory",
                "bytes",
                "Kernel memory the pinned state's maps take (policies, rules, counters, events), by the kernel's account of each map."
            )
        }
        static var reloads: MetricNameDescriptor {
            named(nil, "reloads", "total", "Reloads of the policy file (SIGHUP), by result.")
        }
        static var ready: MetricNameDescriptor {
            named(
                "agent",
                "ready",
                "",
                "1 once the agent's first enforcement pass is done and its last pass succeeded, else 0."
            )
        }
        static var failingCgroups: MetricNameDescriptor {
            named(
                "agent",
                "failing_cgroups",
                "",
                "Cgroups the policy file selects whose policy could not be put in force (retried)."
            )
        }
        static var unwatchedDirectories: MetricNameDescriptor {
            named(
                "agent",
                "unwatched_directories",
                "",
                "Cgroup directories left unwatched by the inotify limit (covered by the periodic rescan)."
            )
        }
        static var selectedCgroups: MetricNameDescriptor {
            named("agent", "selected_cgroups", "", "Cgroups the agent's policy file selects now.")
        }
        static var runtimeUp: MetricNameDescriptor {
            named(
                nil,
                "runtime_up",
                "",
                "1 while the container runtime answers (CRI, or the Docker-compatible API), else 0; asked every 10 s."
            )
        }
        static var problems: MetricNameDescriptor {
            named(
                "agent",
                "problems",
                "total",
                "Problems the agent logged, by kind, each time one appeared or changed (a problem that lasts is counted once)."
            )
        }
        static var buildInfo: MetricNameDescriptor {
            named(nil, "build_info", "", "Always 1; the labels say which keepalive this is.")
        }
        static var pathSurvived: MetricNameDescriptor {
            named(
                "path",
                "survived_idle",
                "seconds",
                "The longest idle gap connections of this cgroup's policy to this path survived (policies that observe paths; the \(AgentMetrics.pathsShown) paths with the most evidence)."
            )
        }
        static var pathDied: MetricNameDescriptor {
            named(
                "path",
                "died_idle",
                "seconds",
                "The shortest idle gap above the longest survived that connections to this path died after: the path's idle limit is at most this (same paths)."
            )
        }
        static var pathBelowLimit: MetricNameDescriptor {
            named(
                "path",
                "below_limit",
                "",
                "1 if the policy's idle time is below this path's observed idle limit, 0 if above it; absent while the evidence does not tell (same paths)."
            )
        }
        static var kernelFeature: MetricNameDescriptor {
            named(
                nil,
                "kernel_feature",
                "",
                "1 if this kernel gives the feature, else 0 (probed at start; docs/kernels.md says what each needs)."
            )
        }
    }

    init() {
        reloadSuccess = registry.makeCounter(descriptor: Family.reloads, labels: [("result", "success")])
        reloadFailure = registry.makeCounter(descriptor: Family.reloads, labels: [("result", "failure")])
        ready = registry.makeGauge(descriptor: Family.ready)
        failingCgroups = registry.makeGauge(descriptor: Family.failingCgroups)
        unwatchedDirectories = registry.makeGauge(descriptor: Family.unwatchedDirectories)
        agentPolicies = registry.makeGauge(descriptor: Family.selectedCgroups)
        policies = registry.makeGauge(descriptor: Family.policies)
        kernelMemory = registry.makeGauge(descriptor: Family.kernelMemory)
        registry.makeGauge(descriptor: Family.buildInfo, labels: [("version", KeepaliveVersion.string)]).set(Int64(1))
    }

    /// What the kernel gives, once probed.
    func setKernelFeatures(_ features: KernelFeatures) {
        for feature in KernelFeatures.Feature.allCases {
            registry.makeGauge(descriptor: Family.kernelFeature, labels: [("feature", feature.key)])
                .set(Int64(features.has(feature) ? 1 : 0))
        }
    }

    func recordReload(success: Bool) {
        (success ? reloadSuccess : reloadFailure).increment()
    }

    func recordProblem(_ kind: String) {
        registry.makeCounter(descriptor: Family.problems, labels: [("kind", kind)]).increment()
    }

    func setFailingCgroups(_ count: Int) { failingCgroups.set(Int64(count)) }
    func setUnwatchedDirectories(_ count: Int) { unwatchedDirectories.set(Int64(count)) }
    func setPolicies(_ count: Int) { agentPolicies.set(Int64(count)) }

    func setRuntimeUp(_ runtime: String, _ up: Bool) {
        registry.makeGauge(descriptor: Family.runtimeUp, labels: [("runtime", runtime)]).set(Int64(up ? 1 : 0))
    }

    /// Reads the kernel's values, then renders the Prometheus text format. A
    /// read that fails throws: no figure is shown that was not read.
    func render(_ state: PinnedState, health: Health) throws -> [UInt8] {
        ready.set(Int64(health.isReady && health.notAliveReason == nil ? 1 : 0))
        let snapshot = try state.snapshot()
        var values: [(family: MetricNameDescriptor, labels: [(String, String)], value: UInt64)] = []
        for (id, record, counters) in snapshot.policies {
            // kube-state-metrics' label names, where the policy was set for a pod or container.
            let workload = [
                ("namespace", record.origin.namespace), ("pod", record.origin.pod),
                ("container", record.origin.container),
            ].compactMap { name, value in value.map { (name, $0) } }
            let labels = [("cgroup", record.path.cgroupDisplay)] + workload
            values.append((Family.socketsConfigured, labels, counters.configured))
            for reason in ReapedReason.counted {
                let count = reason == .keepalive ? counters.reapedKeepalive : counters.reapedUserTimeout
                values.append((Family.deadConnections, labels + [("reason", reason.key)], count))
            }
            for (index, counters) in (snapshot.ruleCounters[id] ?? []).enumerated() {
                let labels = labels + [("rule", Rule.label(record.policy.rules, index))]
                values.append((Family.ruleSocketsMatched, labels, counters.configured))
                for reason in ReapedReason.counted {
                    let count = reason == .keepalive ? counters.reapedKeepalive : counters.reapedUserTimeout
                    values.append((Family.ruleDeadConnections, labels + [("reason", reason.key)], count))
                }
            }
        }
        for (option, count) in snapshot.setsockoptErrors {
            values.append((Family.setsockoptErrors, [("option", option)], count))
        }
        kernelSeries.withLock { series in
            Self.refresh(
                &series,
                to: values,
                make: { registry.makeCounter(descriptor: $0, labels: $1) },
                set: { counter, value in
                    counter.reset()
                    counter.increment(by: Int64(clamping: value))
                },
                unregister: registry.unregisterCounter
            )
            policies.set(Int64(snapshot.policies.count))
            kernelMemory.set(Int64(clamping: snapshot.kernelMemory))
        }
        setPaths(snapshot)
        return registry.emitToBuffer()
    }

    /// The bounds and verdicts of the paths with the most evidence.
    private func setPaths(_ snapshot: PinnedState.Snapshot) {
        let cgroups = Dictionary(uniqueKeysWithValues: snapshot.policies.map { ($0.id, $0.record.path.cgroupDisplay) })
        let shown = snapshot.paths.sorted {
            $0.evidence.survivals + $0.evidence.timeouts + $0.evidence.resets
                > $1.evidence.survivals + $1.evidence.timeouts + $1.evidence.resets
        }.prefix(Self.pathsShown)
        var values: [(family: MetricNameDescriptor, labels: [(String, String)], value: Double)] = []
        for report in shown {
            let labels = [("cgroup", cgroups[report.key.policyCgroupID] ?? ""), ("path", report.key.display)]
            if let survived = report.bounds.survived {
                values.append((Family.pathSurvived, labels, Double(survived) / 1000))
            }
            if let died = report.bounds.died {
                values.append((Family.pathDied, labels, Double(died.gapMilliseconds) / 1000))
            }
            switch report.verdict {
            case .below: values.append((Family.pathBelowLimit, labels, 1))
            case .above: values.append((Family.pathBelowLimit, labels, 0))
            case .unknown, .off: break
            }
        }
        pathSeries.withLock { series in
            Self.refresh(
                &series,
                to: values,
                make: { registry.makeGauge(descriptor: $0, labels: $1) },
                set: { $0.set($1) },
                unregister: registry.unregisterGauge
            )
        }
    }

    /// Brings one kind of series to `values`: each made where new and set;
    /// those of the last scrape not among them (a policy or path gone) unregistered.
    private static func refresh<Metric, Value>(
        _ series: inout [String: Metric],
        to values: [(family: MetricNameDescriptor, labels: [(String, String)], value: Value)],
        make: (MetricNameDescriptor, [(String, String)]) -> Metric,
        set: (Metric, Value) -> Void,
        unregister: (Metric) -> Void
    ) {
        var seen: Set<String> = []
        for value in values {
            let key = value.family.name + "\u{0}" + value.labels.map { "\($0.0)=\($0.1)" }.joined(separator: "\u{0}")
            seen.insert(key)
            let metric = series[key] ?? make(value.family, value.labels)
            series[key] = metric
            set(metric, value.value)
        }
        for (key, metric) in series where !seen.contains(key) {
            unregister(metric)
            series[key] = nil
        }
    }
}
