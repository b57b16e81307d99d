import Foundation
import KeepaliveCore
import Logging
import ServiceLifecycle
import UnixSignals

/// `keepalive agent`: enforces a policy file, follows cgroups as they come and
/// go, reloads on SIGHUP, and exits 0 on SIGTERM/SIGINT leaving enforcement
/// pinned in place.
public struct Agent {
    public let configPath: String
    public let metricsAddress: String?
    public let state: PinnedState
    public let logger: Logger

    public init(configPath: String, metricsAddress: String?, state: PinnedState, logger: Logger) {
        self.configPath = configPath
        self.metricsAddress = metricsAddress
        self.state = state
        self.logger = logger
    }

    /// Reads and checks the policy file; the error names file, line and problem.
    public static func loadConfig(_ path: String) throws -> AgentConfig {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError(file: path, line: nil, message: "cannot read the file")
        }
        return try AgentConfig.parse(String(decoding: data, as: UTF8.self), file: path)
    }

    public func run() async throws {
        let config = try Self.loadConfig(configPath)
        let metricsEndpoint = try metricsAddress.map(MetricsServer.parseAddress)
        let exporter = MetricsExporter.shared
        var services: [any Service] = [
            PolicyService(configPath: configPath, config: config, state: state, logger: logger, exporter: exporter),
        ]
        if let metricsEndpoint {
            let state = self.state
            services.append(MetricsServer(host: metricsEndpoint.host, port: metricsEndpoint.port,
                                          render: { exporter.render(state: state) }, logger: logger))
        }
        let group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint],
                                                      logger: logger))
        try await group.run()
        logger.info("stopped; policies stay in force (keepalive detach --all removes them)")
    }
}

/// Keeps the pinned state equal to the policy file over the cgroups that exist.
final class PolicyService: Service, @unchecked Sendable {
    enum Event { case cgroupsChanged, reload }

    let configPath: String
    private var config: AgentConfig  // only touched by run()'s loop
    let state: PinnedState
    let resolver: TargetResolver
    let logger: Logger
    let exporter: MetricsExporter

    init(configPath: String, config: AgentConfig, state: PinnedState, logger: Logger, exporter: MetricsExporter) {
        self.configPath = configPath
        self.config = config
        self.state = state
        self.resolver = TargetResolver(cgroups: state.cgroups)
        self.logger = logger
        self.exporter = exporter
    }

    func run() async throws {
        let (events, continuation) = AsyncStream.makeStream(of: Event.self, bufferingPolicy: .bufferingNewest(4))
        let watcher = try CgroupWatcher { continuation.yield(.cgroupsChanged) }
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        let signalTask = Task {
            for await _ in hangups { continuation.yield(.reload) }
        }
        defer { signalTask.cancel() }

        let watched = watcher.watch(try enforce())
        logger.info("ready: \(config.policies.count) policy entries from \(configPath), watching \(watched) cgroup directories")
        for await event in events.cancelOnGracefulShutdown() {
            switch event {
            case .cgroupsChanged: break
            case .reload: reload()
            }
            do { watcher.watch(try enforce()) } catch { logger.error("applying policies failed: \(error)") }
        }
    }

    /// Applies the current file to the cgroups that exist; returns what to watch.
    private func enforce() throws -> Set<String> {
        let resolution = resolver.resolve(config)
        let changes = try state.transaction { try $0.reconcile(resolution.desired) }
        for change in changes { logger.info("\(change)") }
        return resolution.watch
    }

    /// A valid file replaces the current one; an invalid one changes nothing.
    private func reload() {
        do {
            config = try Agent.loadConfig(configPath)
            exporter.recordReload(success: true)
            logger.info("reloaded \(configPath): \(config.policies.count) policy entries")
        } catch {
            exporter.recordReload(success: false)
            logger.error("reload rejected, policies unchanged: \(error)")
        }
    }
}
