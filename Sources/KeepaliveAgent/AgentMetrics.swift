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
    private let ready, failingCgroups, unwatchedDirectories, agentPolicies, policies: Gauge
    /// The per-cgroup and per-option series the kernel's maps had at the last
    /// scrape, so that series of removed policies go away.
    private let kernelSeries = Mutex<[String: Counter]>([:])

    private enum Help {
        static let socketsConfigured = "Sockets the policy of this cgroup configured (BPF program), since the policy was set."
        static let deadConnections = "Connections of this cgroup's policy subtree the kernel ended because the peer stopped answering, by reason: keepalive (idle, probes unanswered) or user_timeout (data unacknowledged), since the policy was set."
        static let setsockoptErrors = "bpf_setsockopt calls that failed, by option, since the pinned state was made."
        static let policies = "Policies in force (set by the agent or the CLI), read from the kernel."
    }

    init() {
        reloadSuccess = registry.makeCounter(name: "keepalive_reloads_total", labels: [("result", "success")],
                                             help: "Reloads of the policy file (SIGHUP), by result.")
        reloadFailure = registry.makeCounter(name: "keepalive_reloads_total", labels: [("result", "failure")],
                                             help: "Reloads of the policy file (SIGHUP), by result.")
        ready = registry.makeGauge(name: "keepalive_agent_ready",
                                   help: "1 once the agent's first enforcement pass is done and its last pass succeeded, else 0.")
        failingCgroups = registry.makeGauge(name: "keepalive_agent_failing_cgroups",
                                            help: "Cgroups the policy file selects whose policy could not be put in force (retried).")
        unwatchedDirectories = registry.makeGauge(name: "keepalive_agent_unwatched_directories",
                                                  help: "Cgroup directories left unwatched by the inotify limit (covered by the periodic rescan).")
        agentPolicies = registry.makeGauge(name: "keepalive_agent_selected_cgroups",
                                           help: "Cgroups the agent's policy file selects now.")
        policies = registry.makeGauge(name: "keepalive_policies", help: Help.policies)
        registry.makeGauge(name: "keepalive_build_info", labels: [("version", KeepaliveVersion.string)],
                           help: "Always 1; the labels say which keepalive this is.").set(Int64(1))
    }

    func recordReload(success: Bool) {
        (success ? reloadSuccess : reloadFailure).increment()
    }

    func setFailingCgroups(_ count: Int) { failingCgroups.set(Int64(count)) }
    func setUnwatchedDirectories(_ count: Int) { unwatchedDirectories.set(Int64(count)) }
    func setPolicies(_ count: Int) { agentPolicies.set(Int64(count)) }

    /// Reads the kernel's values, then renders the Prometheus text format.
    func render(_ state: PinnedState, health: Health) -> [UInt8] {
        ready.set(Int64(health.isReady && health.notAliveReason == nil ? 1 : 0))
        let snapshot = state.snapshot()
        var values: [(name: String, labels: [(String, String)], help: String, value: UInt64)] = []
        for (_, record, counters) in snapshot.policies {
            let cgroup = record.path.cgroupDisplay
            values.append(("keepalive_sockets_configured_total", [("cgroup", cgroup)], Help.socketsConfigured, counters.configured))
            for reason in ReapedReason.allCases {
                let count = reason == .keepalive ? counters.reapedKeepalive : counters.reapedUserTimeout
                values.append(("keepalive_dead_connections_total", [("cgroup", cgroup), ("reason", reason.key)],
                               Help.deadConnections, count))
            }
        }
        for (option, count) in snapshot.setsockoptErrors {
            values.append(("keepalive_setsockopt_errors_total", [("option", option)], Help.setsockoptErrors, count))
        }
        kernelSeries.withLock { series in
            var seen: Set<String> = []
            for value in values {
                let key = value.name + "\u{0}" + value.labels.map { "\($0.0)=\($0.1)" }.joined(separator: "\u{0}")
                seen.insert(key)
                let counter = series[key] ?? registry.makeCounter(name: value.name, labels: value.labels, help: value.help)
                series[key] = counter
                counter.reset()
                counter.increment(by: Int64(clamping: value.value))
            }
            for (key, counter) in series where !seen.contains(key) {
                registry.unregisterCounter(counter)
                series[key] = nil
            }
            policies.set(Int64(snapshot.policies.count))
        }
        return registry.emitToBuffer()
    }
}
