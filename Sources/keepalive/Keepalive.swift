import ArgumentParser
import BPF
import Dispatch
import Glibc
import KeepaliveCore

@main
struct Keepalive: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keepalive",
        abstract: "Makes dead TCP connections die on time, for programs that cannot be changed.",
        discussion: """
            Sets SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT and TCP_USER_TIMEOUT on every \
            TCP socket of a cgroup v2 subtree, through a BPF sock_ops program.
            """,
        version: KeepaliveVersion.string,
        subcommands: [Attach.self, Detach.self, Status.self, Inspect.self, Events.self, AgentCommand.self,
                      Prepare.self]
    )

    /// Errors as one line (JSON under --json) and a non-zero exit; help and version as usual.
    static func main() {
        let command: any ParsableCommand
        do {
            command = try parseAsRoot()
        } catch {
            fail(error, json: false)
        }
        let json = (command as? any JSONOutputCommand)?.json ?? false
        let verbose = (command as? any StateCommand)?.options.verbose ?? false
        guard let asyncCommand = command as? any AsyncParsableCommand else {
            do {
                var command = command
                try command.run()
                Glibc.exit(0)
            } catch {
                fail(error, json: json, verbose: verbose)
            }
        }
        // Not from an async `main`: Swift runs that at user-initiated
        // priority, and on Linux Dispatch then lowers its threads' nice
        // value, which needs CAP_SYS_NICE (the unit does not grant it). The
        // async commands (the agent) run at default priority instead.
        nonisolated(unsafe) var running = asyncCommand  // handed over: main only waits from here
        Task.detached(priority: .medium) {
            do {
                try await running.run()
                Glibc.exit(0)
            } catch {
                fail(error, json: json, verbose: verbose)
            }
        }
        dispatchMain()
    }

    static func fail(_ error: any Error, json: Bool, verbose: Bool = false) -> Never {
        if exitCode(for: error) == .success { exit(withError: error) }  // --help, --version: printed, exit 0
        if verbose, let load = error as? LoadError, !load.log.isEmpty { printError(load.log) }  // the verifier's whole log
        let line = fullMessage(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
        let message = line.hasPrefix("Error: ") ? String(line.dropFirst(7)) : line
        if json {
            try? printJSON(["error": message])
        } else {
            // Under systemd's journal, with the error priority (sd-daemon(3)).
            printError((LineLogHandler.Style.forAgent == .journal ? "<3>" : "") + "keepalive: error: \(message)")
        }
        let code = exitCode(for: error)
        Glibc.exit(code == .success ? 1 : code.rawValue)
    }
}
