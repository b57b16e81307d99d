import AsyncAlgorithms
import Glibc
import KeepaliveCore
import Logging
import NIOCore
import ServiceLifecycle
import struct SystemPackage.FilePath
import UnixSignals

/// Keeps the pinned state equal to the policy file over the cgroups that
/// exist. A full pass (resolve every entry, check the state against the
/// invariant, reconcile) runs at start, on SIGHUP, when the pinned state
/// vanished or was replaced, when another process changed it, every 10 s
/// while something failed or directories are unwatched (inotify limit), and
/// every 5 minutes as a safety net. In between, each cgroup that appears or
/// goes costs one small pass that touches only that cgroup: the agent's cost
/// follows the changes, not the number of cgroups.
final class EnforcementService: Service, @unchecked Sendable {
    private let configPath: String
    private var config: AgentConfig
    private let state: PinnedState
    private let resolver: TargetResolver
    private let logger: Logger
    private let health: Health
    private let metrics: AgentMetrics
    private let notifier: SystemdNotifier
    private var claim: PinnedState.AgentClaim

    // Touched only by run()'s loop.
    private var desired = Selection()
    private var reported: [String: String] = [:]   // what was logged as failing, to log it once
    private var lastFullPass = ContinuousClock.now
    private var failing = false  // the last pass failed, or some cgroup did: retried
    private var iterator: SocketIterator?
    private var iteratorUnavailable = false
    private let reaped: ReapedLog

    static let retryInterval = Duration.seconds(10)
    static let safetyInterval = Duration.seconds(300)

    init(configPath: String, config: AgentConfig, state: PinnedState, claim: PinnedState.AgentClaim, logger: Logger,
         health: Health, metrics: AgentMetrics, notifier: SystemdNotifier) {
        self.configPath = configPath
        self.config = config
        self.state = state
        self.claim = claim
        resolver = TargetResolver(cgroups: state.cgroups)
        self.logger = logger
        self.health = health
        self.metrics = metrics
        self.notifier = notifier
        reaped = ReapedLog(state: state, logger: logger)
    }

    /// One full pass, then done: `agent --once`.
    func enforceOnce() throws {
        try fullPass(nil)
        logger.info("enforced \(config.policies.count) policy entries from \(configPath) on \(desired.count) cgroups")
    }

    private enum Input: Sendable {
        case watcher(ByteBuffer), hangup, tick
    }

    func run() async throws {
        let watcher = try CgroupWatcher(cgroups: state.cgroups)
        let channel = try await watcher.channel()
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        // Anything that stops enforcement at start ends the agent, so its supervisor sees it.
        try fullPass(watcher)
        health.passSucceeded()
        notifier.notify("READY=1\nSTATUS=enforcing \(desired.count) policies")
        logger.info("ready: \(config.policies.count) policy entries from \(configPath), \(desired.count) cgroups covered, watching \(watcher.watchedCount) cgroup directories")
        try await channel.executeThenClose { inbound in
            let inputs = merge(
                inbound.map { Input.watcher($0) },
                hangups.map { _ in Input.hangup },
                AsyncTimerSequence(interval: .seconds(1), clock: .continuous).map { _ in Input.tick })
            for try await input in inputs.cancelOnGracefulShutdown() {
                try handle(input, watcher)
            }
        }
        notifier.notify("STOPPING=1")
    }

    /// Throws only what ends enforcement for good (the pinned state is gone
    /// and cannot be made again): the supervisor restarts the agent.
    private func handle(_ input: Input, _ watcher: CgroupWatcher) throws {
        switch input {
        case .watcher(let buffer):
            for event in watcher.decode(buffer) {
                switch event {
                case .appeared(let path): cgroupAppeared(path, watcher)
                case .vanished(let path): cgroupVanished(path)
                case .overflow: recoverablePass(watcher, because: "inotify lost events")
                }
            }
        case .hangup:
            reload(watcher)
        case .tick:
            try tick(watcher)
        }
    }

    // MARK: passes

    /// Resolves the whole file and makes the state agree with it. Throws what
    /// stops enforcement (the state cannot be opened, loaded or written);
    /// one cgroup's trouble is logged and retried.
    private func fullPass(_ watcher: CgroupWatcher?) throws {
        lastFullPass = .now
        let resolution = resolver.resolve(config)
        desired = Selection(resolution.matches)
        report("unreadable", resolution.unreadable.first.map { "cannot read \($0): cgroups there are not covered until it can be read" })
        if let watcher { watchEverything(resolution.watch, watcher) }
        let outcome = try inTransaction(fullCheck: true) { session in
            log(session.report)
            return session.transaction.reconcile(desires(resolution.matches.values),
                                                 complete: resolution.unreadable.isEmpty)
        }
        try conclude(outcome)
    }

