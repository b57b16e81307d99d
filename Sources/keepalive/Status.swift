// SPDX-License-Identifier: MIT
import ArgumentParser
import KeepaliveCore

struct Status: ParsableCommand, JSONOutputCommand, StateCommand {
    static let configuration = CommandConfiguration(
        abstract: "List every cgroup with a policy: values in force, sockets configured, connections reaped.",
        discussion:
            "It first checks the pinned state against the kernel's links and repairs what differs; it says what it repaired."
    )

    @Flag(help: "Print JSON.")
    var json = false

    @OptionGroup var options: StateOptions

    func run() throws {
        let cgroups = try options.cgroups()
        let state = options.state(cgroups)
        let kernel = KernelReport(try state.kernelFeatures())
        let output =
            try state.transaction(create: false) { try StatusOutput(state.root, kernel, $0) }
            ?? StatusOutput(state.root, kernel)
        if json { try printJSON(output) } else { output.printText() }
    }
}

/// What this kernel gives: the build of the programs it runs, and each
/// feature on or off (one line each in the text, an object in JSON).
struct KernelReport: Encodable, Sendable {
    let release: String
    let build: String
    let features: [String: Feature]
    /// One line per feature that is off, in the features' order.
    let offLines: [String]

    struct Feature: Encodable, Sendable {
        let on: Bool
        let lacking: String?
        let since: String?
    }

    init(_ features: KernelFeatures) {
        release = KernelRelease.current
        build = features.build.rawValue
        self.features = Dictionary(
            uniqueKeysWithValues: KernelFeatures.Feature.allCases.map { feature in
                let lacking = features.lacking(feature)
                return (feature.key, Feature(on: lacking == nil, lacking: lacking?.what, since: lacking?.since))
            }
        )
        offLines = KernelFeatures.Feature.allCases.compactMap(features.offLine)
    }

    func printText() {
        print("kernel \(release): the programs' \(build) build" + (offLines.isEmpty ? "; every feature on" : ""))
        for line in offLines { print(line) }
    }

    enum CodingKeys: String, CodingKey { case release, build, features }
}

/// `status`: one model for both printers.
struct StatusOutput: Encodable, Sendable {
    let pinPath: String
    let kernel: KernelReport
    let programs: Programs?
    let policies: [Row]
    let repaired: [String]
    let dropped: [String]
    let keptUnknown: [String]
    let failed: [String]
    /// The text output's line per rule (JSON has them in each policy).
    private var ruleLines: [String] = []

    struct Programs: Encodable, Sendable {
        let version: UInt32
        let hash: String
        let countingReaped: Bool
        /// What the state's maps take of the kernel's memory, by its account.
        let kernelMemoryBytes: UInt64
    }

    init(_ pinPath: String, _ kernel: KernelReport) {
        self.pinPath = pinPath
        self.kernel = kernel
        programs = nil
        (policies, repaired, dropped, keptUnknown, failed) = ([], [], [], [], [])
    }

    init(_ pinPath: String, _ kernel: KernelReport, _ session: PinnedState.Session) throws {
        self.pinPath = pinPath
        self.kernel = kernel
        programs = Programs(
            version: session.programs.version,
            hash: String(session.programs.hash, radix: 16),
            countingReaped: session.countingReaped,
            kernelMemoryBytes: try session.kernelMemory()
        )
        var rows: [Row] = []
        for entry in session.transaction.entries() {
            let rules = try session.ruleCounters(of: entry.record)
            rows.append(Self.row(entry, try session.counters(of: entry.record), rules: rules))
            ruleLines += rules.indices.map {
                Self.ruleLine(entry.record.policy, $0, rules[$0], cgroup: entry.record.path.cgroupDisplay)
            }
        }
        policies = rows
        repaired = session.report.repaired
        dropped = session.report.dropped
        keptUnknown = session.report.keptUnknown
        failed = session.report.failed
    }

