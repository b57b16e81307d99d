// SPDX-License-Identifier: MIT
import KeepaliveCore
import KeepaliveRuntime

import struct SystemPackage.FilePath

/// Pods and containers: a new cgroup is noticed by inotify, then identified
/// through its runtime (Identification); what the runtimes answer comes back
/// as WorkloadEvents.
extension Enforcer {
    func workloadAppeared(_ cgroup: Cgroup, _ watcher: CgroupWatcher) {
        guard !config.runtimesNeeded.isEmpty else { return }
        if Workloads.isParent(cgroup.path) {
            // Watched from now on; what was made in it before the watch is looked at as new.
            watchEverything([cgroup.path], watcher)
            do {
                for child in try parts.cgroups.children(of: cgroup.path) { workloadAppeared(child, watcher) }
                report(.unreadableParent(cgroup.path), nil)
            } catch {
                retryDue = true  // the next full pass looks again
                report(.unreadableParent(cgroup.path), "\(error): its pods and containers wait for the next pass")
            }
            return
        }
        guard let name = cgroup.path.lastComponent?.string else { return }
        let kind = CgroupNaming.kind(of: name)
        switch kind {
        case .pod(let uid) where config.selectsPods:
            identification.identifyPod(uid: uid, at: cgroup, workloads, config)
            // Its sandbox's own cgroup says when the runtime is about to know
            // the pod: watched from now on, and looked for at once (it may be there already).
            watchEverything([cgroup.path], watcher)
            do {
                for child in try parts.cgroups.children(of: cgroup.path) { workloadAppeared(child, watcher) }
            } catch {
                // The pod's task asks anyway; only its haste is lost.
                parts.logger.debug("cannot list \(cgroup.display): \(error)")
            }
        case .container(_, let family):
            let parent = cgroup.path.removingLastComponent()
            if family != .docker, let pod = parts.cgroups.cgroup(at: parent) {
                identification.hurry(pod, workloads, config)
            }
            if config.selectsContainers { identification.identifyContainer(kind, at: cgroup, workloads, config) }
        default:
            break
        }
    }

    func stopIdentifying() {
        tasks.stopAll()
    }

    // MARK: results

    func handle(_ event: WorkloadEvent, _ watcher: CgroupWatcher) async {
        switch event {
        case .podKnown(let found, let earlier, let later):
            identification.podKnown(between: earlier, and: later)
            await handle(.identified(found), watcher)
        case .podNotYetKnown(let pod, let uid):
            identification.identifyPod(uid: uid, at: pod, workloads, config)
        case .identified(let found):
            identification.stop(found.cgroup.path)
            report(.identify(found.cgroup.path), nil)
            switch found {
            case .pod(let pod, let cgroup, let entry?):
                logProblems(entry.problems, of: pod)
                select(choice(cgroup, spec: entry.spec, policy: entry.policy, origin: pod.origin))
            case .container(let container, let cgroup, let entry?):
                select(choice(cgroup, spec: entry.spec, policy: entry.policy, origin: container.origin))
            default:
                break  // no entry selects it
            }
        case .retrying(let path, let why):
            report(.identify(path), "cannot identify the workload of \(path.cgroupDisplay): \(why); asked again")
        case .failed(let path, let why):
            identification.stop(path)
            retryDue = true
            report(.identify(path), "cannot identify the workload of \(path.cgroupDisplay): \(why); retried")
        case .gaveUp(let path):
            identification.stop(path)
            report(.identify(path), nil)
            parts.logger.debug("no runtime knows \(path.cgroupDisplay): left to the periodic passes")
        case .probed(let kind, let error):
            probing.remove(kind)
            await runtime(kind, answered: error, watcher)
        }
    }

    private func select(_ choice: Choice?) {
        guard let choice, desired.insertIfLater(choice) else { return }  // a later entry has it
        passOnly([choice.cgroup.id])
    }

    /// A pod's ignored annotations, once each for as long as the pod has them.
    private func logProblems(_ problems: [PodAnnotations.Problem], of pod: PodInfo) {
        for problem in problems where annotationProblems.insert("\(pod.qualifiedName) \(problem)").inserted {
            parts.logger.warning("pod \(pod.qualifiedName) \(problem)")
        }
    }

    // MARK: runtimes up and down

    /// Asks each runtime in use whether it answers, in tasks of their own.
    func probeRuntimes() {
        for runtime in workloads.inUse(by: config) where probing.insert(runtime.kind).inserted {
            let (workloads, input) = (workloads, input)
            tasks.start(.probe(runtime.kind), on: EventLoopTaskExecutor.runtimes) {
                input.yield(.workload(.probed(runtime.kind, await workloads.probe(runtime))))
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
        parts.metrics.setRuntimeUp(kind.rawValue, error == nil)
        if let error, wasUp != false {
            parts.logger.error("\(error); every policy stays in force, retried")
        } else if error == nil, wasUp == false {
            parts.logger.notice("\(kind.title) answers again: resolving pods and containers anew")
        }
    }

    /// What a full pass learnt of the runtimes: which answered, what could not be placed, what was ignored.
    func reportRuntimes(_ found: WorkloadResolution) {
        for runtime in workloads.inUse(by: config) { noteRuntime(runtime.kind, found.failures[runtime.kind]) }
        // A workload still not placed stays said once; a new cgroup's identification is this pass's now.
        let unplaced = Set(found.unplaced.keys)
        problems.resolve { problem in
            switch problem {
            case .place(let name): !unplaced.contains(name)
            case .identify: true
            default: false
            }
        }
        for (name, why) in found.unplaced { report(.place(name), "cannot find the cgroup of \(name): \(why); retried") }
        // Each said once while the pod has it; said again if it comes back.
        let current = Set(found.problems.flatMap { pod, problems in problems.map { "\(pod) \($0)" } })
        for line in current.subtracting(annotationProblems).sorted() { parts.logger.warning("pod \(line)") }
        annotationProblems = current
    }
}
