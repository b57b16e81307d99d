// SPDX-License-Identifier: MIT
import ArgumentParser
import KeepaliveCore

struct Inspect: AsyncParsableCommand, JSONOutputCommand, StateCommand {
    static let configuration = CommandConfiguration(
        abstract: "List a cgroup subtree's TCP sockets with the keepalive values the kernel has in force."
    )

    @OptionGroup var target: TargetOptions

    @Flag(help: "Print a JSON array.")
    var json = false

    @OptionGroup var options: StateOptions

    func validate() throws {
        guard target.given == 1 else { throw ValidationError(TargetOptions.exactlyOne) }
    }

    func run() async throws {
        let cgroups = try options.cgroups()
        let state = options.state(cgroups)
        try state.kernelFeatures().require(.inspect)
        let cgroup = try await target.resolve(cgroups).cgroup
        // The iterator shares the state's maps when there is one; it needs no lock to read.
        let policies = try state.transaction(create: false) { $0.transaction.records }
        let result = try SocketIterator(pinRoot: policies == nil ? nil : state.root, cgroups: cgroups, for: .inspect)
            .run(cgroup, applying: false)
        for failure in result.unreachable { printError("keepalive: warning: \(failure)") }
        let rows = result.sockets.map { socket in
            let record = socket.policyCgroupID.flatMap { policies?[$0] }
            return Self.row(socket, origin: record?.origin ?? .none, rules: record?.policy.rules ?? [])
        }
        if json { try printJSON(rows) } else { printTable(rows) }
    }

    static func row(_ s: SocketReport, origin: Origin, rules: [Rule]) -> Row {
        Row(
            fields: [
                Field("pid", "PID", s.owners.first.map { .integer(Int64($0.pid)) } ?? .null),
                Field("command", "COMMAND", s.owners.first.map { .string($0.command) } ?? .null),
                Field("pids", nil, .list(s.owners.map { .integer(Int64($0.pid)) })),
                Field("state", "STATE", .string(s.state)),
                Field("local", "LOCAL", .string(s.local)),
                Field("remote", "REMOTE", .string(s.remote)),
                Field("keepalive", "KEEPALIVE", .bool(s.keepalive), shown: s.keepalive ? "on" : "off"),
                Field(PolicyOption.keepidle.key, PolicyOption.keepidle.column, .integer(Int64(s.keepidle))),
                Field(PolicyOption.keepintvl.key, PolicyOption.keepintvl.column, .integer(Int64(s.keepintvl))),
                Field(PolicyOption.keepcnt.key, PolicyOption.keepcnt.column, .integer(Int64(s.keepcnt))),
                Field(PolicyOption.userTimeout.key, PolicyOption.userTimeout.column, .integer(Int64(s.userTimeout))),
                Field("cgroup_id", nil, .unsigned(s.cgroupID)),
                Field("inode", nil, .unsigned(s.inode)),
                Field(Precedence.key, "PRECEDENCE", s.precedence.map { .string($0.name) } ?? .null),
                Field("rule", "RULE", s.rule.map { .string(Rule.label(rules, $0)) } ?? .null),
            ] + origin.fields
        )
    }
}
