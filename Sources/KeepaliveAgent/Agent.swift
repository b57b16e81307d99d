// SPDX-License-Identifier: MIT
import Dispatch
import Foundation
import Glibc
import KeepaliveCore
import KeepaliveRuntime
import Logging
import ServiceLifecycle

/// `keepalive agent`: enforces a policy file, follows cgroups as they come and
/// go, reloads on SIGHUP, and exits 0 on SIGTERM/SIGINT leaving enforcement
/// pinned in place. Whatever stops enforcement at start (the file, the
/// cgroup root, loading, pinning, attaching) ends it with an error at once,
/// so that its supervisor sees it and restarts it.
public struct Agent: Sendable {
    public let configPath: String
    public let metricsAddress: String?
    public let state: PinnedState
    public let logger: Logger
    /// The runtimes' endpoints from the command line (the file's `runtime:` comes first).
    public let endpoints: [RuntimeKind: String]

    public init(
        configPath: String,
        metricsAddress: String?,
        state: PinnedState,
        logger: Logger,
        endpoints: [RuntimeKind: String] = [:]
    ) {
        self.configPath = configPath
        self.metricsAddress = metricsAddress
        self.state = state
        self.logger = logger
        self.endpoints = endpoints
    }

    /// Where the runtimes are for this file: its `runtime:` key, else the
    /// flags, else the environment and the usual sockets; one of each kind
    /// the registry has.
    func endpoints(for config: AgentConfig) throws -> Runtimes {
        func given(_ kind: RuntimeKind) -> String? { config.runtimeEndpoints[kind]?.description ?? endpoints[kind] }
        return try Runtimes(cri: given(.cri), docker: given(.docker), environment: ProcessInfo.processInfo.environment)
    }

    func makeRuntimes(
        for config: AgentConfig,
        tasks: ChildTasks<AgentTask>,
        connectionsEnded: @escaping @Sendable (RuntimeKind, RuntimeError) -> Void
    ) throws -> [any WorkloadRuntime] {
        let context = RuntimeContext(
            runtimes: try endpoints(for: config),
            cgroups: state.cgroups,
            tasks: tasks,
            connectionsEnded: connectionsEnded
        )
        return registry.map { $0(context) }
    }

    /// Reads and checks the policy file; the error names file, line and problem.
    public static func loadConfig(_ path: String) throws -> AgentConfig {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError(file: path, line: nil, message: "cannot read the file")
        }
        return try AgentConfig.parse(String(decoding: data, as: UTF8.self), file: path)
    }

    /// Runs until SIGTERM/SIGINT; with `once`, makes the state match the file and returns.
    public func run(once: Bool = false) async throws {
        let config = try Self.loadConfig(configPath)
        let endpoint = try metricsAddress.map(MetricsServer.parseAddress)
        raiseDescriptorLimit()
        try state.prepare()
        let claim = try state.claimForAgent()
        let health = Health()
        let metrics = AgentMetrics()
        _ = try endpoints(for: config)  // a bad endpoint is refused before the state is touched
        let (configPath, cgroups, makeRuntimes, logger) = (configPath, state.cgroups, makeRuntimes, logger)
        let notifier = SystemdNotifier(environment: ProcessInfo.processInfo.environment)
        let enforcement = EnforcementService(
            state: state,
            claim: claim,
            logger: logger,
            metrics: metrics,
            config: config
        ) { store, features in
            Enforcer.Parts(
                configPath: configPath,
                store: store,
                cgroups: cgroups,
                features: features,
                makeRuntimes: makeRuntimes,
                logger: logger,
                health: health,
                metrics: metrics,
                notifier: notifier
            )
        }
        if once { return try await enforcement.enforceOnce() }
        var services: [any Service] = [enforcement]
        if let endpoint {
            let state = self.state
            services.append(
                MetricsServer(
                    host: endpoint.host,
                    port: endpoint.port,
                    metrics: { try metrics.render(state, health: health) },
                    health: health,
                    logger: logger
                )
            )
        }
        let group = ServiceGroup(
            configuration: .init(
                services: services,
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        try await group.run()
        logger.info("stopped; policies stay in force (keepalive detach --all removes them)")
    }

    /// Up to the hard limit: descriptors are cheap, and running out of them
    /// would stall enforcement.
    private func raiseDescriptorLimit() {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
        limit.rlim_cur = limit.rlim_max
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    }
}

/// SIGTERM and SIGINT end the agent with exit 0 within 2 s whatever it is
/// doing: still starting, in the middle of a pass, or stuck. Why it exists:
/// the service group's graceful shutdown waits for every service to return,
/// and a pass blocked in a system call (a flock, a runtime that does not
/// answer before its timeout) would keep systemd or the kubelet waiting. Everything in
/// force is pinned and survives any exit, and each step survives being cut
/// short, so waiting longer could only keep a supervisor waiting. Armed
/// before anything else; the service group's graceful shutdown usually ends
/// the process well before the deadline.
public enum StopDeadline {
    static let limit = 1.8
    nonisolated(unsafe) private static var sources: [any DispatchSourceSignal] = []

    /// Called first thing, before the agent starts any work. Dispatch's
    /// signal sources take over SIGTERM and SIGINT (on Linux they read a
    /// signalfd: no SIG_IGN, which would drop them), and SIGHUP too until the
    /// agent listens for reloads: a SIGHUP before that would otherwise take
    /// its default action and kill the agent (the file is read at the start
    /// anyway, so nothing is lost).
    public static func arm() {
        for signalNumber in [SIGTERM, SIGINT] {
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
            source.setEventHandler {
                DispatchQueue.global().asyncAfter(deadline: .now() + limit) {
                    fflush(nil)
                    _exit(0)
                }
            }
            source.resume()
            sources.append(source)
        }
        let hangup = DispatchSource.makeSignalSource(signal: SIGHUP, queue: .global())
        hangup.setEventHandler {}
        hangup.resume()
        sources.append(hangup)
    }
}
