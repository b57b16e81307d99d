// SPDX-License-Identifier: MIT
import Testing

@testable import KeepaliveAgent

/// The sandbox probe's first ask follows what the runtime took for the
/// latest pods, from either side.
@Suite struct SandboxTimingTests {
    /// A runtime that knows each sandbox `ready` after its cgroup appeared,
    /// asked as the probe asks: first at `firstAsk`, then every 5 ms. The
    /// asks it took, and when the answer came.
    func probe(_ timing: inout SandboxTiming, ready: Duration) -> (asks: Int, known: Duration) {
        var earlier = Duration.zero
        var at = timing.firstAsk
        var asks = 1
        while at < ready {
            earlier = at
            at += .milliseconds(5)
            asks += 1
        }
        timing.known(between: earlier, and: at)
        return (asks, at)
    }

    @Test func asksAtOnceUntilItHasSeenPods() {
        var timing = SandboxTiming()
        for _ in 0..<4 {
            #expect(timing.firstAsk == .zero)
            _ = probe(&timing, ready: .milliseconds(30))
        }
        #expect(timing.firstAsk > .zero)
    }

    /// Every 5 ms from the start would be 7 asks for a runtime that takes 30 ms.
    @Test func settlesOnThreeAsksOrFewerForASteadyRuntime() {
        var timing = SandboxTiming()
        var last: (asks: Int, known: Duration) = (0, .zero)
        for _ in 0..<40 { last = probe(&timing, ready: .milliseconds(30)) }
        #expect(last.asks <= 3)
        #expect(last.known <= .milliseconds(35))  // never later than asking every 5 ms from the start
    }

    @Test func followsARuntimeThatBecomesQuicker() {
        var timing = SandboxTiming()
        for _ in 0..<20 { _ = probe(&timing, ready: .milliseconds(200)) }
        var last: (asks: Int, known: Duration) = (0, .zero)
        for _ in 0..<40 { last = probe(&timing, ready: .milliseconds(20)) }
        #expect(timing.firstAsk <= .milliseconds(20))
        #expect(last.known <= .milliseconds(25))
    }

    @Test func followsARuntimeThatBecomesSlower() {
        var timing = SandboxTiming()
        for _ in 0..<20 { _ = probe(&timing, ready: .milliseconds(20)) }
        var last: (asks: Int, known: Duration) = (0, .zero)
        for _ in 0..<20 { last = probe(&timing, ready: .milliseconds(200)) }
        #expect(last.asks <= 3)
        #expect(last.known <= .milliseconds(205))
    }
}
