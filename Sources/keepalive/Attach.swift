import ArgumentParser
import KeepaliveCore

struct Attach: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Give every TCP socket of a cgroup subtree a keepalive policy (or update it in place).",
        discussion: "Values of 0 leave the system default. TCP_DEFER_ACCEPT is a preload-mode option only."
    )

    @OptionGroup var target: TargetOptions

    @Option(help: ArgumentHelp(PolicyOption.keepidle.help, valueName: "s")) var keepidle: String?
    @Option(help: ArgumentHelp(PolicyOption.keepintvl.help, valueName: "s")) var keepintvl: String?
    @Option(help: ArgumentHelp(PolicyOption.keepcnt.help, valueName: "n")) var keepcnt: String?
    @Option(help: ArgumentHelp(PolicyOption.userTimeout.help, valueName: "ms")) var userTimeout: String?
    @Option(help: ArgumentHelp(PolicyOption.syncnt.help, valueName: "n")) var syncnt: String?
    @Option(help: ArgumentHelp(PolicyOption.maxseg.help, valueName: "bytes")) var maxseg: String?
    @Option(help: ArgumentHelp(PolicyOption.windowClamp.help, valueName: "bytes")) var windowClamp: String?
    @Option(help: ArgumentHelp("Who wins when the program sets keepalive itself: application (default) or policy.",
                               valueName: "application|policy"))
    var precedence: String?
    @Option(help: .hidden)
    var deferAccept: String?

    @Flag(help: "Also apply the policy now to the subtree's TCP sockets that already exist (BPF TCP iterator).")
    var existing = false

    @OptionGroup var state: StateOptions

    /// The policy the flags describe; every value checked before anything changes.
    func policy() throws -> Policy {
        if deferAccept != nil {
            throw CommandError("--defer-accept: TCP_DEFER_ACCEPT cannot be set from BPF (bpf_setsockopt refuses it); use libkeepalive_listen.so or libkeepalive_socket.so")
        }
        let given: [(PolicyOption, String?)] = [
            (.keepidle, keepidle), (.keepintvl, keepintvl), (.keepcnt, keepcnt), (.userTimeout, userTimeout),
            (.syncnt, syncnt), (.maxseg, maxseg), (.windowClamp, windowClamp),
        ]
        var values: [PolicyOption: Int32] = [:]
        for (option, text) in given {
            guard let text else { continue }
            do { values[option] = try option.parse(text) } catch { throw CommandError("\(option.flag) \(error.valueText)") }
        }
        do {
            return Policy(values, precedence: try precedence.map(Precedence.init(parsing:)) ?? .application)
        } catch {
            throw CommandError("--precedence \(error.valueText)")
        }
    }

    func run() throws {
        let policy = try policy()
        let cgroups = try state.cgroups()
        let cgroup = try target.resolve(cgroups)  // before anything is made
        let pinned = try state.openOrCreate(cgroups)
        let change = try pinned.transaction { txn in
            try txn.prune()
            return try txn.apply(policy, to: cgroup)
        }
        print("\(change.rawValue) policy on \(cgroup.relativePath): \(policy.summary)")
        if existing {
            let result = try SocketIterator(state: pinned, cgroups: cgroups).run(cgroup, mode: .apply)
            print("updated \(result.applied) existing sockets in \(result.namespaces) network namespaces")
        }
    }
}

extension PolicyError {
    /// The message without the option's key (the flag is named by the caller).
    var valueText: String {
        switch self {
        case let .notANumber(_, value): "'\(value)' is not a whole number"
        case .outOfRange, .badPrecedence: String(description.drop { $0 != ":" }.dropFirst(2))
        }
    }
}
