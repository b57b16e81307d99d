// SPDX-License-Identifier: MIT
import Synchronization

/// What /readyz and /livez answer: ready once the first full pass is done;
/// alive while the last pass succeeded and the enforcement loop keeps ticking.
final class Health: Sendable {
    private struct State {
        var ready = false
        var lastPassError: String?
        var lastTick = ContinuousClock.now
    }

    private let state = Mutex(State())
    /// A loop that has not ticked for this long is stuck.
    static let stuckAfter = Duration.seconds(10)

    func passSucceeded() {
        state.withLock {
            $0.ready = true
            $0.lastPassError = nil
        }
    }

    func passFailed(_ reason: String) {
        state.withLock { $0.lastPassError = reason }
    }

    func tick() {
        state.withLock { $0.lastTick = .now }
    }

    /// nil when ready, else why not.
    var notReadyReason: String? {
        state.withLock { $0.ready ? nil : "the first enforcement pass has not completed" }
    }

    /// nil when alive, else why not.
    var notAliveReason: String? {
        state.withLock { state in
            if let error = state.lastPassError { return "the last enforcement pass failed: \(error)" }
            let silent = ContinuousClock.now - state.lastTick
            return silent > Self.stuckAfter ? "the enforcement loop has not run for \(silent)" : nil
        }
    }

    var isReady: Bool { notReadyReason == nil }
}