    static func row(_ entry: Transaction.Entry, _ counters: PolicyCounters, rules ruleCounters: [PolicyCounters]) -> Row
    {
        let policy = entry.record.policy
        let options = PolicyOption.allCases.map { option in
            Field(
                option.key,
                option.column,
                .integer(Int64(option == .userTimeout ? policy.effectiveUserTimeout : policy[option])),
                shown: policy.shown(option, separator: " ")
            )
        }
        return Row(
            fields: [
                Field("cgroup", "CGROUP", .string(entry.record.path.cgroupDisplay)),
                Field("cgroup_id", nil, .unsigned(entry.cgroupID)),
            ] + entry.record.origin.fields + options + [
                Field("user_timeout_derived", nil, .bool(policy.derivesUserTimeout)),
                Field("sockets_configured", "SOCKETS", .unsigned(counters.configured)),
                Field("reaped", "REAPED", .unsigned(counters.reaped)),
                Field("reaped_keepalive", nil, .unsigned(counters.reapedKeepalive)),
                Field("reaped_user_timeout", nil, .unsigned(counters.reapedUserTimeout)),
                Field(Precedence.key, "PRECEDENCE", .string(policy.precedence.name)),
                Field(
                    "attached",
                    "ATTACHED",
                    .bool(entry.linked),
                    shown: entry.linked ? "yes" : entry.covered ? "inherited" : "NO"
                ),
                Field("covered", nil, .bool(entry.covered)),
                Field("owner", "BY", .string(entry.record.owner.rawValue)),
                Field(
                    Rule.rulesKey,
                    "RULES",
                    .list(
                        zip(policy.rules.indices, ruleCounters).map {
                            .object(ruleRow(policy, $0, $1))
                        }
                    ),
                    shown: policy.rules.isEmpty ? "-" : "\(policy.rules.count)"
                ),
                Field("observe", "OBSERVE", .string(policy.observation.name)),
            ]
        )
    }

    /// One rule: what it matches, the values it gives, and its counters.
    static func ruleRow(_ policy: Policy, _ index: Int, _ counters: PolicyCounters) -> Row {
        let rule = policy.rules[index]
        let values = rule.values(under: policy)
        let options = PolicyOption.allCases.map { option in
            Field(
                option.key,
                nil,
                rule.off
                    ? .null : .integer(Int64(option == .userTimeout ? values.effectiveUserTimeout : values[option]))
            )
        }
        return Row(
            fields: [
                Field("index", nil, .integer(Int64(index + 1))),
                Field(Rule.nameKey, nil, rule.name.map(JSONValue.string) ?? .null),
                Field(Rule.remoteKey, nil, .list(rule.remote.map { .string($0.description) })),
                Field(Rule.remotePortsKey, nil, .list(rule.remotePorts.map { .integer(Int64($0)) })),
                Field(Rule.localPortsKey, nil, .list(rule.localPorts.map { .integer(Int64($0)) })),
                Field(Rule.keepaliveKey, nil, .bool(!rule.off)),
            ] + options + [
                Field("user_timeout_derived", nil, .bool(!rule.off && values.derivesUserTimeout)),
                Field("sockets_matched", nil, .unsigned(counters.configured)),
                Field("reaped", nil, .unsigned(counters.reaped)),
                Field("reaped_keepalive", nil, .unsigned(counters.reapedKeepalive)),
                Field("reaped_user_timeout", nil, .unsigned(counters.reapedUserTimeout)),
            ]
        )
    }

    /// A rule in the text output: what it matches, the values it gives, its counters.
    static func ruleLine(_ policy: Policy, _ index: Int, _ counters: PolicyCounters, cgroup: String) -> String {
        let rule = policy.rules[index]
        let matched = [
            (Rule.remoteKey, rule.remote.map(\.description)),
            (Rule.remotePortsKey, rule.remotePorts.map(String.init)),
            (Rule.localPortsKey, rule.localPorts.map(String.init)),
        ]
        .filter { !$0.1.isEmpty }.map { "\($0.0)=\($0.1.joined(separator: ","))" }.joined(separator: " ")
        let given = rule.off ? "\(Rule.keepaliveKey)=off" : rule.values(under: policy).valuesSummary
        return "rule \(index + 1)\(rule.name.map { " (\($0))" } ?? "") of \(cgroup): \(matched) -> \(given); "
            + "\(counters.configured) sockets matched, \(counters.reaped) reaped"
    }

    func printText() {
        kernel.printText()
        guard let programs else {
            print("no policies")
            return
        }
        print(
            "programs \(programs.version) (\(programs.hash.prefix(12))) in force at \(pinPath); "
                + "its maps take \(kibibytes(programs.kernelMemoryBytes)) KiB of kernel memory"
        )
        if policies.isEmpty { print("no policies") } else { printTable(policies) }
        for line in ruleLines { print(line) }
        for line in repaired { print("repaired: \(line)") }
        for line in dropped { print("dropped policy on \(line)") }
        for line in keptUnknown { print("kept: \(line)") }
        for line in failed { print("NOT REPAIRED: \(line)") }
    }

    enum CodingKeys: String, CodingKey {
        case pinPath = "pin_path"
        case kernel, programs, policies, repaired, dropped
        case keptUnknown = "kept_unknown"
        case failed
    }
}

extension StatusOutput.Programs {
    enum CodingKeys: String, CodingKey {
        case version, hash
        case countingReaped = "counting_reaped"
        case kernelMemoryBytes = "kernel_memory_bytes"
    }
}

/// Bytes as KiB, rounded up: what a line of text says.
func kibibytes(_ bytes: UInt64) -> UInt64 { (bytes + 1023) / 1024 }
