// SPDX-License-Identifier: MIT
import Foundation
import NIOPosix
import Synchronization
import Testing

import struct SystemPackage.FilePath

@testable import KeepaliveAgent
@testable import KeepaliveCore
@testable import KeepaliveRuntime

/// An Enforcer over fakes: a directory tree for the cgroups, the pinned
/// state in memory, runtimes that answer as the test says. Its loop's inputs
/// are handled by the test, one at a time, as run() would.
final class Harness {
    let tree: FakeCgroupTree
    let store = FakeStore()
    let cri = FakeRuntime(.cri)
    let docker = FakeRuntime(.docker)
    let log = LogLines()
    let metrics = AgentMetrics()
    let health = Health()
    let configFile: URL
    let thread = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let enforcer: Enforcer
    let watcher: CgroupWatcher
    /// The loop's inputs as they came, for handleInputs.
    private let pending = Pending()
    final class Pending: Sendable {
        let inputs = Mutex<[Enforcer.Input]>([])
    }

    static let quick = Identification.Timing(
        identifyFor: .milliseconds(300),
        slowest: .milliseconds(20),
        podFirstAsk: .zero,
        podEvery: .milliseconds(5),
        containerEvery: .milliseconds(5),
        hurriedEvery: .milliseconds(2),
        hurriedFor: .milliseconds(200)
    )

    init(_ policyFile: String, features: KernelFeatures = .everything, timing: Identification.Timing = quick) throws {
        tree = try FakeCgroupTree()
        configFile = tree.root.appendingPathExtension("yaml")
        try policyFile.write(to: configFile, atomically: true, encoding: .utf8)
        let runtimes: [any WorkloadRuntime] = [docker, cri]
        // The test reads the store only between awaited calls of the enforcer: never at once.
        nonisolated(unsafe) let parts = Enforcer.Parts(
            configPath: configFile.path,
            store: store,
            cgroups: tree.cgroups,
            features: features,
            makeRuntimes: { _, _, _ in runtimes },
            logger: log.logger(),
            health: health,
            metrics: metrics,
            timing: timing
        )
        enforcer = try Enforcer(parts, config: try Agent.loadConfig(configFile.path), on: thread.next())
        watcher = try CgroupWatcher(cgroups: tree.cgroups)
    }

    /// Runs `body` with the Enforcer's tasks running, then ends them and removes what was made.
    func run(_ body: (Harness) async throws -> Void) async throws {
        let (tasks, inputs, pending) = (enforcer.tasks, enforcer.inputs, pending)
        defer {
            tree.remove()
            try? FileManager.default.removeItem(at: configFile)  // best effort: a temporary file
        }
        do {
            try await withThrowingDiscardingTaskGroup { group in
                group.addTask { await tasks.run() }
                group.addTask { for await input in inputs { pending.inputs.withLock { $0.append(input) } } }
                defer {
                    tasks.finish()
                    group.cancelAll()  // ends the inputs' stream
                }
                try await body(self)
            }
        } catch {
            try await thread.shutdownGracefully()
            throw error
        }
        try await thread.shutdownGracefully()
    }

    /// Handles the loop's inputs as they come until `done` holds (which may
    /// come true with no input: a fake runtime's state read by the test).
    func handleInputs(until done: () async -> Bool) async throws {
        while await !done() {
            if let next = pending.inputs.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) {
                try await enforcer.handle(next, watcher)
            } else {
                try await Task.sleep(for: .milliseconds(1))
            }
        }
    }

    func writePolicies(_ text: String) throws { try text.write(to: configFile, atomically: true, encoding: .utf8) }

    func metricsText() -> String { String(decoding: metrics.registry.emitToBuffer(), as: UTF8.self) }
}

extension Enforcer {
    /// As if the last full pass was `ago`.
    func lastFullPass(ago: Duration) { lastFullPass = .now - ago }
    func isAsking(about path: FilePath) -> Bool { identification.isAsking(about: path) }
}

