import CoreMetrics
import Foundation
import KeepaliveCore
import Prometheus

/// The agent's metrics, through swift-metrics into a Prometheus registry.
/// Values kept by the BPF program (sockets configured, setsockopt errors) are
/// read at scrape time and added to counters as deltas.
final class MetricsExporter: @unchecked Sendable {
    private let registry: PrometheusCollectorRegistry
    private let lock = NSLock()
    private var sockets: [String: (counter: CoreMetrics.Counter, seen: UInt64)] = [:]
    private var errors: [String: (counter: CoreMetrics.Counter, seen: UInt64)] = [:]
    private let policies: CoreMetrics.Gauge

    static let shared = MetricsExporter()

    private init() {
        registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        // Metrics made before bootstrap would go to the no-op backend: make them after.
        policies = Gauge(label: "keepalive_policies")
        Gauge(label: "keepalive_build_info", dimensions: [("version", KeepaliveVersion.string)]).record(1)
        for result in ["success", "failure"] { _ = reloadCounter(result) }
    }

    private func reloadCounter(_ result: String) -> CoreMetrics.Counter {
        Counter(label: "keepalive_reloads_total", dimensions: [("result", result)])
    }

    func recordReload(success: Bool) {
        reloadCounter(success ? "success" : "failure").increment()
    }

    /// Reads the BPF counters, then renders the Prometheus text format.
    func render(state: PinnedState) -> String {
        lock.lock()
        defer { lock.unlock() }
        if let entries = try? state.entries() {
            policies.record(entries.count)
            let live = Dictionary(entries.compactMap { e in e.path.map { ($0, e.socketsConfigured) } },
                                  uniquingKeysWith: +)
            advance(&sockets, to: live, label: "keepalive_sockets_configured_total", dimension: "cgroup")
        }
        if let counts = try? state.setsockoptErrors() {
            let byOption = Dictionary(counts.map { ($0.option, $0.count) }, uniquingKeysWith: +)
            advance(&errors, to: byOption, label: "keepalive_setsockopt_errors_total", dimension: "option")
        }
        return registry.emitToString()
    }

    /// Moves counters to the kernel's values; counters of cgroups gone are dropped.
    private func advance(_ counters: inout [String: (counter: CoreMetrics.Counter, seen: UInt64)],
                         to values: [String: UInt64], label: String, dimension: String) {
        for (key, entry) in counters where values[key] == nil {
            entry.counter.destroy()
            counters[key] = nil
        }
        for (key, value) in values {
            var entry = counters[key] ?? (Counter(label: label, dimensions: [(dimension, key)]), 0)
            // A smaller value means the policy was made anew (its count restarted).
            let delta = value >= entry.seen ? value - entry.seen : value
            if delta > 0 || counters[key] == nil { entry.counter.increment(by: Int64(clamping: delta)) }
            entry.seen = value
            counters[key] = entry
        }
    }
}