    /// A full pass whose failure is reported by /livez and the log, not fatal.
    private func recoverablePass(_ watcher: CgroupWatcher, because reason: String) {
        logger.debug("full pass: \(reason)")
        do {
            try fullPass(watcher)
            health.passSucceeded()
            report("pass", nil)
        } catch {
            passFailed(error)
        }
    }

    /// A pass that could not write the state: /livez fails until one succeeds, and it is retried.
    private func passFailed(_ error: any Error) {
        failing = true
        health.passFailed("\(error)")
        report("pass", "enforcement pass failed: \(error)")
    }

    private func cgroupAppeared(_ path: FilePath, _ watcher: CgroupWatcher) {
        guard let cgroup = state.cgroups.cgroup(at: path) else { return }  // gone already
        let resolution = resolver.resolve(config, appeared: cgroup)
        watchEverything(resolution.watch, watcher)
        guard !resolution.matches.isEmpty else { return }
        for match in resolution.matches.values where (desired[match.cgroup.id]?.spec ?? -1) <= match.spec {
            desired.insert(match)
        }
        passOnly(resolution.matches.values.map(\.cgroup.id))
    }

    private func cgroupVanished(_ path: FilePath) {
        guard let gone = desired.remove(at: path) else { return }
        do {
            try conclude(try inTransaction(fullCheck: false) { $0.transaction.withdraw([gone]) }, only: [path])
        } catch {
            passFailed(error)
        }
    }

    /// Applies the file to these cgroups only, with the view cached since the last pass.
    private func passOnly(_ ids: [UInt64]) {
        let wants = desires(ids.compactMap { desired[$0] })
        do {
            try conclude(try inTransaction(fullCheck: false) { $0.transaction.enforce(wants) },
                         only: wants.map(\.cgroup.path))
        } catch {
            passFailed(error)
        }
    }

    private func reload(_ watcher: CgroupWatcher) {
        notifier.notify("RELOADING=1")
        defer { notifier.notify("READY=1\nSTATUS=enforcing \(desired.count) policies") }
        do {
            config = try Agent.loadConfig(configPath)
        } catch {
            metrics.recordReload(success: false)
            logger.error("reload rejected, policies unchanged: \(error)")
            return
        }
        metrics.recordReload(success: true)
        logger.info("reloaded \(configPath): \(config.policies.count) policy entries")
        recoverablePass(watcher, because: "reload")
    }

    private func tick(_ watcher: CgroupWatcher) throws {
        health.tick()
        // Only while alive (as /livez says): a stuck loop or passes that keep
        // failing stop these, and systemd restarts the agent.
        if notifier.watchdog && health.notAliveReason == nil { notifier.notify("WATCHDOG=1") }
        switch state.pinning() {
        case .intact:
            report("pinning", nil)
        case .unknown(let code):
            report("pinning", "cannot check the pinned state at \(state.root): \(String(cString: strerror(code)))")
        case .replaced:
            logger.notice("the pinned state at \(state.root) vanished or was replaced: making it again and enforcing the policies anew")
            iterator = nil
            do {
                try state.prepare()
                claim = try state.claimForAgent(keeping: claim)
            } catch {
                throw AgentError("cannot make the pinned state at \(state.root) again: \(error)")
            }
            recoverablePass(watcher, because: "pinned state replaced")
            return
        }
        if let reason = fullPassDue(watcher) { recoverablePass(watcher, because: reason) }
        reaped.poll()
    }

    /// Why a full pass is due now, if it is.
    private func fullPassDue(_ watcher: CgroupWatcher) -> String? {
        let since = ContinuousClock.now - lastFullPass
        if state.changedElsewhere() { return "another process changed the pinned state" }
        if failing && since >= Self.retryInterval { return "retrying what failed" }
        if !watcher.unwatched.isEmpty && since >= Self.retryInterval { return "rescanning unwatched directories" }
        return since >= Self.safetyInterval ? "periodic check" : nil
    }

    // MARK: helpers

    private func desires(_ matches: some Sequence<TargetResolver.Match>) -> [Transaction.Desire] {
        matches.map { match in
            let spec = config.policies[match.spec]
            return Transaction.Desire(cgroup: match.cgroup, policy: spec.policy, source: spec.source)
        }
    }

    private func inTransaction<T>(fullCheck: Bool, _ body: (PinnedState.Session) throws -> T) throws -> T {
        guard let result = try state.transaction(create: true, fullCheck: fullCheck, body) else {
            throw AgentError("no pinned state at \(state.root)")
        }
        return result
    }

