// SPDX-License-Identifier: MIT
import Glibc
import KeepaliveCore
import Logging

/// Logs each connection the kernel reaped, as the kernel side recorded it:
/// at most `perSecond` lines a second, the rest counted in one line.
final class ReapedLog {
    private let state: PinnedState
    private let logger: Logger
    private var next: UInt64?
    static let perSecond = 10

    init(state: PinnedState, logger: Logger) {
        self.state = state
        self.logger = logger
    }

    /// Called once a second. The first call only notes where the record is:
    /// what was reaped before the agent started is `keepalive events`' to show.
    func poll() {
        guard let (events, head) = try? state.reapedEvents(after: next ?? .max) else { return }
        defer { next = head }
        guard next != nil, !events.isEmpty else { return }
        let shown = events.suffix(Self.perSecond)
        let owners = ProcessTable.socketOwnersOnTheMachine(of: Set(shown.map(\.inode)))
        for event in shown {
            let process = owners[event.inode]?.first.map { " \($0.command)[\($0.pid)]" } ?? ""
            logger.notice("reaped connection\(process) on \(event.policyOrigin.display.map { "\($0) " } ?? "")\(event.policyPath?.cgroupDisplay ?? "cgroup id \(event.policyCgroupID)")\(event.rule.map { " rule \(event.ruleLabel ?? "\($0 + 1)")" } ?? ""): \(event.local) -> \(event.remote), \(event.reason.key), peer silent \(event.silentMilliseconds) ms (keepidle=\(event.keepidle) keepintvl=\(event.keepintvl) keepcnt=\(event.keepcnt) user_timeout=\(event.userTimeout))")
        }
        if events.count > shown.count {
            logger.notice("suppressed \(events.count - shown.count) reaped-connection lines (at most \(Self.perSecond) a second)")
        }
    }
}
