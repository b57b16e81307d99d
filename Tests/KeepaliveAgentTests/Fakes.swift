// SPDX-License-Identifier: MIT
import Foundation
import Logging
import Synchronization

import struct SystemPackage.FilePath

@testable import KeepaliveAgent
@testable import KeepaliveCore
@testable import KeepaliveRuntime

/// The pinned state in memory: the policies by cgroup id, every call
/// counted, and the failures a kernel could give, on demand.
final class FakeStore: PolicyStore {
    var policies: [UInt64: PolicyRecord] = [:]
    /// Cgroups whose policy cannot be set (the map is full for them).
    var failingCgroups: Set<FilePath> = []
    /// Every call throws this (the state cannot be opened or written).
    var broken: (any Error)?
    var pinningState = Pinning.intact
    var changedElsewhere = false
    var events: [ReapedEvent] = []
    var eventsError: (any Error)?
    private(set) var calls: [String] = []

    let root = "/sys/fs/bpf/fake"

    func kernelFeatures() throws -> KernelFeatures { .everything }
    func pinning() -> Pinning { pinningState }
    func changedByAnother() -> Bool { changedElsewhere }
    func remake() throws { calls.append("remake") }

    func reconcile(
        _ desired: [Transaction.Desire],
        keeping: (UInt64, PolicyRecord) -> Bool
    ) throws
        -> (Transaction.Report, Transaction.Outcome)
    {
        calls.append("reconcile")
        if let broken { throw broken }
        let wanted = Set(desired.map(\.cgroup.id))
        var outcome = remove(policies.filter { !wanted.contains($0.key) && !keeping($0.key, $0.value) }.map(\.key))
        let enforced = set(desired)
        outcome.changes += enforced.changes
        outcome.failures += enforced.failures
        return (Transaction.Report(), outcome)
    }

    func enforce(_ desired: [Transaction.Desire]) throws -> Transaction.Outcome {
        calls.append("enforce " + desired.map(\.cgroup.path.string).sorted().joined(separator: ","))
        if let broken { throw broken }
        return set(desired)
    }

    func withdraw(_ ids: [UInt64]) throws -> Transaction.Outcome {
        calls.append("withdraw")
        if let broken { throw broken }
        return remove(ids)
    }

    func coverExistingSockets(of cgroup: Cgroup) throws -> SocketIterator.Result? { nil }

    func reapedEvents(after: UInt64) throws -> (events: [ReapedEvent], next: UInt64) {
        if let eventsError { throw eventsError }
        return (events, UInt64(events.count))
    }

    /// Paths with a policy, and its keepidle.
    var inForce: [String: Int32] {
        Dictionary(uniqueKeysWithValues: policies.values.map { ($0.path.string, $0.policy.keepidle) })
    }

    private func set(_ desired: [Transaction.Desire]) -> Transaction.Outcome {
        var outcome = Transaction.Outcome()
        for want in desired {
            guard !failingCgroups.contains(want.cgroup.path) else {
                outcome.failures.append(
                    Transaction.Failure(cgroup: want.cgroup.path, error: StateError.full(capacity: 1))
                )
                continue
            }
            let record = PolicyRecord(policy: want.policy, owner: .agent, path: want.cgroup.path, origin: want.origin)
            guard policies[want.cgroup.id] != record else { continue }
            let kind: AppliedChange.Kind = policies[want.cgroup.id] == nil ? .attached : .updated
            policies[want.cgroup.id] = record
            outcome.changes.append(
                AppliedChange(
                    kind: kind,
                    cgroup: want.cgroup.path,
                    cgroupID: want.cgroup.id,
                    policy: want.policy,
                    source: want.source,
                    origin: want.origin
                )
            )
        }
        return outcome
    }

    private func remove(_ ids: [UInt64]) -> Transaction.Outcome {
        var outcome = Transaction.Outcome()
        for id in ids {
            guard let record = policies.removeValue(forKey: id) else { continue }
            outcome.changes.append(.detached(record, id: id))
        }
        return outcome
    }
}

/// A runtime whose pods and containers a test sets, and whose calls fail on demand.
final class FakeRuntime: WorkloadRuntime {
    struct State {
        var pods: [PodInfo] = []
        /// container -> its cgroup path
        var containers: [(ContainerInfo, FilePath)] = []
        /// pod sandbox id -> its cgroup path
        var podCgroups: [String: FilePath] = [:]
        /// The next this many calls fail.
        var failures = 0
        var down = false
        var identifyCalls = 0
        var locateCalls = 0
    }

