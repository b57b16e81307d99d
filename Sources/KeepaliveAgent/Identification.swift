// SPDX-License-Identifier: MIT
import KeepaliveCore
import KeepaliveRuntime

import struct SystemPackage.FilePath

/// The tasks the enforcement loop runs beside itself, by what they do.
enum AgentTask: Hashable, Sendable {
    /// Asking the runtimes what a new cgroup is.
    case identify(FilePath)
    /// Asking in haste about a pod whose sandbox's cgroup appeared.
    case hurried(FilePath)
    /// Asking a runtime whether it answers.
    case probe(RuntimeKind)
    /// A runtime client's connections, by endpoint.
    case runtimeConnections(String)
}

/// What tasks asking the runtimes report to the enforcement loop.
enum WorkloadEvent: Sendable {
    /// A new cgroup's pod or container, and the entry that selects it (if one does).
    case identified(Identified)
    /// The runtime could not be asked this time (a dropped connection): the task asks again.
    case retrying(FilePath, RuntimeError)
    /// The runtime could not be asked until the task's time ran out: a full pass retries.
    case failed(FilePath, RuntimeError)
    /// No runtime knew the cgroup within the time allowed: not a workload of theirs.
    case gaveUp(FilePath)
    /// The runtime knew a hurried pod when asked `later` after it was hurried, not when asked `earlier`.
    case podKnown(Identified, between: Duration, and: Duration)
    /// The runtime did not know a hurried pod in time: its own task asks on.
    case podNotYetKnown(Cgroup, uid: String)
    /// A runtime answered (nil) or not, when probed or when its connections ended.
    case probed(RuntimeKind, RuntimeError?)
}

/// Identifies new pods' and containers' cgroups through the runtimes, each
/// in a task of its own: kubelet makes a pod's cgroup before RunPodSandbox
/// returns, so the runtime may not know it yet; it is asked again, and in
/// haste once a container's cgroup (at first the sandbox's own) appears in
/// it. What the tasks find is reported as WorkloadEvents.
final class Identification {
    struct Timing: Sendable {
        /// How long a new cgroup is asked about before it is left to the full passes.
        var identifyFor = Duration.seconds(60)
        /// The longest wait between two asks.
        var slowest = Duration.seconds(2)
        /// A pod's first ask, and the wait after it (doubled each time).
        var podFirstAsk = Duration.milliseconds(100)
        var podEvery = Duration.milliseconds(100)
        /// A container's wait after each ask (doubled each time).
        var containerEvery = Duration.milliseconds(50)
        /// A hurried pod is asked this often, for this long.
        var hurriedEvery = Duration.milliseconds(5)
        var hurriedFor = Duration.seconds(1)
        /// Every this many asks of a pod, the runtime's whole list rather than the pod's label.
        var fullListEvery = 4
    }

    let timing: Timing
    private let tasks: ChildTasks<AgentTask>
    private let report: @Sendable (WorkloadEvent) -> Void
    /// How soon the runtime knew the latest hurried pods.
    private(set) var sandboxTiming = SandboxTiming()

    init(tasks: ChildTasks<AgentTask>, timing: Timing = Timing(), report: @escaping @Sendable (WorkloadEvent) -> Void) {
        self.tasks = tasks
        self.timing = timing
        self.report = report
    }

    /// kubelet labels sandboxes with their pod's uid; now and then the whole
    /// list is asked, for runtimes driven by something else. Not at once:
    /// kubelet makes the pod's cgroup before it asks for the sandbox, and the
    /// sandbox's cgroup hurries the pod when the runtime is about to know it;
    /// this task is for runtimes that show no such sign.
    func identifyPod(uid: String, at directory: Cgroup, _ workloads: Workloads, _ config: AgentConfig) {
        let every = timing.fullListEvery
        ask(about: directory, after: timing.podFirstAsk, startingEvery: timing.podEvery) {
            attempt throws(RuntimeError) in
            try await workloads.identify(.pod(uid: uid), at: directory, config, fullList: attempt % every == 0)
        }
    }

