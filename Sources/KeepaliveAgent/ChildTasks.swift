// SPDX-License-Identifier: MIT
import Synchronization

/// Tasks the enforcement loop starts and may stop one by one (asking a
/// runtime about a new cgroup, probing a runtime, a runtime client's
/// connections), each a child of the task group that `run()` opens in the
/// loop's own task: none outlives the agent, and shutdown cancels them all.
/// A task group cannot cancel one child, so each runs beside a signal that
/// `stop(_:)` raises.
final class ChildTasks<Key: Hashable & Sendable>: Sendable {
    private struct Job: Sendable {
        let key: Key
        let executor: (any TaskExecutor)?
        let signal: StopSignal
        let body: @Sendable () async -> Void
    }

    private let (jobs, queue) = AsyncStream.makeStream(of: Job.self)
    private let running = Mutex<[Key: StopSignal]>([:])

    /// Starts `body` under `key` unless a task runs under it already; whether
    /// it started. `executor`: where its steps run (else where run()'s do).
    @discardableResult
    func start(_ key: Key, on executor: (any TaskExecutor)? = nil, _ body: @escaping @Sendable () async -> Void) -> Bool
    {
        let signal = StopSignal()
        let started = running.withLock { running in
            guard running[key] == nil else { return false }
            running[key] = signal
            return true
        }
        if started { queue.yield(Job(key: key, executor: executor, signal: signal, body: body)) }
        return started
    }

    /// Starts `body` under `key`, stopping the task that runs under it first.
    func restart(_ key: Key, on executor: (any TaskExecutor)? = nil, _ body: @escaping @Sendable () async -> Void) {
        stop(key)
        start(key, on: executor, body)
    }

    func isRunning(_ key: Key) -> Bool { running.withLock { $0[key] != nil } }

    /// Cancels the task under `key`, if one runs.
    func stop(_ key: Key) {
        running.withLock { $0.removeValue(forKey: key) }?.raise()
    }

    func stopAll() {
        for signal in running.withLock({ running in
            defer { running = [:] }
            return Array(running.values)
        }) {
            signal.raise()
        }
    }

    /// Runs every task started, as children of the caller's task, until the
    /// caller is cancelled or `finish()` was called and they all ended.
    func run() async {
        await withDiscardingTaskGroup { group in
            for await job in jobs {
                group.addTask(executorPreference: job.executor) { await self.execute(job) }
            }
        }
    }

    /// No more tasks: run() returns once those running have ended.
    func finish() {
        stopAll()
        queue.finish()
    }

    private func execute(_ job: Job) async {
        // Whichever ends first, the job or the signal, cancels the other.
        await withTaskGroup(of: Void.self) { pair in
            pair.addTask { await job.body() }
            pair.addTask { await job.signal.wait() }
            await pair.next()
            pair.cancelAll()
        }
        // Forgotten only if no other task took the key since.
        running.withLock { running in
            if running[job.key] === job.signal { running[job.key] = nil }
        }
    }
}

/// Raised once; wait() returns when it is (or when its task is cancelled).
final class StopSignal: Sendable {
    private let state = Mutex<(raised: Bool, waiter: CheckedContinuation<Void, Never>?)>((false, nil))

    func raise() {
        let waiter = state.withLock { state in
            state.raised = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    func wait() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let now = state.withLock { state in
                    if !state.raised { state.waiter = continuation }
                    return state.raised
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            raise()
        }
    }
}
