import ArgumentParser
import Glibc
import KeepaliveCore

@main
struct Keepalive: AsyncParsableCommand {
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
    static func main() async {
        var command: any ParsableCommand
        do {
            command = try parseAsRoot()
        } catch {
            guard !(error is CleanExit) else { exit(withError: error) }
            fail(error, json: false)
        }
        do {
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            fail(error, json: (command as? any JSONOutputCommand)?.json ?? false)
        }
    }

    static func fail(_ error: any Error, json: Bool) -> Never {
        let line = fullMessage(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
        let message = line.hasPrefix("Error: ") ? String(line.dropFirst(7)) : line
        if json {
            try? printJSON(["error": message])
        } else {
            printError("keepalive: error: \(message)")
        }
        let code = exitCode(for: error)
        Glibc.exit(code == .success ? 1 : code.rawValue)
    }
}