    func identifyContainer(
        _ name: CgroupNaming.Kind,
        at directory: Cgroup,
        _ workloads: Workloads,
        _ config: AgentConfig
    ) {
        ask(about: directory, startingEvery: timing.containerEvery) { _ throws(RuntimeError) in
            try await workloads.identify(name, at: directory, config)
        }
    }

    /// A container's cgroup appeared in the directory of a pod the runtime
    /// did not know yet (at first its sandbox's, some 30 ms before
    /// RunPodSandbox returns): the runtime is about to know it. Asked first
    /// when it knew the latest pods (sandboxTiming), then every hurriedEvery,
    /// for hurriedFor; meanwhile the pod's own task rests, and starts again
    /// if that time passes. Errors are the pod's own task's to report.
    func hurry(_ pod: Cgroup, _ workloads: Workloads, _ config: AgentConfig) {
        guard tasks.isRunning(.identify(pod.path)), !tasks.isRunning(.hurried(pod.path)),
            case .pod(let uid) = CgroupNaming.kind(of: pod.path.lastComponent?.string ?? "")
        else { return }
        tasks.stop(.identify(pod.path))
        let (timing, report, firstAsk) = (timing, report, sandboxTiming.firstAsk)
        tasks.start(.hurried(pod.path), on: EventLoopTaskExecutor.runtimes) {
            let hurried = ContinuousClock.now
            var asked = Duration.zero
            guard await pause(firstAsk) else { return }
            while ContinuousClock.now - hurried < timing.hurriedFor {
                let asking = ContinuousClock.now - hurried
                // A failure is the pod's own task's to say; here it is one more ask.
                if let found = try? await workloads.identify(.pod(uid: uid), at: pod, config) {
                    report(.podKnown(found, between: asked, and: asking))
                    return
                }
                asked = asking
                guard await pause(timing.hurriedEvery) else { return }
            }
            report(.podNotYetKnown(pod, uid: uid))
        }
    }

    /// The runtime knew a hurried pod between these times after it was hurried.
    func podKnown(between earlier: Duration, and later: Duration) {
        sandboxTiming.known(between: earlier, and: later)
    }

    /// A new cgroup's answer came (or it went): its tasks end.
    func stop(_ path: FilePath) {
        tasks.stop(.identify(path))
        tasks.stop(.hurried(path))
    }

    func isAsking(about path: FilePath) -> Bool {
        tasks.isRunning(.identify(path)) || tasks.isRunning(.hurried(path))
    }

    /// Asks `identify` about a new cgroup in a task of its own, first after
    /// `firstAsk`, then more rarely each time, until it answers or
    /// identifyFor has passed. A failed call (the runtime's connection
    /// dropped, a restart) is said and asked again like an unknown cgroup: a
    /// pod whose first ask fails still gets its policy before its first
    /// container starts, not at the next full pass.
    private func ask(
        about directory: Cgroup,
        after firstAsk: Duration = .zero,
        startingEvery first: Duration,
        _ identify: @escaping @Sendable (_ attempt: Int) async throws(RuntimeError) -> Identified?
    ) {
        let (timing, report, path) = (timing, report, directory.path)
        tasks.start(.identify(path), on: EventLoopTaskExecutor.runtimes) {
            var delay = first
            var attempt = 0
            var failure: RuntimeError?
            let deadline = ContinuousClock.now + timing.identifyFor
            guard await pause(firstAsk) else { return }
            while true {
                attempt += 1
                do throws(RuntimeError) {
                    if let found = try await identify(attempt) {
                        report(.identified(found))
                        return
                    }
                    failure = nil
                } catch {
                    if Task.isCancelled { return }  // hurried or answered meanwhile: nothing to say
                    failure = error
                    report(.retrying(path, error))
                }
                guard ContinuousClock.now < deadline else {
                    report(failure.map { .failed(path, $0) } ?? .gaveUp(path))
                    return
                }
                guard await pause(delay) else { return }
                delay = min(delay * 2, timing.slowest)
            }
        }
    }
}

/// Sleeps; false when the task was cancelled meanwhile (stopped: it says nothing more).
func pause(_ duration: Duration) async -> Bool {
    do {
        if duration > .zero { try await Task.sleep(for: duration) }
        return !Task.isCancelled
    } catch {
        return false
    }
}