@Suite(.timeLimit(.minutes(1))) struct EnforcerTests {
    static let services = """
        policies:
          - cgroup: "svc/*"
            keepidle: 30
        """

    @Test func aFullPassEnforcesTheFileAndEachCgroupThatComesOrGoesCostsOneSmallPass() async throws {
        try await Harness(Self.services).run { h in
            try h.tree.mkdir("svc/a")
            try h.tree.mkdir("other")
            try await h.enforcer.fullPass(h.watcher)
            #expect(h.store.inForce == ["svc/a": 30])
            try h.tree.mkdir("svc/b")
            await h.enforcer.cgroupAppeared("svc/b", h.watcher)
            #expect(h.store.inForce == ["svc/a": 30, "svc/b": 30])
            #expect(h.store.calls == ["reconcile", "enforce svc/b"])
            try h.tree.rmdir("svc/b")
            await h.enforcer.cgroupVanished("svc/b")
            #expect(h.store.inForce == ["svc/a": 30])
            #expect(h.store.calls.last == "withdraw")
            #expect(h.metricsText().contains("keepalive_agent_selected_cgroups 1"))
        }
    }

    @Test func aCgroupThatCannotGetItsPolicyIsSaidOnceRetriedAndSaidResolved() async throws {
        try await Harness(Self.services).run { h in
            try h.tree.mkdir("svc/a")
            try h.tree.mkdir("svc/b")
            h.store.failingCgroups = ["svc/b"]
            try await h.enforcer.fullPass(h.watcher)
            #expect(h.store.inForce == ["svc/a": 30])
            #expect(h.metricsText().contains("keepalive_agent_failing_cgroups 1"))
            await h.enforcer.lastFullPass(ago: .seconds(11))
            #expect(await h.enforcer.fullPassDue(h.watcher) == "retrying what failed")
            try await h.enforcer.fullPass(h.watcher)  // still failing: not said again
            #expect(h.log.count(.error, containing: "cannot enforce the policy on svc/b") == 1)
            #expect(h.metricsText().contains(#"keepalive_agent_problems_total{kind="cgroup"} 1"#))
            h.store.failingCgroups = []
            try await h.enforcer.fullPass(h.watcher)
            #expect(h.store.inForce == ["svc/a": 30, "svc/b": 30])
            #expect(h.log.count(.notice, containing: "resolved: cgroup svc/b") == 1)
            #expect(h.metricsText().contains("keepalive_agent_failing_cgroups 0"))
            #expect(await h.enforcer.retryDue == false)
        }
    }

    @Test func aStateThatCannotBeWrittenFailsLivenessUntilAPassSucceeds() async throws {
        try await Harness(Self.services).run { h in
            try h.tree.mkdir("svc/a")
            h.store.broken = AgentError("bpf(BPF_MAP_UPDATE_ELEM): Operation not permitted")
            await h.enforcer.recoverablePass(h.watcher, because: "test")
            #expect(h.health.notAliveReason?.contains("Operation not permitted") == true)
            await h.enforcer.recoverablePass(h.watcher, because: "test")
            #expect(h.log.count(.error, containing: "enforcement pass failed") == 1)
            h.store.broken = nil
            await h.enforcer.recoverablePass(h.watcher, because: "test")
            #expect(h.health.notAliveReason == nil)
            #expect(h.store.inForce == ["svc/a": 30])
            #expect(h.log.count(.notice, containing: "resolved: pass") == 1)
        }
    }

    @Test func anEntryTheKernelCannotEnforceIsLeftOutAndSaidOnceTheRestIsEnforced() async throws {
        let file = """
            policies:
              - cgroup: "svc/*"
                keepidle: 30
              - cgroup: "rules/*"
                rules:
                  - remote: 10.0.0.0/8
                    keepidle: 5
            """
        let features = KernelFeatures(
            present: KernelFeatures.everything.present.subtracting(KernelFeatures.Feature.rules.requirements)
        )
        try await Harness(file, features: features).run { h in
            try h.tree.mkdir("svc/a")
            try h.tree.mkdir("rules/a")
            try await h.enforcer.fullPass(h.watcher)
            try await h.enforcer.fullPass(h.watcher)
            #expect(h.store.inForce == ["svc/a": 30])
            #expect(h.log.count(.error, containing: "is not enforced") == 1)
            #expect(h.log.all.first { $0.message.contains("is not enforced") }?.message.contains(".yaml:4") == true)
        }
    }

    @Test func aPolicyFileWithAnErrorIsRejectedOnReloadAndChangesNothing() async throws {
        try await Harness(Self.services).run { h in
            try h.tree.mkdir("svc/a")
            try await h.enforcer.fullPass(h.watcher)
            let calls = h.store.calls.count
            try h.writePolicies("policies:\n  - cgroup: \"svc/*\"\n    keepidle: many\n")
            await h.enforcer.reload(h.watcher)
            #expect(h.store.calls.count == calls)
            #expect(h.store.inForce == ["svc/a": 30])
            #expect(h.log.count(.error, containing: "reload rejected, policies unchanged") == 1)
            #expect(h.metricsText().contains(#"keepalive_reloads_total{result="failure"} 1"#))
            try h.writePolicies("policies:\n  - cgroup: \"svc/*\"\n    keepidle: 45\n")
            await h.enforcer.reload(h.watcher)
            #expect(h.store.inForce == ["svc/a": 45])
        }
    }

    @Test func anotherProcessChangingTheStateOrItsReplacementStartsAFullPass() async throws {
        try await Harness(Self.services).run { h in
            try await h.enforcer.fullPass(h.watcher)
            h.store.changedElsewhere = true
            #expect(await h.enforcer.fullPassDue(h.watcher) == "another process changed the pinned state")
            h.store.changedElsewhere = false
            #expect(await h.enforcer.fullPassDue(h.watcher) == nil)
            await h.enforcer.lastFullPass(ago: .seconds(301))
            #expect(await h.enforcer.fullPassDue(h.watcher) == "periodic check")
            h.store.pinningState = .replaced
            try await h.enforcer.handle(.tick, h.watcher)
            #expect(h.store.calls.suffix(2) == ["remake", "reconcile"])
        }
    }

    @Test func anUnreadableRecordOfReapedConnectionsIsSaidOnceAndCounted() async throws {
        try await Harness(Self.services).run { h in
            h.store.eventsError = AgentError("read ka_reaped: Bad file descriptor")
            try await h.enforcer.handle(.tick, h.watcher)
            try await h.enforcer.handle(.tick, h.watcher)
            #expect(h.log.count(.error, containing: "cannot read the reaped connections' record") == 1)
            #expect(h.metricsText().contains(#"keepalive_agent_problems_total{kind="reaped_events"} 1"#))
            h.store.eventsError = nil
            try await h.enforcer.handle(.tick, h.watcher)
            #expect(h.log.count(.notice, containing: "resolved: reaped events") == 1)
        }
    }
}

