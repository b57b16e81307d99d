// SPDX-License-Identifier: MIT
import ArgumentParser
import KeepaliveCore

struct Attach: AsyncParsableCommand, StateCommand {
    static let configuration = CommandConfiguration(
        abstract: "Give every TCP socket of a cgroup subtree a keepalive policy (or update it in place).",
        discussion: "Values of 0 leave the system default. TCP_DEFER_ACCEPT is a preload-mode option only."
    )

    @OptionGroup var target: TargetOptions
    @OptionGroup var values: PolicyArguments

    @Flag(
        help: """
            Also apply the policy now to the subtree's TCP sockets that already exist (BPF TCP iterator). \
            Under application precedence a socket whose program turned keepalive on keeps its own values.
            """
    )
    var existing = false

    @OptionGroup var options: StateOptions

    func validate() throws {
        guard target.given == 1 else { throw ValidationError(TargetOptions.exactlyOne) }
    }

    func run() async throws {
        let policy = values.policy
        let cgroups = try options.cgroups()
        let state = options.state(cgroups)
        // What this kernel cannot do is said before anything is resolved or made.
        let features = try state.kernelFeatures()
        if let lacking = features.unsupported(by: policy) { throw lacking }
        if existing { try features.require(.existingSockets) }
        let (cgroup, origin) = try await target.resolve(cgroups)
        guard
            let change = try state.transaction(
                create: true,
                { session in
                    report(session.report)
                    return try session.transaction.apply(policy, to: cgroup, origin: origin)
                }
            )
        else { throw CommandError("no pinned state at \(state.root)") }  // create: true makes one
        print(
            "\(change.rawValue) policy on \(origin.display.map { "\($0) (\(cgroup.display))" } ?? cgroup.display): \(policy.summary)"
        )
        if existing {
            let result = try SocketIterator(pinRoot: state.root, cgroups: cgroups, for: .existingSockets)
                .run(cgroup, applying: true, owners: false)
            for failure in result.unreachable { printError("keepalive: warning: \(failure)") }
            print(
                "updated \(result.applied) existing sockets in \(result.namespaces) network namespaces"
                    + (result.keptOwn > 0 ? "; \(result.keptOwn) kept the keepalive their program set" : "")
            )
        }
    }
}

/// What the opening check of a changing command repaired, on stderr.
func report(_ report: Transaction.Report) {
    for line in report.repaired { printError("keepalive: repaired: \(line)") }
    for line in report.keptUnknown { printError("keepalive: warning: \(line)") }
    for line in report.failed { printError("keepalive: error: could not repair: \(line)") }
}
