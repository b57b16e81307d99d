// SPDX-License-Identifier: MIT
import Glibc
import KeepaliveCore
import KeepaliveRuntime
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import struct SystemPackage.FilePath
import UnixSignals

/// The agent's enforcement as a service of its ServiceGroup: an Enforcer,
/// run on a thread of its own.
struct EnforcementService: Service {
    let configPath: String
    let config: AgentConfig
    let state: PinnedState
    let claim: AgentClaim
    let workloads: Workloads
    let agent: Agent
    let logger: Logger
    let health: Health
    let metrics: AgentMetrics
    let notifier: SystemdNotifier

    func run() async throws {
        try await onItsOwnThread { try await $0.run() }
    }

    /// One full pass, then done: `agent --once`.
    func enforceOnce() async throws {
        try await onItsOwnThread { try await $0.enforceOnce() }
    }

    private func onItsOwnThread(_ body: (Enforcer) async throws -> Void) async throws {
        let thread = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        do {
            // Probed on this thread too: every bpf(2) call of the agent's is made on it.
            let features = try await thread.next().submit { try state.kernelFeatures() }.get()
            logFeatures(features)
            metrics.setKernelFeatures(features)
            try await body(Enforcer(self, features: features, on: thread.next()))
        } catch {
            try? await thread.shutdownGracefully()  // the error is what matters
            throw error
        }
        try await thread.shutdownGracefully()
    }

    /// What this kernel gives, said once at start: the build of the programs
    /// and one line per feature that is off.
    private func logFeatures(_ features: KernelFeatures) {
        let off = KernelFeatures.Feature.allCases.compactMap(features.offLine)
        logger.info("kernel \(KernelRelease.current): the programs' \(features.build.rawValue) build\(off.isEmpty ? "; every feature on" : "")")
        for line in off { logger.warning("\(line)") }
    }
}

