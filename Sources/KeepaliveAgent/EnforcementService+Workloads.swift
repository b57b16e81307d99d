// SPDX-License-Identifier: MIT
import KeepaliveCore
import KeepaliveRuntime
import Logging
import struct SystemPackage.FilePath

/// What tasks asking the runtimes report to the enforcement loop.
enum WorkloadEvent: Sendable {
    /// A new cgroup's pod or container, and the entry that selects it (if one does).
    case identified(Workloads.Identified)
    /// The runtime could not be asked this time (a dropped connection): the
    /// task asks again.
    case retrying(FilePath, String)
    /// The runtime could not be asked until the task's time ran out: a full pass retries.
    case failed(FilePath, String)
    /// No runtime knew the cgroup within the time allowed: not a workload of theirs.
    case gaveUp(FilePath)
    /// The runtime knew a hurried pod when asked `later` after it was
    /// hurried, not when asked `earlier`.
    case podKnown(Workloads.Identified, between: Duration, and: Duration)
    /// The runtime did not know a hurried pod within hurriedFor: its own task asks on.
    case podNotYetKnown(Cgroup, uid: String)
    /// A runtime answered (nil) or not, when probed.
    case probed(RuntimeKind, RuntimeError?)
}

/// Pods and containers: a new cgroup is noticed by inotify, then identified
/// through its runtime in a task of its own (kubelet makes a pod's cgroup
/// before RunPodSandbox returns, so the runtime may not know it yet: asked
/// again, and in haste once a container's cgroup, at first the sandbox's
/// own, appears in it).
extension Enforcer {
    /// How long a new pod cgroup is asked about before it is left to the full passes.
    static let identifyFor = Duration.seconds(60)
    /// A pod is hurried (a container's cgroup appeared in it, at first its
    /// sandbox's, some 30 ms before RunPodSandbox returns): asked this often, for this long.
    static let hurriedEvery = Duration.milliseconds(5)
    static let hurriedFor = Duration.seconds(1)

    /// Where a hurried pod's task is kept in `pending`, beside its own task's.
    static func hurriedKey(_ pod: FilePath) -> FilePath { FilePath(pod.string + "#hurried") }

    func workloadAppeared(_ cgroup: Cgroup, _ watcher: CgroupWatcher) {
        guard !config.runtimesNeeded.isEmpty else { return }
        if Workloads.isParent(cgroup.path) {
            // Watched from now on; what was made in it before the watch is looked at as new.
            watchEverything([cgroup.path], watcher)
            do {
                for child in try state.cgroups.children(of: cgroup.path) { workloadAppeared(child, watcher) }
            } catch {
                failing = true  // the next full pass looks again
                report("unreadable \(cgroup.display)", "\(error): its pods and containers wait for the next pass")
            }
            return
        }
        guard let name = cgroup.path.lastComponent?.string else { return }
        switch CgroupNaming.kind(of: name) {
        case .pod(let uid) where config.selectsPods:
            identifyPod(uid: uid, at: cgroup)
            // Its sandbox's own cgroup says when the runtime is about to know
            // the pod: watched from now on, and looked for at once (it may be
            // there already).
            watchEverything([cgroup.path], watcher)
            for child in (try? state.cgroups.children(of: cgroup.path)) ?? [] {  // unreadable: the pod task asks anyway
                workloadAppeared(child, watcher)
            }
        case .container(let id, let family):
            let parent = cgroup.path.removingLastComponent()
            if family != .docker, let pod = state.cgroups.cgroup(at: parent) { hurry(pod) }
            if config.selectsContainers { identifyContainer(id: id, family: family, at: cgroup) }
        default:
            break
        }
    }

    func workloadVanished(_ path: FilePath) {
        stopPending(path)
        workloads.forget(below: path)
    }

    private func identifyPod(uid: String, at directory: Cgroup) {
        // kubelet labels sandboxes with their pod's uid; now and then ask
        // for every pod, for runtimes driven by something else. Not at once:
        // kubelet makes the pod's cgroup before it asks for the sandbox, and
        // the sandbox's cgroup hurries the pod when the runtime is about to
        // know it; this task is for runtimes that show no such sign.
        let (workloads, config) = (workloads, config)
        ask(about: directory, after: .milliseconds(100), startingEvery: .milliseconds(100)) { attempt in
            try await workloads.identifyPod(uid: uid, at: directory, config, fullList: attempt % 4 == 0)
        }
    }