/// Pods and containers, through fake runtimes.
@Suite(.timeLimit(.minutes(1))) struct EnforcerWorkloadTests {
    static let pods = """
        policies:
          - pods:
              namespace: shop
            keepidle: 20
          - containers:
              name: "redis-*"
            keepidle: 40
        """
    static let uid = "0b9a4c3e-1111-2222-3333-444455556666"
    static let podDirectory = "kubepods/pod\(uid)"
    static let sandbox = String(repeating: "ab", count: 32)

    @Test func aNewPodIsIdentifiedOnceTheRuntimeKnowsIt() async throws {
        try await Harness(Self.pods).run { h in
            try h.tree.mkdir("kubepods")
            try await h.enforcer.fullPass(h.watcher)
            try h.tree.mkdir(Self.podDirectory)
            await h.enforcer.cgroupAppeared(FilePath(Self.podDirectory), h.watcher)
            // Not known at first (RunPodSandbox still running): asked again.
            try await h.handleInputs { h.cri.state.withLock { $0.identifyCalls } >= 2 }
            h.cri.state.withLock { $0.pods = [.named("shop", "db-0", uid: Self.uid)] }
            try await h.handleInputs { h.store.inForce[Self.podDirectory] != nil }
            #expect(h.store.inForce[Self.podDirectory] == 20)
            #expect(h.store.policies.values.first?.origin.display == "pod shop/db-0")
            #expect(await h.enforcer.isAsking(about: FilePath(Self.podDirectory)) == false)
        }
    }

    @Test func aPodIsHurriedWhenItsSandboxsCgroupAppears() async throws {
        var timing = Harness.quick
        timing.podFirstAsk = .seconds(30)  // only the haste can find it in time
        try await Harness(Self.pods, timing: timing).run { h in
            try h.tree.mkdir("kubepods")
            try await h.enforcer.fullPass(h.watcher)
            try h.tree.mkdir(Self.podDirectory)
            await h.enforcer.cgroupAppeared(FilePath(Self.podDirectory), h.watcher)
            h.cri.state.withLock { $0.pods = [.named("shop", "db-0", uid: Self.uid)] }
            try h.tree.mkdir(Self.podDirectory + "/" + Self.sandbox)
            await h.enforcer.cgroupAppeared(FilePath(Self.podDirectory + "/" + Self.sandbox), h.watcher)
            try await h.handleInputs { h.store.inForce[Self.podDirectory] != nil }
            #expect(h.store.inForce[Self.podDirectory] == 20)
        }
    }

    @Test func aRuntimeFailingWhileAskedIsSaidOnceAskedAgainAndSaidResolved() async throws {
        try await Harness(Self.pods).run { h in
            try h.tree.mkdir("kubepods")
            try await h.enforcer.fullPass(h.watcher)
            h.cri.state.withLock {
                $0.failures = 3
                $0.pods = [.named("shop", "db-0", uid: Self.uid)]
            }
            try h.tree.mkdir(Self.podDirectory)
            await h.enforcer.cgroupAppeared(FilePath(Self.podDirectory), h.watcher)
            try await h.handleInputs { h.store.inForce[Self.podDirectory] != nil }
            #expect(h.log.count(.error, containing: "cannot identify the workload of \(Self.podDirectory)") == 1)
            #expect(h.log.count(.notice, containing: "resolved: identify \(Self.podDirectory)") == 1)
        }
    }

    @Test func aRuntimeThatNeverAnswersLeavesTheCgroupToTheFullPasses() async throws {
        try await Harness(Self.pods).run { h in
            try h.tree.mkdir("kubepods")
            try await h.enforcer.fullPass(h.watcher)
            h.cri.state.withLock { $0.down = true }
            try h.tree.mkdir(Self.podDirectory)
            await h.enforcer.cgroupAppeared(FilePath(Self.podDirectory), h.watcher)
            try await h.handleInputs { h.log.count(.error, containing: "connection refused; retried") > 0 }
            #expect(await h.enforcer.retryDue)
            #expect(await h.enforcer.isAsking(about: FilePath(Self.podDirectory)) == false)
            // The runtime is back; the full pass finds the pod and places it.
            h.cri.state.withLock {
                $0.down = false
                $0.pods = [.named("shop", "db-0", uid: Self.uid)]
                $0.podCgroups = ["sandbox-\(Self.uid)": FilePath(Self.podDirectory)]
            }
            try await h.enforcer.fullPass(h.watcher)
            #expect(h.store.inForce[Self.podDirectory] == 20)
            #expect(await h.enforcer.retryDue == false)
        }
    }

    @Test func aRuntimeDownIsOneLineAndTheGaugeAndItsReturnIsAFullPass() async throws {
        try await Harness(Self.pods).run { h in
            try await h.enforcer.fullPass(h.watcher)
            let error = RuntimeError.unreachable(.cri, endpoint: "unix:///fake.sock", "connection refused")
            for _ in 0..<3 { try await h.enforcer.handle(.workload(.probed(.cri, error)), h.watcher) }
            #expect(h.log.count(.error, containing: "connection refused; every policy stays in force") == 1)
            #expect(h.metricsText().contains(#"keepalive_runtime_up{runtime="cri"} 0"#))
            let passes = h.store.calls.filter { $0 == "reconcile" }.count
            try await h.enforcer.handle(.workload(.probed(.cri, nil)), h.watcher)
            #expect(h.metricsText().contains(#"keepalive_runtime_up{runtime="cri"} 1"#))
            #expect(h.store.calls.filter { $0 == "reconcile" }.count == passes + 1)
        }
    }

    @Test func aFullPassPlacesEachWorkloadOnceAndKeepsWhatAFailedRuntimeHad() async throws {
        try await Harness(Self.pods).run { h in
            let container = ContainerInfo(
                id: Self.sandbox,
                name: "redis-1",
                labels: [:],
                podNamespace: nil,
                podName: nil,
                source: "fake"
            )
            try h.tree.mkdir("docker/\(Self.sandbox)")
            h.docker.state.withLock { $0.containers = [(container, FilePath("docker/\(Self.sandbox)"))] }
            try await h.enforcer.fullPass(h.watcher)
            try await h.enforcer.fullPass(h.watcher)
            #expect(h.store.inForce == ["docker/\(Self.sandbox)": 40])
            #expect(h.docker.state.withLock { $0.locateCalls } == 1)
            // A runtime that does not answer proves nothing: its workloads keep their policies.
            h.docker.state.withLock { $0.down = true }
            try await h.enforcer.fullPass(h.watcher)
            #expect(h.store.inForce == ["docker/\(Self.sandbox)": 40])
            // One that names it and no entry selects it does: withdrawn.
            let renamed = ContainerInfo(
                id: Self.sandbox,
                name: "postgres-1",
                labels: [:],
                podNamespace: nil,
                podName: nil,
                source: "fake"
            )
            h.docker.state.withLock {
                $0.down = false
                $0.containers = [(renamed, FilePath("docker/\(Self.sandbox)"))]
            }
            try await h.enforcer.fullPass(h.watcher)
            #expect(h.store.inForce.isEmpty)
        }
    }
}
