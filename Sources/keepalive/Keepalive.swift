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
        subcommands: [Attach.self, Detach.self, Status.self, Inspect.self, AgentCommand.self]
    )

    /// Errors as one line on stderr and a non-zero exit; help and version as usual.
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            let code = exitCode(for: error)
            if code == .success || code == .validationFailure && isHelpRequest(error) {
                exit(withError: error)
            }
            let message = fullMessage(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            let trimmed = message.hasPrefix("Error: ") ? String(message.dropFirst(7)) : message
            printError("keepalive: error: \(trimmed)")
            Glibc.exit(code == .success ? 1 : code.rawValue)
        }
    }

    static func isHelpRequest(_ error: Error) -> Bool {
        error is CleanExit
    }
}