    let kind: RuntimeKind
    let state = Mutex(State())
    var hasEndpoint: Bool { true }

    init(_ kind: RuntimeKind) { self.kind = kind }

    private var error: RuntimeError { .unreachable(kind, endpoint: "unix:///fake.sock", "connection refused") }

    /// Throws if the runtime is down or one of the next failures is due.
    private func call() throws(RuntimeError) {
        let failing = state.withLock { state in
            guard !state.down else { return true }
            guard state.failures > 0 else { return false }
            state.failures -= 1
            return true
        }
        if failing { throw error }
    }

    func probe() async throws(RuntimeError) { try call() }

    func workloads(_ config: AgentConfig) async throws(RuntimeError) -> [ListedWorkload] {
        try call()
        let (pods, podCgroups, containers) = state.withLock { ($0.pods, $0.podCgroups, $0.containers) }
        var listed: [ListedWorkload] = []
        if config.selectsPods {
            for pod in pods {
                listed.append(
                    ListedWorkload(pod, config) { [self] in
                        self.state.withLock { $0.locateCalls += 1 }
                        guard let path = podCgroups[pod.sandboxID] else {
                            throw RuntimeError.noCgroup("pod \(pod.qualifiedName)", "its status names none")
                        }
                        return path
                    }
                )
            }
        }
        if config.selectsContainers {
            for (container, path) in containers {
                listed.append(
                    ListedWorkload(
                        id: container.id,
                        name: container.name,
                        origin: container.origin,
                        entry: config.selecting(container)
                    ) { [self] in
                        self.state.withLock { $0.locateCalls += 1 }
                        return path
                    }
                )
            }
        }
        return listed
    }

    func identify(_ question: CgroupQuestion) async throws(RuntimeError) -> Identified? {
        let (name, directory, config) = (question.name, question.directory, question.config)
        state.withLock { $0.identifyCalls += 1 }
        try call()
        switch name {
        case .pod(let uid) where kind == .cri:
            let pod = state.withLock { $0.pods.first { $0.uid == uid } }
            return pod.map { .pod($0, directory, config.selecting($0)) }
        case .container(let id, _):
            let container = state.withLock { $0.containers.first { $0.0.id == id }?.0 }
            return container.map { .container($0, directory, config.selecting($0)) }
        default:
            return nil
        }
    }

    func shutdown() {}
}

extension PodInfo {
    static func named(
        _ namespace: String,
        _ name: String,
        uid: String,
        labels: [String: String] = [:],
        annotations: [String: String] = [:]
    ) -> PodInfo {
        PodInfo(
            sandboxID: "sandbox-\(uid)",
            uid: uid,
            namespace: namespace,
            name: name,
            labels: labels,
            annotations: annotations
        )
    }
}

/// Every line logged, for tests that count them.
final class LogLines: Sendable {
    private let lines = Mutex<[(level: Logger.Level, message: String)]>([])

    var all: [(level: Logger.Level, message: String)] { lines.withLock { $0 } }

    func count(_ level: Logger.Level, containing text: String) -> Int {
        all.filter { $0.level == level && $0.message.contains(text) }.count
    }

    func logger() -> Logger {
        Logger(label: "test") { _ in Handler(lines: self) }
    }

    func append(_ level: Logger.Level, _ message: String) { lines.withLock { $0.append((level, message)) } }

    struct Handler: LogHandler {
        let lines: LogLines
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) { lines.append(event.level, "\(event.message)") }
    }
}

/// A directory tree standing in for the cgroup2 mount (ids are inode numbers, as there).
struct FakeCgroupTree {
    let root: URL
    let cgroups: CgroupFS

    init() throws {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("ka-agent-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        cgroups = CgroupFS(mount: FilePath(root.path))
    }

    @discardableResult
    func mkdir(_ path: String) throws -> Cgroup {
        try FileManager.default.createDirectory(
            at: root.appendingPathComponent(path),
            withIntermediateDirectories: true
        )
        return cgroups.cgroup(at: FilePath(path))!
    }

    func rmdir(_ path: String) throws {
        try FileManager.default.removeItem(at: root.appendingPathComponent(path))
    }

    func remove() { try? FileManager.default.removeItem(at: root) }  // a temporary directory: best effort
}
