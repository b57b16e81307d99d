// SPDX-License-Identifier: MIT
import KeepaliveCore
import KeepaliveRuntime
import NIOPosix
import Synchronization

import struct SystemPackage.FilePath

/// What the runtimes said in one full pass.
struct WorkloadResolution: Sendable {
    var selected: [UInt64: SelectedWorkload] = [:]
    /// The cgroups of every workload the runtimes named and keepalive placed.
    /// A policy set for a workload is withdrawn only when its cgroup is among
    /// them and no entry selects it: a runtime that said nothing proves nothing.
    var known: Set<UInt64> = []
    /// Runtimes that did not answer, and why.
    var failures: [RuntimeKind: RuntimeError] = [:]
    /// Workloads whose cgroup could not be found, and why.
    var unplaced: [String: String] = [:]
    /// Annotations ignored, by pod.
    var problems: [String: [PodAnnotations.Problem]] = [:]
    /// Directories where more pods and containers appear: their parents.
    var parents: Set<FilePath> = []

    mutating func select(_ cgroup: Cgroup, _ entry: SelectingEntry, origin: Origin) {
        if let present = selected[cgroup.id], present.spec > entry.spec { return }
        selected[cgroup.id] = SelectedWorkload(cgroup: cgroup, spec: entry.spec, policy: entry.policy, origin: origin)
    }
}

/// A pod or container the policy file selects: its cgroup, the entry that
/// selects it and the values it gets (a pod's annotations may change them).
struct SelectedWorkload: Sendable {
    let cgroup: Cgroup
    let spec: Int
    let policy: Policy
    let origin: Origin
}

/// The agent's view of pods and containers through the runtimes it has, and
/// what never changes cached (a sandbox's or a container's cgroup).
final class Workloads: Sendable {
    let runtimes: [any WorkloadRuntime]
    let cgroups: CgroupFS
    /// sandbox id or container id -> its cgroup below the hierarchy's root.
    private let placed = Mutex<[String: FilePath]>([:])

    init(_ runtimes: [any WorkloadRuntime], cgroups: CgroupFS) {
        self.runtimes = runtimes
        self.cgroups = cgroups
    }

    /// Directories where kubelet and the runtimes make pods' and containers'
    /// cgroups under either driver, watched from the start (those that exist).
    static let usualParents: [FilePath] = [
        "kubepods", "kubepods/besteffort", "kubepods/burstable",
        "kubepods.slice", "kubepods.slice/kubepods-besteffort.slice", "kubepods.slice/kubepods-burstable.slice",
        "libpod_parent", "machine.slice", "system.slice", "docker",
    ]

    /// Whether a directory that appeared is one where workloads appear, to be watched too.
    static func isParent(_ path: FilePath) -> Bool { usualParents.contains(path) }

    /// The usual parents that exist, and for those that do not (yet: kubelet
    /// or a runtime starts later) the nearest ancestor that does, to see them come.
    func usualParentsOrWhereTheyAppear() -> Set<FilePath> {
        Set(
            Self.usualParents.map { path in
                var nearest = path
                while !nearest.isEmpty && cgroups.cgroup(at: nearest) == nil { nearest.removeLastComponent() }
                return nearest
            }
        )
    }

    /// The runtimes the file needs that are there to be asked: with an
    /// endpoint named or found; CRI always when pods are selected (without
    /// it they cannot be found, which must show).
    func inUse(by config: AgentConfig) -> [any WorkloadRuntime] {
        let needed = config.runtimesNeeded
        return runtimes.filter { runtime in
            needed.contains(runtime.kind) && (runtime.hasEndpoint || (runtime.kind == .cri && config.selectsPods))
        }
    }

    func shutdown() {
        for runtime in runtimes { runtime.shutdown() }
    }

    /// One cheap call: whether the runtime answers now.
    func probe(_ runtime: any WorkloadRuntime) async -> RuntimeError? {
        do {
            try await runtime.probe()
            return nil
        } catch {
            return error
        }
    }

    // MARK: full resolution

    /// Every workload the runtimes list, placed and matched against the file.
    func resolve(_ config: AgentConfig) async -> WorkloadResolution {
        var resolution = WorkloadResolution()
        for runtime in inUse(by: config) {
            do {
                for workload in try await runtime.workloads(config) {
                    guard let cgroup = await place(workload, into: &resolution) else { continue }
                    guard let entry = workload.entry else { continue }
                    if !entry.problems.isEmpty { resolution.problems[workload.name] = entry.problems }
                    resolution.select(cgroup, entry, origin: workload.origin)
                }
            } catch {
                resolution.failures[runtime.kind] = error
            }
        }
        return resolution
    }

    /// A workload's cgroup, from the cache or asked; marks it known. nil if
    /// it cannot be placed now (said in `unplaced`) or its cgroup is gone.
    private func place(_ workload: ListedWorkload, into resolution: inout WorkloadResolution) async -> Cgroup? {
        var path = placed.withLock { $0[workload.id] }
        if path == nil {
            do {
                path = try await workload.locate()
            } catch {
                resolution.unplaced[workload.name] = "\(error)"
                return nil
            }
            placed.withLock { $0[workload.id] = path }
        }
        guard let path, let cgroup = await cgroup(at: path) else { return nil }
        resolution.known.insert(cgroup.id)
        resolution.parents.insert(path.removingLastComponent())
        return cgroup
    }

    /// A stat, off the runtimes' event loop (it serves their connections).
    private func cgroup(at path: FilePath) async -> Cgroup? {
        let cgroups = self.cgroups
        // An inactive pool (the process is ending) is the same as a cgroup not found now: retried.
        return (try? await NIOThreadPool.singleton.runIfActive { cgroups.cgroup(at: path) }) ?? nil
    }

    /// Forgets what was cached for workloads whose cgroup is gone.
    func forget(below path: FilePath) {
        placed.withLock { placed in placed = placed.filter { !$0.value.starts(with: path) } }
    }

    // MARK: one new cgroup

    /// What one new directory is, asked of the runtimes now (nil while none
    /// knows it: RunPodSandbox returns after the pod's cgroup is made). A
    /// runtime that fails is said only if no other one knew it.
    func identify(
        _ name: CgroupNaming.Kind,
        at directory: Cgroup,
        _ config: AgentConfig,
        fullList: Bool = false
    ) async throws(RuntimeError) -> Identified? {
        let question = CgroupQuestion(name: name, directory: directory, config: config, fullList: fullList)
        var failure: RuntimeError?
        for runtime in runtimes {
            do {
                if let found = try await runtime.identify(question) {
                    if case .pod(let pod, _, _) = found {
                        placed.withLock { $0[pod.sandboxID] = directory.path }
                    }
                    return found
                }
            } catch {
                failure = failure ?? error
            }
        }
        if let failure { throw failure }
        return nil
    }
}
