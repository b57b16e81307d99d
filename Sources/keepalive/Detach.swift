// SPDX-License-Identifier: MIT
import ArgumentParser
import KeepaliveCore

struct Detach: AsyncParsableCommand, StateCommand {
    static let configuration = CommandConfiguration(
        abstract: "Remove a cgroup's policy (its sockets fall back to an ancestor's), or every policy with --all."
    )

    @OptionGroup var target: TargetOptions

    @Flag(help: "Remove every policy, link and pin: keepalive no longer acts anywhere.")
    var all = false

    @OptionGroup var options: StateOptions

    func validate() throws {
        if all && target.given > 0 { throw ValidationError("give a cgroup or --all, not both") }
        if !all && target.given == 0 { throw ValidationError(TargetOptions.exactlyOne + ", or --all") }
    }

    func run() async throws {
        let cgroups = try options.cgroups()
        let state = options.state(cgroups)
        if all {
            let kept = try state.removeAll()
            for path in kept { printError("keepalive: warning: left \(path) in place: it is not keepalive's") }
            print(kept.isEmpty ? "removed every policy and \(state.root)" : "removed every policy of keepalive's")
            return
        }
        let (cgroup, origin) = try await target.resolve(cgroups)
        let shown = origin.display.map { "\($0) (\(cgroup.display))" } ?? cgroup.display
        let removed =
            try state.transaction(create: false) { session in
                report(session.report)
                return try session.transaction.remove(cgroup.id)
            } ?? false
        guard removed else { throw CommandError("no policy on \(shown)") }
        print("removed policy from \(shown)")
    }
}
