// SPDX-License-Identifier: MIT
import ArgumentParser
import Foundation
import KeepaliveCore

import struct SystemPackage.FilePath

struct Events: ParsableCommand, JSONOutputCommand, StateCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the connections the kernel ended because the peer stopped answering (newest last).",
        discussion: """
            The kernel side keeps the last 1024, whether or not the agent runs. Only sockets in some \
            policy's subtree are recorded: keepalive is not a general TCP tracer. Under a policy that \
            observes paths, each also shows the idle gap its first unanswered segment came after, and \
            connections reset in answer to a segment after an idle gap are listed too (reason reset).
            """
    )

    @Flag(help: "Print JSON (with --follow, one object per line).")
    var json = false

    @Flag(help: "Keep printing new ones as they come.")
    var follow = false

    @OptionGroup var options: StateOptions

    static let pollInterval: useconds_t = 250_000

    func run() throws {
        let cgroups = try options.cgroups()
        let state = options.state(cgroups)
        _ = try state.transaction(create: false) { _ in }  // the opening check, as every command does
        let (events, next) = try state.reapedEvents(after: 0)
        let rows = EventRows(cgroups).rows(events)
        switch (json, follow) {
        case (true, false): try printJSON(rows)
        case (true, true): for row in rows { try printJSON(row, oneLine: true) }
        case (false, false) where rows.isEmpty: print("no reaped connections")
        case (false, _): if !rows.isEmpty { printTable(rows) }
        }
        if follow { try watch(state, cgroups, after: next) }
    }

    private func watch(_ state: PinnedState, _ cgroups: CgroupFS, after start: UInt64) throws -> Never {
        var next = start
        let rows = EventRows(cgroups)
        while true {
            usleep(Self.pollInterval)
            let (events, head) = try state.reapedEvents(after: next)
            next = head
            for row in rows.rows(events) {
                if json {
                    try printJSON(row, oneLine: true)
                } else {
                    print(row.fields.filter { $0.column != nil }.map(\.text).joined(separator: "  "))
                }
            }
            fflush(nil)
        }
    }
}

/// Events as rows: the socket's own cgroup found below its policy's, the
/// process that still holds it, times as people read them.
struct EventRows {
    let cgroups: CgroupFS

    init(_ cgroups: CgroupFS) { self.cgroups = cgroups }

    func rows(_ events: [ReapedEvent]) -> [Row] {
        let owners = ProcessTable.socketOwnersOnTheMachine(of: Set(events.map(\.inode)))
        return events.map { event in
            let owner = owners[event.inode]?.first
            let cgroup = path(of: event.cgroupID, below: event.policyPath)
            return Row(
                fields: [
                    Field("time", "TIME", .time(event.time)),
                    Field("sequence", nil, .unsigned(event.sequence)),
                    Field(
                        "cgroup",
                        "CGROUP",
                        cgroup.map { .string($0.cgroupDisplay) } ?? .null,
                        shown: cgroup?.cgroupDisplay ?? "id \(event.cgroupID)"
                    ),
                    Field("cgroup_id", nil, .unsigned(event.cgroupID)),
                    Field("policy_cgroup", nil, event.policyPath.map { .string($0.cgroupDisplay) } ?? .null),
                ] + event.policyOrigin.fields + [
                    Field("pid", nil, owner.map { .integer(Int64($0.pid)) } ?? .null),
                    Field(
                        "command",
                        "PROCESS",
                        owner.map { .string($0.command) } ?? .null,
                        shown: owner.map { "\($0.command)[\($0.pid)]" } ?? "-"
                    ),
                    Field("local", "LOCAL", .string(event.local)),
                    Field("remote", "REMOTE", .string(event.remote)),
                    Field("reason", "REASON", .string(event.reason.key)),
                    Field(
                        "silent_ms",
                        "SILENT",
                        .unsigned(event.silentMilliseconds),
                        shown: String(format: "%.1fs", Double(event.silentMilliseconds) / 1000)
                    ),
                    Field(PolicyOption.keepidle.key, nil, .unsigned(event.keepidle)),
                    Field(PolicyOption.keepintvl.key, nil, .unsigned(event.keepintvl)),
                    Field(PolicyOption.keepcnt.key, nil, .unsigned(UInt64(event.keepcnt))),
                    Field(
                        PolicyOption.userTimeout.key,
                        "POLICY",
                        .unsigned(UInt64(event.userTimeout)),
                        shown:
                            "idle=\(event.keepidle) intvl=\(event.keepintvl) cnt=\(event.keepcnt) user_timeout=\(event.userTimeout)"
                    ),
                    // Last: POLICY and REASON keep their places for what reads the table.
                    Field("rule", "RULE", event.rule.map { .string(event.ruleLabel ?? "\($0 + 1)") } ?? .null),
                    Field(
                        "idle_gap_ms",
                        "IDLE GAP",
                        event.idleGapMilliseconds.map { .unsigned(UInt64($0)) } ?? .null,
                        shown: event.idleGapMilliseconds.map { String(format: "%.1fs", Double($0) / 1000) } ?? "-"
                    ),
                ]
            )
        }
    }

    /// The path of cgroup `id`, looked for below its policy's cgroup.
    private func path(of id: UInt64, below top: FilePath?) -> FilePath? {
        guard let top, let topCgroup = cgroups.cgroup(at: top) else { return nil }
        if topCgroup.id == id { return top }
        var found: FilePath?
        cgroups.walk(below: top) { child in
            if child.id == id { found = child.path }
            return found == nil
        }
        return found
    }
}