    /// A container's cgroup appeared in the directory of a pod the runtime
    /// did not know yet (at first its sandbox's, some 30 ms before
    /// RunPodSandbox returns): the runtime is about to know it. Asked first
    /// when it knew the latest pods (sandboxTiming), then every 5 ms, for a
    /// second; meanwhile the pod's own task rests, and starts again if the
    /// second passes. Errors are the pod's own task's to report.
    private func hurry(_ pod: Cgroup) {
        let key = Self.hurriedKey(pod.path)
        guard pending[pod.path] != nil, pending[key] == nil,
              case .pod(let uid) = CgroupNaming.kind(of: pod.path.lastComponent?.string ?? "") else { return }
        pending.removeValue(forKey: pod.path)?.cancel()
        let (workloads, config, report, firstAsk) = (workloads, config, input, sandboxTiming.firstAsk)
        pending[key] = Task.detached(executorPreference: EventLoopTaskExecutor.runtimes) {
            let hurried = ContinuousClock.now
            var asked = Duration.zero
            try? await Task.sleep(for: firstAsk)  // cancelled: the loop's condition ends it
            while !Task.isCancelled && ContinuousClock.now - hurried < Self.hurriedFor {
                let asking = ContinuousClock.now - hurried
                if let found = try? await workloads.identifyPod(uid: uid, at: pod, config, fullList: false) {
                    report.yield(.workload(.podKnown(found, between: asked, and: asking)))
                    return
                }
                asked = asking
                try? await Task.sleep(for: Self.hurriedEvery)  // cancelled: the loop's condition ends it
            }
            if !Task.isCancelled { report.yield(.workload(.podNotYetKnown(pod, uid: uid))) }
        }
    }

    private func identifyContainer(id: String, family: CgroupNaming.RuntimeFamily, at directory: Cgroup) {
        let (workloads, config) = (workloads, config)
        ask(about: directory, startingEvery: .milliseconds(50)) { _ in
            try await workloads.identifyContainer(id: id, family: family, at: directory, config)
        }
    }

    /// Asks `identify` about a new cgroup in a task of its own, first after
    /// `firstAsk`, then more rarely each time, until it answers or
    /// identifyFor has passed. A failed call (the runtime's connection
    /// dropped, a restart) is said and asked again like an unknown cgroup: a
    /// pod whose first ask fails still gets its policy before its first
    /// container starts, not at the next full pass.
    private func ask(about directory: Cgroup, after firstAsk: Duration = .zero, startingEvery first: Duration,
                     _ identify: @escaping @Sendable (_ attempt: Int) async throws -> Workloads.Identified?) {
        guard pending[directory.path] == nil else { return }
        let report = input
        pending[directory.path] = Task.detached(executorPreference: EventLoopTaskExecutor.runtimes) {
            var delay = first, attempt = 0, failure: String?
            let deadline = ContinuousClock.now + Self.identifyFor
            try? await Task.sleep(for: firstAsk)  // cancelled: the loop's condition ends it
            while !Task.isCancelled {
                attempt += 1
                do {
                    if let found = try await identify(attempt) {
                        report.yield(.workload(.identified(found)))
                        return
                    }
                    failure = nil
                } catch {
                    if Task.isCancelled { return }  // hurried or answered meanwhile: nothing to say
                    failure = "\(error)"
                    report.yield(.workload(.retrying(directory.path, "\(error)")))
                }
                guard ContinuousClock.now < deadline else {
                    report.yield(.workload(failure.map { .failed(directory.path, $0) } ?? .gaveUp(directory.path)))
                    return
                }
                try? await Task.sleep(for: delay)  // cancelled: the loop's condition ends it
                delay = min(delay * 2, .seconds(2))
            }
        }
    }

    /// The runtime answered about the cgroup: its task ends, and a failure
    /// said on the way is resolved.
    private func settled(_ path: FilePath) {
        stopPending(path)
        report("identify \(path.cgroupDisplay)", nil)
    }

    private func stopPending(_ path: FilePath) {
        for key in [path, Self.hurriedKey(path)] { pending.removeValue(forKey: key)?.cancel() }
    }

    func stopWorkloadTasks() {
        for task in pending.values { task.cancel() }
        pending = [:]
    }

