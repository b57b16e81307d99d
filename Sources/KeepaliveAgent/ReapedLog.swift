// SPDX-License-Identifier: MIT
import Glibc
import KeepaliveCore
import Logging

/// Logs each connection the kernel reaped, as the kernel side recorded it:
/// at most `perSecond` lines a second, the rest counted in one line.
final class ReapedLog {
    private let logger: Logger
    private var next: UInt64?
    static let perSecond = 10

    init(logger: Logger) {
        self.logger = logger
    }

    /// Called once a second: what was reaped since the last call. The first
    /// call only notes where the record is: what was reaped before the agent
    /// started is `keepalive events`' to show. A failed read moves nothing:
    /// the next one reads from the same place.
    func poll(_ store: any PolicyStore) throws -> [ReapedEvent] {
        let (events, head) = try store.reapedEvents(after: next ?? .max)
        defer { next = head }
        return next == nil ? [] : events
    }

    func log(_ events: [ReapedEvent]) {
        guard !events.isEmpty else { return }
        let shown = events.suffix(Self.perSecond)
        let owners = ProcessTable.socketOwnersOnTheMachine(of: Set(shown.map(\.inode)))
        for event in shown {
            let process = owners[event.inode]?.first.map { " \($0.command)[\($0.pid)]" } ?? ""
            logger.notice(
                "reaped connection\(process) on \(event.policyOrigin.display.map { "\($0) " } ?? "")\(event.policyPath?.cgroupDisplay ?? "cgroup id \(event.policyCgroupID)")\(event.rule.map { " rule \(event.ruleLabel ?? "\($0 + 1)")" } ?? ""): \(event.local) -> \(event.remote), \(event.reason.key), peer silent \(event.silentMilliseconds) ms (keepidle=\(event.keepidle) keepintvl=\(event.keepintvl) keepcnt=\(event.keepcnt) user_timeout=\(event.userTimeout))\(event.idleGapMilliseconds.map { ", after an idle gap of \($0) ms" } ?? "")"
            )
        }
        if events.count > shown.count {
            logger.notice(
                "suppressed \(events.count - shown.count) reaped-connection lines (at most \(Self.perSecond) a second)"
            )
        }
    }
}
