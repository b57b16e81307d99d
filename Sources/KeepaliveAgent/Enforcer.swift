// SPDX-License-Identifier: MIT
import Glibc
import KeepaliveCore
import KeepaliveRuntime
import Logging
import NIOCore
import ServiceLifecycle
import UnixSignals

import struct SystemPackage.FilePath

/// Makes the runtimes a policy file needs, their connections run in `tasks`.
typealias RuntimeMaker =
    @Sendable (
        AgentConfig, ChildTasks<AgentTask>,
        _ connectionsEnded: @escaping @Sendable (RuntimeKind, RuntimeError) -> Void
    )
    throws -> [any WorkloadRuntime]

/// Keeps the pinned state equal to the policy file over the cgroups, pods and
/// containers that exist. A full pass (resolve every entry, through the
/// runtimes for pods and containers; check the state against the invariant;
/// reconcile) runs at start, on SIGHUP, when the pinned state vanished or was
/// replaced, when another process changed it, when a runtime answers again,
/// every 10 s while something failed or directories are unwatched (inotify
/// limit), and every 5 minutes as a safety net. In between, each cgroup that
/// appears or goes costs one small pass that touches only that cgroup (a new
/// pod's or container's is first identified through its runtime, in a task of
/// its own: Identification): the agent's cost follows the changes, not the
/// number of cgroups.
///
/// Its parts: the PolicyStore (the pinned state), the CgroupWatcher, the
/// runtimes (Workloads), Identification, the ProblemLog; each is replaced by
/// a fake in the unit tests.
actor Enforcer {
    /// What it works with.
    struct Parts {
        var configPath: String
        var store: any PolicyStore
        var cgroups: CgroupFS
        /// What the kernel gives: entries that ask for more are left out, and said so.
        var features: KernelFeatures
        var makeRuntimes: RuntimeMaker
        var logger: Logger
        var health = Health()
        var metrics = AgentMetrics()
        var notifier = SystemdNotifier(environment: [:])
        var timing = Identification.Timing()
    }

    /// What it was made with.
    let parts: Parts
    /// The policy file in force: the last that loaded.
    var config: AgentConfig
    let resolver: TargetResolver
    var workloads: Workloads
    /// The tasks beside the loop: identifications, probes, runtime connections.
    nonisolated let tasks = ChildTasks<AgentTask>()
    let identification: Identification
    var problems: ProblemLog
    /// Its thread: flock, bpf(2) and readdir over thousands of cgroups block
    /// it, never one of Swift's shared cooperative threads.
    nonisolated let unownedExecutor: UnownedSerialExecutor
    let loop: any EventLoop
    /// What the loop handles, one at a time: inotify's records, SIGHUP, the
    /// heartbeat, and what the tasks beside it report.
    nonisolated let inputs: AsyncStream<Input>
    nonisolated let input: AsyncStream<Input>.Continuation

    var desired = Selection()
    var probing: Set<RuntimeKind> = []
    var runtimeUp: [RuntimeKind: Bool] = [:]
    /// Ignored pod annotations already logged ("namespace/name annotation ...").
    var annotationProblems: Set<String> = []
    var ticks = 0
    var lastFullPass = ContinuousClock.now
    /// Something failed that a full pass retries.
    var retryDue = false
    private var existingSocketsUnavailable = false
    private let reaped: ReapedLog

    static let retryInterval = Duration.seconds(10)
    static let safetyInterval = Duration.seconds(300)
    /// How often each runtime in use is asked whether it answers (one cheap
    /// call): keepalive_runtime_up turns 0 within this and a call's timeout.
    static let probeEveryTicks = 10

    enum Input: Sendable {
        case watcher(ByteBuffer)
        case watchEnded((any Error)?)
        case hangup, tick
        case workload(WorkloadEvent)
    }

    /// `config`: the policy file as first read, from `parts.configPath`.
    init(_ parts: Parts, config: AgentConfig, on thread: any EventLoop) throws {
        self.parts = parts
        self.config = config
        resolver = TargetResolver(cgroups: parts.cgroups)
        problems = ProblemLog(logger: parts.logger)
        reaped = ReapedLog(logger: parts.logger)
        unownedExecutor = thread.executor.asUnownedSerialExecutor()
        loop = thread
        (inputs, input) = AsyncStream.makeStream(of: Input.self)
        let (tasks, input) = (tasks, input)
        identification = Identification(tasks: tasks, timing: parts.timing) { input.yield(.workload($0)) }
        workloads = Workloads(
            try parts.makeRuntimes(config, tasks, Self.connectionsEnded(input)),
            cgroups: parts.cgroups
        )
    }

    /// A runtime's connections ended: said as a probe that failed.
    private static func connectionsEnded(
        _ input: AsyncStream<Input>.Continuation
    )
        -> @Sendable (RuntimeKind, RuntimeError) -> Void
    {
        { kind, error in input.yield(.workload(.probed(kind, error))) }
    }

    /// One full pass, then done: `agent --once`. A pass that left something
    /// out (a directory it could not read, a cgroup that could not get its
    /// policy, a runtime that did not answer) fails: nothing retries it.
    func enforceOnce() async throws {
        let tasks = self.tasks
        try await withThrowingTaskGroup { group in
            group.addTask { await tasks.run() }
            defer { shutDownTasks() }
            try await fullPass(nil)
            if let problem = problems.first {
                throw AgentError("the file is not wholly in force: \(problem)")
            }
            parts.logger.info(
                "enforced \(config.policies.count) policy entries from \(parts.configPath) on \(desired.count) parts.cgroups"
            )
        }
    }

    private func shutDownTasks() {
        workloads.shutdown()
        tasks.finish()
    }

    func run() async throws {
        let watcher = try CgroupWatcher(cgroups: parts.cgroups)
        let channel = try await watcher.channel(on: loop)
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        let (tasks, input) = (tasks, input)
        // Everything arrives on this loop's thread: inotify's reads, the
        // heartbeat, and the tasks below. At rest a second's heartbeat wakes
        // one thread, not a chain of Swift's shared ones.
        try await channel.executeThenClose { inbound in
            try await withTaskExecutorPreference(EventLoopTaskExecutor(loop)) {
                try await withThrowingDiscardingTaskGroup { group in
                    group.addTask { await tasks.run() }
                    defer { shutDownTasks() }
                    // Anything that stops enforcement at start ends the agent, so its supervisor sees it.
                    try await fullPass(watcher)
                    parts.health.passSucceeded()
                    parts.notifier.notify("READY=1\nSTATUS=enforcing \(desired.count) policies")
                    parts.logger.info(
                        "ready: \(config.policies.count) policy entries from \(parts.configPath), \(desired.count) cgroups covered, watching \(watcher.watchedCount) cgroup directories"
                    )
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
        parts.notifier.notify("STOPPING=1")
    }

    /// Throws only what ends enforcement for good (the pinned state is gone
    /// and cannot be made again): the supervisor restarts the agent.
    func handle(_ input: Input, _ watcher: CgroupWatcher) async throws {
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
    func fullPass(_ watcher: CgroupWatcher?) async throws {
        lastFullPass = .now
        let resolution = resolver.resolve(config)
        let found = await workloads.resolve(config)
        desired = Selection(resolution.matches.values.compactMap { choice($0.cgroup, spec: $0.spec) })
        for workload in found.selected.values {
            if let choice = choice(
                workload.cgroup,
                spec: workload.spec,
                policy: workload.policy,
                origin: workload.origin
            ) {
                desired.insertIfLater(choice)
            }
        }
        report(
            .unreadableSelection,
            resolution.unreadable.first.map { "\($0): cgroups there are not covered until it can be read" }
        )
        reportRuntimes(found)
        if let watcher {
            let usual = config.runtimesNeeded.isEmpty ? [] : workloads.usualParentsOrWhereTheyAppear()
            watchEverything(resolution.watch.union(found.parents).union(usual), watcher)
        }
        let complete = resolution.unreadable.isEmpty
        let selectsWorkloads = !config.runtimesNeeded.isEmpty
        // Not seeing a cgroup, or a runtime not naming a workload, proves nothing: such policies stay.
        let (checked, outcome) = try parts.store.reconcile(desired.choices.map(\.desire)) { id, record in
            record.origin.isEmpty ? !complete : selectsWorkloads && !found.known.contains(id)
        }
        log(checked)
        try conclude(outcome)
        if !found.failures.isEmpty || !found.unplaced.isEmpty { retryDue = true }
    }

    /// A full pass whose failure is reported by /livez and the log, not fatal.
    func recoverablePass(_ watcher: CgroupWatcher, because reason: String) async {
        parts.logger.debug("full pass: \(reason)")
        do {
            try await fullPass(watcher)
            parts.health.passSucceeded()
            report(.pass, nil)
        } catch {
            passFailed(error)
        }
    }

    /// A pass that could not write the state: /livez fails until one succeeds, and it is retried.
    func passFailed(_ error: any Error) {
        retryDue = true
        parts.health.passFailed("\(error)")
        report(.pass, "enforcement pass failed: \(error)")
    }

    func cgroupAppeared(_ path: FilePath, _ watcher: CgroupWatcher) {
        guard let cgroup = parts.cgroups.cgroup(at: path) else { return }  // gone already
        let resolution = resolver.resolve(config, appeared: cgroup)
        watchEverything(resolution.watch, watcher)
        workloadAppeared(cgroup, watcher)
        guard !resolution.matches.isEmpty else { return }
        for match in resolution.matches.values {
            if let choice = choice(match.cgroup, spec: match.spec) { desired.insertIfLater(choice) }
        }
        passOnly(resolution.matches.values.map(\.cgroup.id))
    }

    func cgroupVanished(_ path: FilePath) {
        identification.stop(path)
        workloads.forget(below: path)
        guard let gone = desired.remove(at: path) else { return }
        do {
            try conclude(try parts.store.withdraw([gone]), only: [path])
        } catch {
            passFailed(error)
        }
    }

    /// Applies the file to these cgroups only, with the view cached since the last pass.
    func passOnly(_ ids: [UInt64]) {
        let wants = ids.compactMap { desired[$0]?.desire }
        do {
            try conclude(try parts.store.enforce(wants), only: wants.map(\.cgroup.path))
        } catch {
            passFailed(error)
        }
    }

    func reload(_ watcher: CgroupWatcher) async {
        parts.notifier.notify("RELOADING=1")
        defer { parts.notifier.notify("READY=1\nSTATUS=enforcing \(desired.count) policies") }
        do {
            let loaded = try Agent.loadConfig(parts.configPath)
            if loaded.runtimeEndpoints != config.runtimeEndpoints {
                let next = Workloads(
                    try parts.makeRuntimes(loaded, tasks, Self.connectionsEnded(input)),
                    cgroups: parts.cgroups
                )
                workloads.shutdown()
                workloads = next
            }
            config = loaded
        } catch {
            parts.metrics.recordReload(success: false)
            parts.logger.error("reload rejected, policies unchanged: \(error)")
            return
        }
        parts.metrics.recordReload(success: true)
        parts.logger.info("reloaded \(parts.configPath): \(config.policies.count) policy entries")
        problems.resolve(where: \.isUnsupported)  // said again if still so
        stopIdentifying()  // what they would find is matched against the old file
        await recoverablePass(watcher, because: "reload")
    }

    private func tick(_ watcher: CgroupWatcher) async throws {
        parts.health.tick()
        ticks += 1
        if ticks % Self.probeEveryTicks == 0 { probeRuntimes() }
        // Only while alive (as /livez says): a stuck loop or passes that keep
        // failing stop these, and systemd restarts the agent.
        if parts.notifier.watchdog && parts.health.notAliveReason == nil { parts.notifier.notify("WATCHDOG=1") }
        switch parts.store.pinning() {
        case .intact:
            report(.pinning, nil)
        case .unknown(let code):
            report(.pinning, "cannot check the pinned state at \(parts.store.root): \(String(cString: strerror(code)))")
        case .replaced:
            parts.logger.notice(
                "the pinned state at \(parts.store.root) vanished or was replaced: making it again and enforcing the policies anew"
            )
            existingSocketsUnavailable = false
            do {
                try parts.store.remake()
            } catch {
                throw AgentError("cannot make the pinned state at \(parts.store.root) again: \(error)")
            }
            await recoverablePass(watcher, because: "pinned state replaced")
            return
        }
        if let reason = fullPassDue(watcher) { await recoverablePass(watcher, because: reason) }
        do {
            reaped.log(try reaped.poll(parts.store))
            report(.reapedEvents, nil)
        } catch {
            report(
                .reapedEvents,
                "cannot read the reaped connections' record at \(parts.store.root): \(error); the log says none until it can"
            )
        }
    }

    /// Why a full pass is due now, if it is.
    func fullPassDue(_ watcher: CgroupWatcher) -> String? {
        let since = ContinuousClock.now - lastFullPass
        if parts.store.changedByAnother() { return "another process changed the pinned state" }
        if retryDue && since >= Self.retryInterval { return "retrying what failed" }
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
        let lacking = parts.features.unsupported(by: policy)
        // An entry's own policy changes only with the file (a reload forgets what was said);
        // a workload's annotations may change it at any time.
        if lacking != nil || !origin.isEmpty {
            let who = origin.display.map { " for \($0)" } ?? ""
            report(
                .unsupported(source: entry.source, workload: origin.display),
                lacking.map { "the policy entry at \(entry.source)\(who) is not enforced: \($0)" }
            )
        }
        guard lacking == nil else { return nil }
        return Choice(cgroup: cgroup, spec: spec, policy: policy, origin: origin, source: entry.source)
    }

    /// Logs what a pass changed, applies the policy to existing sockets where
    /// the file asks for it, and sorts its failures: a cgroup that vanished
    /// meanwhile is no failure, a cgroup's own trouble is logged once and
    /// retried, and a failure to write the state stops the pass (thrown).
    /// A pass over `only` these cgroups says nothing of the others'.
    func conclude(_ outcome: Transaction.Outcome, only touched: [FilePath]? = nil) throws {
        for change in outcome.changes {
            parts.logger.info("\(change)")
            if change.kind != .detached, let match = desired[change.cgroupID] { coverExistingSockets(match) }
        }
        var stateFailure: Transaction.Failure?
        var cgroupsFailing: Set<FilePath> = []
        for failure in outcome.failures {
            switch failure.scope {
            case .vanished:
                continue
            case .cgroup:
                cgroupsFailing.insert(failure.cgroup)
                report(
                    .cgroup(failure.cgroup),
                    "cannot enforce the policy on \(failure.cgroup.cgroupDisplay): \(failure.error)"
                )
            case .state:
                stateFailure = stateFailure ?? failure  // its error names the cgroup
            }
        }
        let passed = touched.map(Set.init)
        problems.resolve { problem in
            guard case .cgroup(let path) = problem else { return false }
            return !cgroupsFailing.contains(path) && passed.map { $0.contains(path) } ?? true
        }
        let stillFailing = problems.count(where: \.isCgroup)
        parts.metrics.setFailingCgroups(stillFailing)
        retryDue = stillFailing > 0 || stateFailure != nil
        parts.metrics.setPolicies(desired.count)
        if let stateFailure {
            throw AgentError("cannot write the pinned state at \(parts.store.root): \(stateFailure.error)")
        }
    }

    /// (A kernel without the iterator was named at start: nothing to say here.)
    private func coverExistingSockets(_ match: Choice) {
        guard config.policies[match.spec].existing, !existingSocketsUnavailable, parts.features.has(.existingSockets)
        else {
            return
        }
        let path = match.cgroup.path
        do {
            guard let result = try parts.store.coverExistingSockets(of: match.cgroup) else { return }
            if result.applied > 0 || result.keptOwn > 0 {
                parts.logger.info(
                    "existing sockets on \(path.cgroupDisplay): \(result.applied) updated, \(result.keptOwn) kept their program's own keepalive"
                )
            }
            for failure in result.unreachable {
                parts.logger.warning("existing sockets on \(path.cgroupDisplay): \(failure)")
            }
        } catch {
            existingSocketsUnavailable = true
            parts.logger.error("existing sockets are not covered (only new ones): \(error)")
        }
    }

    func watchEverything(_ paths: Set<FilePath>, _ watcher: CgroupWatcher) {
        let unwatched = watcher.watch(paths)
        parts.metrics.setUnwatchedDirectories(unwatched.count)
        report(
            .inotify,
            unwatched.isEmpty
                ? nil
                : "the inotify watch limit is reached (raise fs.inotify.max_user_watches): \(unwatched.count) cgroup directories are not watched; they are rescanned every \(Self.retryInterval)"
        )
    }

    /// Logs a problem when it appears or changes (and counts it), and once when it is gone.
    func report(_ problem: Problem, _ message: String?) {
        if problems.report(problem, message) { parts.metrics.recordProblem(problem.kind) }
    }

    private func log(_ checked: Transaction.Report) {
        for line in checked.repaired { parts.logger.notice("repaired: \(line)") }
        for line in checked.dropped { parts.logger.info("dropped policy on \(line)") }
        for line in checked.keptUnknown { report(.kept(line), line) }
        for line in checked.failed { parts.logger.error("could not repair: \(line)") }
    }
}