    /// Logs what a pass changed, applies the policy to existing sockets where
    /// the file asks for it, and sorts its failures: a cgroup that vanished
    /// meanwhile is no failure, a cgroup's own trouble is logged once and
    /// retried, and a failure to write the state stops the pass (thrown).
    /// A pass over `only` these cgroups says nothing of the others'.
    private func conclude(_ outcome: Transaction.Outcome, only touched: [FilePath]? = nil) throws {
        for change in outcome.changes {
            logger.info("\(change)")
            if change.kind != .detached, let match = desired[change.cgroupID] { coverExistingSockets(match) }
        }
        var stateFailure: String?
        var failing: Set<String> = []
        for failure in outcome.failures {
            switch failure.scope {
            case .vanished:
                continue
            case .cgroup:
                failing.insert(failure.cgroup.cgroupDisplay)
                report("cgroup \(failure.cgroup.cgroupDisplay)", "cannot enforce the policy on \(failure.cgroup.cgroupDisplay): \(failure.error)")
            case .state:
                stateFailure = stateFailure ?? failure.error  // it names the cgroup
            }
        }
        let passed = touched.map { Set($0.map(\.cgroupDisplay)) }
        for key in reported.keys where key.hasPrefix("cgroup ") {
            let cgroup = String(key.dropFirst(7))
            if !failing.contains(cgroup) && passed.map({ $0.contains(cgroup) }) ?? true { report(key, nil) }
        }
        let stillFailing = reported.keys.filter { $0.hasPrefix("cgroup ") }.count
        metrics.setFailingCgroups(stillFailing)
        self.failing = stillFailing > 0 || stateFailure != nil
        metrics.setPolicies(desired.count)
        if let stateFailure { throw AgentError("cannot write the pinned state at \(state.root): \(stateFailure)") }
    }

    private func coverExistingSockets(_ match: TargetResolver.Match) {
        guard config.policies[match.spec].existing, !iteratorUnavailable else { return }
        let path = match.cgroup.path
        do {
            if iterator == nil { iterator = try SocketIterator(pinRoot: state.root, cgroups: state.cgroups) }
            guard let iterator, let result = try iterator.runIfPopulated(match.cgroup) else { return }
            if result.applied > 0 || result.keptOwn > 0 {
                logger.info("existing sockets on \(path.cgroupDisplay): \(result.applied) updated, \(result.keptOwn) kept their program's own keepalive")
            }
            for failure in result.unreachable { logger.warning("existing sockets on \(path.cgroupDisplay): \(failure)") }
        } catch {
            iteratorUnavailable = true
            logger.error("existing sockets are not covered (only new ones): \(error)")
        }
    }

    private func watchEverything(_ paths: Set<FilePath>, _ watcher: CgroupWatcher) {
        let unwatched = watcher.watch(paths)
        metrics.setUnwatchedDirectories(unwatched.count)
        report("inotify", unwatched.isEmpty ? nil
               : "the inotify watch limit is reached (raise fs.inotify.max_user_watches): \(unwatched.count) cgroup directories are not watched; they are rescanned every \(Self.retryInterval)")
    }

    /// Logs a problem when it appears or changes, and once when it is gone.
    private func report(_ key: String, _ problem: String?) {
        if let problem {
            if reported[key] != problem { logger.error("\(problem)") }
            reported[key] = problem
        } else if reported.removeValue(forKey: key) != nil {
            logger.notice("resolved: \(key)")
        }
    }

    private func log(_ report: Transaction.Report) {
        for line in report.repaired { logger.notice("repaired: \(line)") }
        for line in report.dropped { logger.info("dropped policy on \(line)") }
        for line in report.keptUnknown { self.report("kept \(line)", line) }
        for line in report.failed { logger.error("could not repair: \(line)") }
    }
}

/// The cgroups the policy file selects now, found by id (the kernel's name)
/// and by path (inotify's): each event costs a lookup, not a scan.
struct Selection {
    private var byID: [UInt64: TargetResolver.Match] = [:]
    private var byPath: [FilePath: UInt64] = [:]

    init(_ matches: [UInt64: TargetResolver.Match] = [:]) {
        for match in matches.values { insert(match) }
    }

    var count: Int { byID.count }

    subscript(id: UInt64) -> TargetResolver.Match? { byID[id] }

    mutating func insert(_ match: TargetResolver.Match) {
        byID[match.cgroup.id] = match
        byPath[match.cgroup.path] = match.cgroup.id
    }

    /// Forgets the cgroup at `path`; its id, if it was selected. (cgroup2
    /// removes only empty directories: a removed one has no selected children.)
    mutating func remove(at path: FilePath) -> UInt64? {
        guard let id = byPath.removeValue(forKey: path) else { return nil }
        byID[id] = nil
        return id
    }
}
