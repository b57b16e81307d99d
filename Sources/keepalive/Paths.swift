// SPDX-License-Identifier: MIT
import ArgumentParser
import Foundation
import Glibc
import KeepaliveCore

struct Paths: ParsableCommand, JSONOutputCommand, StateCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show each path's idle limit as observed, and whether the policy's idle time is below it.",
        discussion: """
            Policies attached with --observe or --observe-paths (observe, observe_paths in the agent's file) \
            record, per remote and port, the longest idle gap their connections survived and the shortest \
            they died after (a timeout, or a reset answering the first segment after the gap): the path's \
            idle limit is above the one and at most the other. Deaths after gaps no longer than one \
            survived are not the path's doing (a peer that restarted, a network that failed): counted, \
            left out. Connections made are listed by remote port; accepted ones by local port (-> :PORT).
            """
    )

    @Argument(help: "cgroups with a policy (relative to the cgroup2 mount, or absolute); none: every policy.")
    var cgroups: [String] = []

    @Option(help: ArgumentHelp("Merge IPv4 remotes into prefixes of this length.", valueName: "0-32"))
    var ipv4Prefix = 32

    @Option(help: ArgumentHelp("Merge IPv6 remotes into prefixes of this length.", valueName: "0-128"))
    var ipv6Prefix = 128

    @Flag(help: "Print JSON.")
    var json = false

    @OptionGroup var options: StateOptions

    func validate() throws {
        guard (0...32).contains(ipv4Prefix) else { throw ValidationError("--ipv4-prefix must be 0..32") }
        guard (0...128).contains(ipv6Prefix) else { throw ValidationError("--ipv6-prefix must be 0..128") }
    }

    func run() throws {
        let cgroupFS = try options.cgroups()
        let given = try cgroups.map { argument throws in (argument, try cgroupFS.resolve(argument).id) }
        let wanted = Set(given.map(\.1))
        let state = options.state(cgroupFS)
        let found = try state.transaction(create: false) { session -> ([PathReport], [UInt64: String]) in
            let entries = session.transaction.entries().filter { wanted.isEmpty || wanted.contains($0.cgroupID) }
            for (argument, id) in given where !entries.contains(where: { $0.cgroupID == id }) {
                throw CommandError("no policy on \(argument): paths are kept per policy; give the cgroup that has it")
            }
            let policies = Dictionary(uniqueKeysWithValues: entries.map { ($0.cgroupID, $0.record.policy) })
            let reports = PathReport.reports(
                try session.observedPaths(),
                policies: policies,
                ipv4Prefix: ipv4Prefix,
                ipv6Prefix: ipv6Prefix,
                systemKeepidle: PathReport.namespaceKeepidle()
            )
            let names = Dictionary(uniqueKeysWithValues: entries.map { ($0.cgroupID, $0.record.path.cgroupDisplay) })
            let observing = entries.filter { $0.record.policy.observation.observesPaths }
            if observing.isEmpty && !json {
                printError("keepalive: no policy here observes paths (attach with --observe or --observe-paths)")
            }
            return (reports, names)
        }
        guard let (reports, names) = found else { throw CommandError("no pinned state at \(state.root)") }
        let rows = reports.map { Self.row($0, cgroup: names[$0.key.policyCgroupID] ?? "?") }
        if json { return try printJSON(rows) }
        if rows.isEmpty { return print("no paths observed") }
        printTable(rows)
        for report in reports { if let line = Self.advice(report) { print(line) } }
    }

    static func seconds(_ ms: UInt32) -> String {
        ms % 1000 == 0 ? "\(ms / 1000) s" : String(format: "%.1f s", Double(ms) / 1000)
    }

    static func row(_ report: PathReport, cgroup: String) -> Row {
        let evidence = report.evidence
        let bounds = report.bounds
        let survived = bounds.survived.map { "\(seconds($0)) (\(evidence.survivals))" } ?? "-"
        let deaths = evidence.timeouts + evidence.resets
        let died =
            bounds.died.map { "\(seconds($0.gapMilliseconds)) \($0.reset ? "reset" : "timeout") (\(deaths))" }
            ?? (deaths > 0 ? "- (\(deaths))" : "-")
        return Row(fields: [
            Field("cgroup", "CGROUP", .string(cgroup)),
            Field("path", "PATH", .string(report.key.display)),
            Field("remote", nil, .string(report.key.remote.description)),
            Field("port", nil, .integer(Int64(report.key.port))),
            Field("accepted", nil, .bool(report.key.accepted)),
            Field("survived_ms", "SURVIVED", bounds.survived.map { .unsigned(UInt64($0)) } ?? .null, shown: survived),
            Field("survivals", nil, .unsigned(evidence.survivals)),
            Field(
                "died_ms",
                "DIED",
                bounds.died.map { .unsigned(UInt64($0.gapMilliseconds)) } ?? .null,
                shown: died
            ),
            Field("died_by", nil, bounds.died.map { .string($0.reset ? "reset" : "timeout") } ?? .null),
            Field("timeouts", nil, .unsigned(evidence.timeouts)),
            Field("resets", nil, .unsigned(evidence.resets)),
            Field("not_idle", "NOT IDLE", .integer(Int64(bounds.notIdle))),
            Field(
                PolicyOption.keepidle.key,
                "KEEPIDLE",
                report.idleSeconds.map { .integer(Int64($0)) } ?? .null,
                shown: report.idleSeconds.map { "\($0) s" } ?? "off"
            ),
            Field("verdict", "VERDICT", .string(report.verdict.key)),
            Field("suggested_rule", nil, report.suggestedRule.map(JSONValue.string) ?? .null),
            Field("last_seen", nil, .time(evidence.lastSeen)),
        ])
    }

    /// For a policy above a path's limit: what to change, as a rule.
    static func advice(_ report: PathReport) -> String? {
        guard case .above(let died) = report.verdict, let idle = report.idleSeconds, let rule = report.suggestedRule
        else { return nil }
        return "keepidle \(idle) s, but connections to \(report.key.display) died after \(seconds(died)) idle: "
            + "lower it below \(seconds(died)) (--rule \(rule))"
    }
}
