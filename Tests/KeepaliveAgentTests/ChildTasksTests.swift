// SPDX-License-Identifier: MIT
import Synchronization
import Testing

import struct SystemPackage.FilePath

@testable import KeepaliveAgent

@Suite(.timeLimit(.minutes(1))) struct ChildTasksTests {
    /// Counts what the tasks did, shared with them.
    final class Trace: Sendable {
        let events = Mutex<[String]>([])
        func add(_ event: String) { events.withLock { $0.append(event) } }
        var all: [String] { events.withLock { $0 } }
    }

    /// Runs `body` with `tasks.run()` beside it; `body` ends with finish().
    func running(_ tasks: ChildTasks<String>, _ body: () async throws -> Void) async throws {
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { await tasks.run() }
            defer { tasks.finish() }
            try await body()
        }
    }

    /// A task that runs until stopped, saying when it started and when it ended.
    static func endless(_ name: String, _ trace: Trace) -> @Sendable () async -> Void {
        {
            trace.add("\(name) started")
            while await pause(.milliseconds(1)) {}
            trace.add("\(name) ended")
        }
    }

    static func until(_ condition: () -> Bool) async throws {
        while !condition() { try await Task.sleep(for: .milliseconds(1)) }
    }

    @Test func stoppingOneTaskLeavesTheOthersRunning() async throws {
        let (tasks, trace) = (ChildTasks<String>(), Trace())
        try await running(tasks) {
            tasks.start("a", Self.endless("a", trace))
            tasks.start("b", Self.endless("b", trace))
            try await Self.until { trace.all.count == 2 }
            tasks.stop("a")
            try await Self.until { trace.all.contains("a ended") }
            #expect(!tasks.isRunning("a"))
            #expect(tasks.isRunning("b"))
            #expect(!trace.all.contains("b ended"))
        }
        #expect(trace.all.contains("b ended"))  // finish() stopped it
    }

    @Test func aKeyRunsOneTaskAtATimeAndRestartReplacesIt() async throws {
        let (tasks, trace) = (ChildTasks<String>(), Trace())
        try await running(tasks) {
            let started = [
                tasks.start("a", Self.endless("first", trace)), tasks.start("a", Self.endless("second", trace)),
            ]
            #expect(started == [true, false])
            try await Self.until { trace.all == ["first started"] }
            tasks.restart("a", Self.endless("third", trace))
            try await Self.until { trace.all.contains("third started") && trace.all.contains("first ended") }
            #expect(tasks.isRunning("a"))
            #expect(!trace.all.contains("second started"))
        }
    }

    @Test func aTaskThatEndsFreesItsKey() async throws {
        let (tasks, trace) = (ChildTasks<String>(), Trace())
        try await running(tasks) {
            tasks.start("once") { trace.add("done") }
            try await Self.until { !tasks.isRunning("once") }
            #expect(trace.all == ["done"])
            let again = tasks.start("once") { trace.add("again") }
            #expect(again)
            try await Self.until { trace.all.count == 2 }
        }
    }

    @Test func cancellingRunEndsEveryTask() async throws {
        let (tasks, trace) = (ChildTasks<String>(), Trace())
        let runner = Task { await tasks.run() }
        tasks.start("a", Self.endless("a", trace))
        try await Self.until { trace.all.count == 1 }
        runner.cancel()
        await runner.value
        #expect(trace.all == ["a started", "a ended"])
    }
}

@Suite struct ProblemLogTests {
    @Test func aProblemIsLoggedWhenItAppearsOrChangesAndOnceWhenGone() {
        let lines = LogLines()
        var log = ProblemLog(logger: lines.logger())
        let cgroup = Problem.cgroup(FilePath("svc/a"))
        let said = [
            log.report(cgroup, "cannot enforce svc/a: EPERM"), log.report(cgroup, "cannot enforce svc/a: EPERM"),
            log.report(cgroup, "cannot enforce svc/a: ENOMEM"),
        ]
        #expect(said == [true, false, true])
        #expect(lines.count(.error, containing: "cannot enforce svc/a") == 2)
        log.report(cgroup, nil)
        log.report(cgroup, nil)
        #expect(lines.count(.notice, containing: "resolved: cgroup") == 1)
        #expect(log.isEmpty)
    }

    @Test func problemsAreKeyedByKindAndPlaceNotByText() {
        let lines = LogLines()
        var log = ProblemLog(logger: lines.logger())
        log.report(.cgroup(FilePath("svc/a")), "same words")
        log.report(.identify(FilePath("svc/a")), "same words")
        log.report(.cgroup(FilePath("svc/b")), "other words")
        #expect(log.count(where: \.isCgroup) == 2)
        log.resolve(where: \.isCgroup)
        #expect(log.count(where: { _ in true }) == 1)
        #expect(log.first == "same words")
        #expect(Problem.identify(FilePath("svc/a")).kind == "identify")
    }
}