    // MARK: results

    func handle(_ event: WorkloadEvent, _ watcher: CgroupWatcher) async {
        switch event {
        case .podKnown(let found, let earlier, let later):
            sandboxTiming.known(between: earlier, and: later)
            await handle(.identified(found), watcher)
        case .podNotYetKnown(let pod, let uid):
            pending[Self.hurriedKey(pod.path)] = nil
            identifyPod(uid: uid, at: pod)
        case .identified(.pod(let pod, let cgroup, let entry)):
            settled(cgroup.path)
            guard let entry else { return }
            logProblems(entry.problems, of: pod)
            select(choice(cgroup, spec: entry.spec, policy: entry.policy, origin: pod.origin))
        case .identified(.container(let container, let cgroup, let entry)):
            settled(cgroup.path)
            guard let entry else { return }
            select(choice(cgroup, spec: entry.spec, policy: entry.policy, origin: container.origin))
        case .retrying(let path, let why):
            report("identify \(path.cgroupDisplay)", "cannot identify the workload of \(path.cgroupDisplay): \(why); asked again")
        case .failed(let path, let why):
            stopPending(path)
            failing = true
            report("identify \(path.cgroupDisplay)", "cannot identify the workload of \(path.cgroupDisplay): \(why); retried")
        case .gaveUp(let path):
            settled(path)
            logger.debug("no runtime knows \(path.cgroupDisplay): left to the periodic passes")
        case .probed(let kind, let error):
            probing.remove(kind)
            await runtime(kind, answered: error, watcher)
        }
    }

    private func select(_ choice: Choice?) {
        guard let choice, (desired[choice.cgroup.id]?.spec ?? -1) <= choice.spec else { return }  // a later entry has it
        desired.insertIfLater(choice)
        passOnly([choice.cgroup.id])
    }

    /// A pod's ignored annotations, once each for as long as the pod has them.
    private func logProblems(_ problems: [PodAnnotations.Problem], of pod: PodInfo) {
        for problem in problems where annotationProblems.insert("\(pod.qualifiedName) \(problem)").inserted {
            logger.warning("pod \(pod.qualifiedName) \(problem)")
        }
    }

    // MARK: runtimes up and down

    /// Asks each runtime in use whether it answers, in tasks of their own.
    func probeRuntimes() {
        for kind in workloads.inUse(by: config) where probing.insert(kind).inserted {
            let (workloads, report) = (workloads, input)
            Task.detached(executorPreference: EventLoopTaskExecutor.runtimes) {
                report.yield(.workload(.probed(kind, await workloads.probe(kind))))
            }
        }
    }

    private func runtime(_ kind: RuntimeKind, answered error: RuntimeError?, _ watcher: CgroupWatcher) async {
        let wasUp = runtimeUp[kind]
        noteRuntime(kind, error)
        if error == nil && wasUp == false {
            await recoverablePass(watcher, because: "\(kind.title) answers again")
        }
    }

    /// Records whether a runtime answered: the gauge, and one log line when
    /// it stops answering (however its errors vary) and one when it is back.
    private func noteRuntime(_ kind: RuntimeKind, _ error: RuntimeError?) {
        let wasUp = runtimeUp[kind]
        runtimeUp[kind] = error == nil
        metrics.setRuntimeUp(kind.rawValue, error == nil)
        if let error, wasUp != false {
            logger.error("\(error); every policy stays in force, retried")
        } else if error == nil, wasUp == false {
            logger.notice("\(kind.title) answers again: resolving pods and containers anew")
        }
    }

    /// What a full pass learnt of the runtimes: which answered, what could not be placed, what was ignored.
    func reportRuntimes(_ found: WorkloadResolution) {
        for kind in workloads.inUse(by: config) { noteRuntime(kind, found.failures[kind]) }
        for key in reported.keys where key.hasPrefix("place ") || key.hasPrefix("identify ") { report(key, nil) }
        for (name, why) in found.unplaced { report("place \(name)", "cannot find the cgroup of \(name): \(why); retried") }
        // Each said once while the pod has it; said again if it comes back.
        let current = Set(found.problems.flatMap { pod, problems in problems.map { "\(pod) \($0)" } })
        for line in current.subtracting(annotationProblems).sorted() { logger.warning("pod \(line)") }
        annotationProblems = current
    }
}
