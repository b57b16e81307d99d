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
    /// A runtime answered (nil) or not, when probed.
    case probed(RuntimeKind, RuntimeError?)
}

/// Pods and containers: a new cgroup is noticed by inotify, then identified
/// through its runtime in a task of its own (kubelet makes a pod's cgroup
/// before RunPodSandbox returns, so the runtime may not know it yet: asked
/// again, and at once when the sandbox's own container appears in it).
extension Enforcer {
    /// How long a new pod cgroup is asked about before it is left to the full passes.
    static let identifyFor = Duration.seconds(60)
    /// The sandbox's own cgroup appears some 20 ms before RunPodSandbox
    /// returns: asked this often, for this long.
    static let sandboxPollInterval = Duration.milliseconds(5)
    static let sandboxPollFor = Duration.seconds(1)

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
            if pending[parent] != nil, family != .docker, let pod = state.cgroups.cgroup(at: parent) {
                probeSandbox(id: id, in: pod)
            }
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
        // for every pod, for runtimes driven by something else.
        let (workloads, config) = (workloads, config)
        ask(about: directory, startingEvery: .milliseconds(20)) { attempt in
            try await workloads.identifyPod(uid: uid, at: directory, config, fullList: attempt % 4 == 0)
        }
    }

    /// Asks for the sandbox whose own container's cgroup just appeared in a
    /// pod's directory, until the runtime knows it.
    private func probeSandbox(id: String, in pod: Cgroup) {
        let key = FilePath(pod.path.string + "#sandbox")
        guard pending[key] == nil else { return }
        let (workloads, config, report) = (workloads, config, resultsInput)
        pending[key] = Task.detached {
            let deadline = ContinuousClock.now + Self.sandboxPollFor
            while !Task.isCancelled && ContinuousClock.now < deadline {
                // Errors are the pod task's to report; this one only hurries it.
                if let found = try? await workloads.identifySandbox(id: id, in: pod, config) {
                    report.yield(.identified(found))
                    return
                }
                try? await Task.sleep(for: Self.sandboxPollInterval)  // cancelled: the loop's condition ends it
            }
        }
    }

    private func identifyContainer(id: String, family: CgroupNaming.RuntimeFamily, at directory: Cgroup) {
        let (workloads, config) = (workloads, config)
        ask(about: directory, startingEvery: .milliseconds(50)) { _ in
            try await workloads.identifyContainer(id: id, family: family, at: directory, config)
        }
    }

    /// Asks `identify` about a new cgroup in a task of its own, more rarely
    /// each time, until it answers or identifyFor has passed. A failed call
    /// (the runtime's connection dropped, a restart) is said and asked again
    /// like an unknown cgroup: a pod whose first ask fails still gets its
    /// policy before its first container starts, not at the next full pass.
    private func ask(about directory: Cgroup, startingEvery first: Duration,
                     _ identify: @escaping @Sendable (_ attempt: Int) async throws -> Workloads.Identified?) {
        guard pending[directory.path] == nil else { return }
        let report = resultsInput
        pending[directory.path] = Task.detached {
            var delay = first, attempt = 0, failure: String?
            let deadline = ContinuousClock.now + Self.identifyFor
            while !Task.isCancelled {
                attempt += 1
                do {
                    if let found = try await identify(attempt) {
                        report.yield(.identified(found))
                        return
                    }
                    failure = nil
                } catch {
                    if Task.isCancelled { return }  // answered meanwhile (by the sandbox's probe): nothing to say
                    failure = "\(error)"
                    report.yield(.retrying(directory.path, "\(error)"))
                }
                guard ContinuousClock.now < deadline else {
                    report.yield(failure.map { .failed(directory.path, $0) } ?? .gaveUp(directory.path))
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
        for key in [path, FilePath(path.string + "#sandbox")] { pending.removeValue(forKey: key)?.cancel() }
    }

    func stopWorkloadTasks() {
        for task in pending.values { task.cancel() }
        pending = [:]
    }

    // MARK: results

    func handle(_ event: WorkloadEvent, _ watcher: CgroupWatcher) async {
        switch event {
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

    private func select(_ choice: Choice) {
        guard (desired[choice.cgroup.id]?.spec ?? -1) <= choice.spec else { return }  // a later entry has it
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
            let (workloads, report) = (workloads, resultsInput)
            Task.detached { report.yield(.probed(kind, await workloads.probe(kind))) }
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