/// Keeps the pinned state equal to the policy file over the cgroups, pods and
/// containers that exist. A full pass (resolve every entry, through the
/// runtimes for pods and containers; check the state against the invariant;
/// reconcile) runs at start, on SIGHUP, when the pinned state vanished or was
/// replaced, when another process changed it, when a runtime answers again,
/// every 10 s while something failed or directories are unwatched (inotify
/// limit), and every 5 minutes as a safety net. In between, each cgroup that
/// appears or goes costs one small pass that touches only that cgroup (a new
/// pod's or container's is first identified through its runtime, in a task of
/// its own): the agent's cost follows the changes, not the number of cgroups.
actor Enforcer {
    let configPath: String
    var config: AgentConfig
    let state: PinnedState
    let resolver: TargetResolver
    let logger: Logger
    let health: Health
    let metrics: AgentMetrics
    let notifier: SystemdNotifier
    /// What the kernel gives: entries that ask for more are left out, and said so.
    let features: KernelFeatures
    var claim: AgentClaim
    var workloads: Workloads
    private let agent: Agent
    /// Its thread: flock, bpf(2) and readdir over thousands of cgroups block
    /// it, never one of Swift's shared cooperative threads.
    nonisolated let unownedExecutor: UnownedSerialExecutor
    /// What the loop handles, one at a time: inotify's records, SIGHUP, the
    /// heartbeat, and what identifications and probes running in tasks of
    /// their own report.
    let (inputs, input) = AsyncStream.makeStream(of: Input.self)
    /// Its thread, an event loop.
    let loop: any EventLoop

    var desired = Selection()
    /// The state as the last transaction left it, for the next small one.
    var cache: PinnedState.CachedView?
    /// Pod cgroups seen but not yet identified (RunPodSandbox still running), and the tasks asking
    /// (a hurried pod's under hurriedKey).
    var pending: [FilePath: Task<Void, Never>] = [:]
    /// How soon the runtime knew the latest hurried pods.
    var sandboxTiming = SandboxTiming()
    var probing: Set<RuntimeKind> = []
    var runtimeUp: [RuntimeKind: Bool] = [:]
    /// Ignored pod annotations already logged ("namespace/name annotation ...").
    var annotationProblems: Set<String> = []
    var ticks = 0
    var reported: [String: String] = [:]   // what was logged as failing, to log it once
    var lastFullPass = ContinuousClock.now
    var failing = false  // the last pass failed, or some cgroup did: retried
    private var iterator: SocketIterator?
    private var iteratorUnavailable = false
    private let reaped: ReapedLog

    static let retryInterval = Duration.seconds(10)
    static let safetyInterval = Duration.seconds(300)
    /// How often each runtime in use is asked whether it answers (one cheap
    /// call): keepalive_runtime_up turns 0 within this and a call's timeout.
    static let probeEveryTicks = 10

    init(_ service: EnforcementService, features: KernelFeatures, on thread: any EventLoop) {
        configPath = service.configPath
        config = service.config
        state = service.state
        claim = service.claim
        workloads = service.workloads
        agent = service.agent
        resolver = TargetResolver(cgroups: service.state.cgroups)
        logger = service.logger
        health = service.health
        metrics = service.metrics
        notifier = service.notifier
        self.features = features
        reaped = ReapedLog(state: service.state, logger: service.logger)
        unownedExecutor = thread.executor.asUnownedSerialExecutor()
        loop = thread
    }

    /// One full pass, then done: `agent --once`.
    /// A pass that left something out (a directory it could not read, a
    /// cgroup that could not get its policy, a runtime that did not answer)
    /// fails: nothing retries it.
    func enforceOnce() async throws {
        defer { workloads.shutdown() }
        try await fullPass(nil)
        if let problem = reported.sorted(by: { $0.key < $1.key }).first?.value {
            throw AgentError("the file is not wholly in force: \(problem)")
        }
        logger.info("enforced \(config.policies.count) policy entries from \(configPath) on \(desired.count) cgroups")
    }

    enum Input: Sendable {
        case watcher(ByteBuffer), watchEnded((any Error)?), hangup, tick, workload(WorkloadEvent)
    }

    func run() async throws {
        defer { stopWorkloadTasks() }
        let watcher = try CgroupWatcher(cgroups: state.cgroups)
        let channel = try await watcher.channel(on: loop)
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        // Anything that stops enforcement at start ends the agent, so its supervisor sees it.
        try await fullPass(watcher)
        health.passSucceeded()
        notifier.notify("READY=1\nSTATUS=enforcing \(desired.count) policies")
        logger.info("ready: \(config.policies.count) policy entries from \(configPath), \(desired.count) cgroups covered, watching \(watcher.watchedCount) cgroup directories")
        // Everything arrives on this loop's thread: inotify's reads, the
        // heartbeat, and the tasks below. At rest a second's heartbeat wakes
        // one thread, not a chain of Swift's shared ones.
        try await channel.executeThenClose { inbound in
            try await withTaskExecutorPreference(EventLoopTaskExecutor(loop)) {
                try await withThrowingDiscardingTaskGroup { group in
                    let input = self.input
                    group.addTask {
                        do {
                            for try await buffer in inbound { input.yield(.watcher(buffer)) }
                            input.yield(.watchEnded(nil))
                        } catch {
                            input.yield(.watchEnded(error))
                        }
                    }
                    group.addTask {
                        for await _ in hangups { input.yield(.hangup) }
                    }
                    let heartbeat = loop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { _ in
                        input.yield(.tick)
                    }
                    defer { heartbeat.cancel() }
                    // Shutdown ends the inputs; what is being handled is finished first.
                    try await withGracefulShutdownHandler {
                        for await next in inputs { try await handle(next, watcher) }
                    } onGracefulShutdown: {
                        input.finish()
                    }
                    group.cancelAll()
                }
            }
        }
        notifier.notify("STOPPING=1")
    }

    /// Throws only what ends enforcement for good (the pinned state is gone
    /// and cannot be made again): the supervisor restarts the agent.
    private func handle(_ input: Input, _ watcher: CgroupWatcher) async throws {
        switch input {
        case .watcher(let buffer):
            for event in watcher.decode(buffer) {
                switch event {
                case .appeared(let path): cgroupAppeared(path, watcher)
                case .vanished(let path): cgroupVanished(path)
                case .overflow: await recoverablePass(watcher, because: "inotify lost events")
                }
            }
        case .watchEnded(let error):
            throw AgentError("the watch on the cgroup tree ended: \(error.map { "\($0)" } ?? "inotify closed")")
        case .hangup:
            await reload(watcher)
        case .tick:
            try await tick(watcher)
        case .workload(let event):
            await handle(event, watcher)
        }
    }

    // MARK: passes

    /// Resolves the whole file and makes the state agree with it. Throws what
    /// stops enforcement (the state cannot be opened, loaded or written);
    /// one cgroup's trouble, or a runtime's, is logged and retried.
    private func fullPass(_ watcher: CgroupWatcher?) async throws {
        lastFullPass = .now
        let resolution = resolver.resolve(config)
        let found = await workloads.resolve(config)
        desired = Selection(resolution.matches.values.compactMap { choice($0.cgroup, spec: $0.spec) })
        for workload in found.selected.values {
            if let choice = choice(workload.cgroup, spec: workload.spec, policy: workload.policy, origin: workload.origin) {
                desired.insertIfLater(choice)
            }
        }
        report("unreadable", resolution.unreadable.first.map { "\($0): cgroups there are not covered until it can be read" })
        reportRuntimes(found)
        if let watcher {
            let usual = config.runtimesNeeded.isEmpty ? [] : workloads.usualParentsOrWhereTheyAppear()
            watchEverything(resolution.watch.union(found.parents).union(usual), watcher)
        }
        let complete = resolution.unreadable.isEmpty
        let selectsWorkloads = !config.runtimesNeeded.isEmpty
        let outcome = try inTransaction(fullCheck: true) { session in
            log(session.report)
            // Not seeing a cgroup, or a runtime not naming a workload, proves nothing: such policies stay.
            return session.transaction.reconcile(desired.choices.map(\.desire), keeping: { id, record in
                record.origin.isEmpty ? !complete : selectsWorkloads && !found.known.contains(id)
            })
        }
        try conclude(outcome)
        if !found.failures.isEmpty || !found.unplaced.isEmpty { failing = true }
    }

    /// A full pass whose failure is reported by /livez and the log, not fatal.
    func recoverablePass(_ watcher: CgroupWatcher, because reason: String) async {
        logger.debug("full pass: \(reason)")
        do {
            try await fullPass(watcher)
            health.passSucceeded()
            report("pass", nil)
        } catch {
            passFailed(error)
        }
    }

    /// A pass that could not write the state: /livez fails until one succeeds, and it is retried.
    func passFailed(_ error: any Error) {
        failing = true
        health.passFailed("\(error)")
        report("pass", "enforcement pass failed: \(error)")
    }

    private func cgroupAppeared(_ path: FilePath, _ watcher: CgroupWatcher) {
        guard let cgroup = state.cgroups.cgroup(at: path) else { return }  // gone already
        let resolution = resolver.resolve(config, appeared: cgroup)
        watchEverything(resolution.watch, watcher)
        workloadAppeared(cgroup, watcher)
        guard !resolution.matches.isEmpty else { return }
        for match in resolution.matches.values {
            if let choice = choice(match.cgroup, spec: match.spec) { desired.insertIfLater(choice) }
        }
        passOnly(resolution.matches.values.map(\.cgroup.id))
    }

    private func cgroupVanished(_ path: FilePath) {
        workloadVanished(path)
        guard let gone = desired.remove(at: path) else { return }
        do {
            try conclude(try inTransaction(fullCheck: false) { $0.transaction.withdraw([gone]) }, only: [path])
        } catch {
            passFailed(error)
        }
    }

    /// Applies the file to these cgroups only, with the view cached since the last pass.
    func passOnly(_ ids: [UInt64]) {
        let wants = ids.compactMap { desired[$0]?.desire }
        do {
            try conclude(try inTransaction(fullCheck: false) { $0.transaction.enforce(wants) },
                         only: wants.map(\.cgroup.path))
        } catch {
            passFailed(error)
        }
    }

    private func reload(_ watcher: CgroupWatcher) async {
        notifier.notify("RELOADING=1")
        defer { notifier.notify("READY=1\nSTATUS=enforcing \(desired.count) policies") }
        do {
            let loaded = try Agent.loadConfig(configPath)
            if loaded.runtimeEndpoints != config.runtimeEndpoints {
                let next = try agent.workloads(for: loaded)
                workloads.shutdown()
                workloads = next
            }
            config = loaded
        } catch {
            metrics.recordReload(success: false)
            logger.error("reload rejected, policies unchanged: \(error)")
            return
        }
        metrics.recordReload(success: true)
        logger.info("reloaded \(configPath): \(config.policies.count) policy entries")
        for key in reported.keys where key.hasPrefix(Self.unsupportedKey) { report(key, nil) }  // said again if still so
        stopWorkloadTasks()  // what they would find is matched against the old file
        await recoverablePass(watcher, because: "reload")
    }

    private func tick(_ watcher: CgroupWatcher) async throws {
        health.tick()
        ticks += 1
        if ticks % Self.probeEveryTicks == 0 { probeRuntimes() }
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
            await recoverablePass(watcher, because: "pinned state replaced")
            return
        }
        if let reason = fullPassDue(watcher) { await recoverablePass(watcher, because: reason) }
        reaped.poll()
    }

    /// Why a full pass is due now, if it is.
    private func fullPassDue(_ watcher: CgroupWatcher) -> String? {
        let since = ContinuousClock.now - lastFullPass
        if state.changed(since: cache) { return "another process changed the pinned state" }
        if failing && since >= Self.retryInterval { return "retrying what failed" }
        if !watcher.unwatched.isEmpty && since >= Self.retryInterval { return "rescanning unwatched directories" }
        return since >= Self.safetyInterval ? "periodic check" : nil
    }

    // MARK: helpers

    /// What entry `spec` asks for this cgroup (its own values unless a pod
    /// chose others); nil, and said once, when it asks for what the kernel
    /// lacks: the rest of the file is enforced.
    func choice(_ cgroup: Cgroup, spec: Int, policy: Policy? = nil, origin: Origin = .none) -> Choice? {
        let entry = config.policies[spec]
        let policy = policy ?? entry.policy
        let lacking = features.unsupported(by: policy)
        // An entry's own policy changes only with the file (a reload forgets what was said);
        // a workload's annotations may change it at any time.
        if lacking != nil || !origin.isEmpty {
            let who = origin.display.map { " for \($0)" } ?? ""
            report(Self.unsupportedKey + entry.source + who,
                   lacking.map { "the policy entry at \(entry.source)\(who) is not enforced: \($0)" })
        }
        guard lacking == nil else { return nil }
        return Choice(cgroup: cgroup, spec: spec, policy: policy, origin: origin, source: entry.source)
    }

    /// Problems of entries the kernel cannot enforce are reported under this prefix.
    static let unsupportedKey = "unsupported "

    private func inTransaction<T: Sendable>(fullCheck: Bool, _ body: (PinnedState.Session) throws -> T) throws -> T {
        guard let result = try state.transaction(create: true, fullCheck: fullCheck, cache: &cache, body) else {
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

    /// (A kernel without the iterator was named at start: nothing to say here.)
    private func coverExistingSockets(_ match: Choice) {
        guard config.policies[match.spec].existing, !iteratorUnavailable, features.has(.existingSockets) else { return }
        let path = match.cgroup.path
        do {
            if iterator == nil {
                iterator = try SocketIterator(pinRoot: state.root, cgroups: state.cgroups, for: .existingSockets)
            }
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

    func watchEverything(_ paths: Set<FilePath>, _ watcher: CgroupWatcher) {
        let unwatched = watcher.watch(paths)
        metrics.setUnwatchedDirectories(unwatched.count)
        report("inotify", unwatched.isEmpty ? nil
               : "the inotify watch limit is reached (raise fs.inotify.max_user_watches): \(unwatched.count) cgroup directories are not watched; they are rescanned every \(Self.retryInterval)")
    }

    /// Logs a problem when it appears or changes, and once when it is gone.
    func report(_ key: String, _ problem: String?) {
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

/// One cgroup the policy file selects now: the entry that selects it, the
/// values it gets, and the pod or container it belongs to if it is one.
struct Choice: Sendable {
    let cgroup: Cgroup
    let spec: Int
    let policy: Policy
    let origin: Origin
    /// The entry's "file:line", for the log.
    let source: String

    var desire: Transaction.Desire { Transaction.Desire(cgroup: cgroup, policy: policy, source: source, origin: origin) }
}

/// The cgroups the policy file selects now, found by id (the kernel's name)
/// and by path (inotify's): each event costs a lookup, not a scan.
struct Selection {
    private var byID: [UInt64: Choice] = [:]
    private var byPath: [FilePath: UInt64] = [:]

    init(_ choices: some Sequence<Choice> = []) {
        for choice in choices { insertIfLater(choice) }
    }

    var count: Int { byID.count }
    var choices: Dictionary<UInt64, Choice>.Values { byID.values }

    subscript(id: UInt64) -> Choice? { byID[id] }

    /// Selects a cgroup, unless a later entry of the file selects it already.
    mutating func insertIfLater(_ choice: Choice) {
        if let present = byID[choice.cgroup.id], present.spec > choice.spec { return }
        byID[choice.cgroup.id] = choice
        byPath[choice.cgroup.path] = choice.cgroup.id
    }

    /// Forgets the cgroup at `path`; its id, if it was selected. (cgroup2
    /// removes only empty directories: a removed one has no selected children.)
    mutating func remove(at path: FilePath) -> UInt64? {
        guard let id = byPath.removeValue(forKey: path) else { return nil }
        byID[id] = nil
        return id
    }
}
