// SPDX-License-Identifier: MIT
import ArgumentParser
import BPF
import Glibc
import KeepaliveAgent
import KeepaliveCore

@main
struct Keepalive: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keepalive",
        abstract: "Makes dead TCP connections die on time, for programs that cannot be changed.",
        discussion: """
            Sets SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT and TCP_USER_TIMEOUT on every \
            TCP socket of a cgroup v2 subtree, through a BPF sock_ops program: a cgroup, a systemd unit \
            (--unit), a process's cgroup (--pid), a docker or podman container (--container) or a \
            Kubernetes pod (--pod), for any binary. The agent keeps a policy file in force as they \
            come and go. Without privilege, the preload libraries do it for dynamically linked \
            programs.

            See also: keepalive.yaml(5) for the agent's policy file, libkeepalive(8) for the preload \
            libraries, /usr/share/doc/keepalive.
            """,
        version: KeepaliveVersion.string,
        subcommands: [
            Attach.self, Detach.self, Status.self, Inspect.self, Events.self, Paths.self, Run.self,
            AgentCommand.self, Prepare.self,
        ]
    )

    /// Errors as one line (JSON under --json) and a non-zero exit; help and version as usual.
    static func main() async {
        let command: any ParsableCommand
        do {
            command = try parseAsRoot()
        } catch {
            fail(error, json: false)
        }
        // Before any thread exists, so that every thread inherits the signal mask.
        if let agent = command as? AgentCommand, agent.runsAsDaemon { StopDeadline.arm() }
        if command is Run { Run.blockForwardedSignals() }
        do {
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                var command = command
                try command.run()
            }
        } catch {
            fail(
                error,
                json: (command as? any JSONOutputCommand)?.json ?? false,
                verbose: (command as? any StateCommand)?.options.verbose ?? false
            )
        }
    }

    static func fail(_ error: any Error, json: Bool, verbose: Bool = false) -> Never {
        let code = exitCode(for: error)
        if code == .success { exit(withError: error) }  // --help, --version: printed, exit 0
        // The verifier's whole log.
        if verbose, let load = error as? LoadError, !load.log.isEmpty { printError(load.log) }
        let line = fullMessage(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
        let message = line.hasPrefix("Error: ") ? String(line.dropFirst(7)) : line
        if json {
            try? printJSON(["error": message])  // encoding a string cannot fail; nothing else could be said
        } else {
            // Under systemd's journal, with the error priority (sd-daemon(3)).
            printError((LineLogHandler.Style.onStderr == .journal ? "<3>" : "") + "keepalive: error: \(message)")
        }
        Glibc.exit(code.rawValue)
    }
}
