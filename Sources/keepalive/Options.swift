// SPDX-License-Identifier: MIT
import ArgumentParser
import BPF
import Foundation
import Glibc
import KeepaliveCore
import KeepaliveRuntime
import Logging

/// Where the state lives and how to talk about it: what every privileged
/// subcommand shares. Flags and environment variables are named here; the
/// core only knows paths.
struct StateOptions: ParsableArguments {
    static let pinPathVariable = "KEEPALIVE_PIN_PATH"
    static let cgroupRootVariable = "KEEPALIVE_CGROUP_ROOT"

    @Option(
        name: .long,
        help: ArgumentHelp(
            "bpffs directory of keepalive's pinned state (or \(Self.pinPathVariable)).",
            valueName: "path"
        )
    )
    var pinPath: String = environment(Self.pinPathVariable) ?? PinnedState.defaultRoot

    @Option(
        name: .long,
        help: ArgumentHelp(
            "cgroup2 mount (or a directory holding it at unified/) to use instead of the one in /proc/self/mountinfo (or \(Self.cgroupRootVariable)).",
            valueName: "path"
        )
    )
    var cgroupRoot: String?

    @Flag(name: .long, help: "Print libbpf's messages and the whole verifier log of a program the kernel refuses.")
    var verbose = false

    var logger: Logger {
        var logger = Logger(label: "keepalive") { _ in LineLogHandler(style: .command) }
        logger.logLevel = verbose ? .debug : .notice
        return logger
    }

    /// Checks privilege, then finds the cgroup2 hierarchy.
    func cgroups() throws -> CgroupFS {
        let missing = try Privileges.missingForBPF()
        guard missing.isEmpty else {
            throw CommandError("missing privilege: \(missing.joined(separator: ", ")) (run as root)")
        }
        Libbpf.route(to: logger)
        let root = cgroupRoot ?? environment(Self.cgroupRootVariable)
        let discovered: Result<CgroupFS, CgroupError> = Result { () throws(CgroupError) in
            try CgroupFS.discover(root: root)
        }
        if case .failure(let error) = discovered, root != nil {
            throw CommandError("\(error) (from --cgroup-root or \(Self.cgroupRootVariable))")
        }
        return try discovered.get()
    }

    func state(_ cgroups: CgroupFS) -> PinnedState {
        PinnedState(root: pinPath, cgroups: cgroups, logger: logger)
    }

}

/// A command that works on the pinned state (all but `agent --check` need privilege).
protocol StateCommand {
    var options: StateOptions { get }
}

func environment(_ name: String) -> String? {
    getenv(name).map { String(cString: $0) }
}

/// Which cgroup a command acts on: a path, a systemd unit, a process's
/// cgroup, a container's or a Kubernetes pod's (through the container runtime).
struct TargetOptions: ParsableArguments {
    @Argument(help: "cgroup v2 directory: relative to the cgroup2 mount, or absolute; / for the root.")
    var cgroup: String?

    @Option(help: ArgumentHelp("A systemd unit, e.g. nginx.service, instead of a path.", valueName: "name"))
    var unit: String?

    @Option(help: ArgumentHelp("A process whose cgroup to use, instead of a path.", valueName: "pid"))
    var pid: Int32?

    @Option(
        help: ArgumentHelp(
            "A docker or podman container (name, id or id prefix; through the Docker-compatible API), or a CRI container (name or id).",
            valueName: "name|id"
        )
    )
    var container: String?

    @Option(
        help: ArgumentHelp(
            "A Kubernetes pod on this node, through CRI: its own cgroup, so every container it has and will have.",
            valueName: "namespace/name"
        )
    )
    var pod: String?

    @Option(
        help: ArgumentHelp(
            "CRI socket for --pod and --container (else $CONTAINER_RUNTIME_ENDPOINT, else \(RuntimeKind.cri.usualSockets.joined(separator: ", "))).",
            valueName: "unix:///path"
        )
    )
    var runtimeEndpoint: String?

    @Option(
        help: ArgumentHelp(
            "Docker-compatible API socket for --container (else $DOCKER_HOST, $CONTAINER_HOST, \(RuntimeKind.docker.usualSockets.joined(separator: ", "))).",
            valueName: "unix:///path"
        )
    )
    var dockerEndpoint: String?

    var given: Int { [cgroup != nil, unit != nil, pid != nil, container != nil, pod != nil].filter { $0 }.count }

    /// The rule every targeted command states the same way.
    static let exactlyOne = "give one of CGROUP, --unit, --pid, --container or --pod"

    func validate() throws {
        guard given <= 1 else { throw ValidationError(Self.exactlyOne) }
    }

    /// The target, before anything is changed: its cgroup and, for a pod or
    /// a container, who it is.
    func resolve(_ cgroups: CgroupFS) async throws -> (cgroup: Cgroup, origin: Origin) {
        let resolver = TargetResolver(cgroups: cgroups)
        if let unit { return (try resolver.cgroup(ofUnit: unit), .none) }
        if let pid { return (try resolver.cgroup(ofPID: pid), .none) }
        if pod != nil || container != nil {
            let locator = WorkloadLocator(
                runtimes: try Runtimes(
                    cri: runtimeEndpoint,
                    docker: dockerEndpoint,
                    environment: ProcessInfo.processInfo.environment
                ),
                cgroups: cgroups
            )
            if let pod { return try await locator.pod(pod) }
            if let container { return try await locator.container(container) }
        }
        guard let cgroup else { throw CommandError(Self.exactlyOne) }
        return (try cgroups.resolve(cgroup), .none)
    }
}

/// A policy's values as flags, parsed and range-checked by PolicyOption as
/// argument-parser reads them; names and help come from its definition.
struct PolicyArguments: ParsableArguments {
    @Option(name: flag(.keepidle), parsing: .unconditional, help: help(.keepidle), transform: flagValue(.keepidle))
    var keepidle: Int32?
    @Option(name: flag(.keepintvl), parsing: .unconditional, help: help(.keepintvl), transform: flagValue(.keepintvl))
    var keepintvl: Int32?
    @Option(name: flag(.keepcnt), parsing: .unconditional, help: help(.keepcnt), transform: flagValue(.keepcnt))
    var keepcnt: Int32?
    @Option(
        name: flag(.userTimeout),
        parsing: .unconditional,
        help: help(.userTimeout),
        transform: flagValue(.userTimeout)
    )
    var userTimeout: Int32?
    @Option(name: flag(.syncnt), parsing: .unconditional, help: help(.syncnt), transform: flagValue(.syncnt))
    var syncnt: Int32?
    @Option(name: flag(.maxseg), parsing: .unconditional, help: help(.maxseg), transform: flagValue(.maxseg))
    var maxseg: Int32?
    @Option(
        name: flag(.windowClamp),
        parsing: .unconditional,
        help: help(.windowClamp),
        transform: flagValue(.windowClamp)
    )
    var windowClamp: Int32?

    // Checked in validate(), so that a bad value reads "--precedence 'x' is neither ...".
    @Option(
        help: ArgumentHelp(
            "Who wins when the program sets keepalive itself: \(Precedence.application.name) (default) or \(Precedence.policy.name).",
            valueName: Precedence.allCases.map(\.name).joined(separator: "|")
        )
    )
    var precedence: String?

    @Option(
        name: .customLong("rule"),
        help: ArgumentHelp(
            "A rule by destination, tried in order (repeatable): 'remote=CIDR,remote_ports=N,local_ports=N,name=NAME,keepalive=off' and option values, lists by repeating a key.",
            valueName: "key=value,..."
        )
    )
    var rules: [String] = []

    @Flag(
        name: .customLong(Policy.Observation.onlyKey),
        help:
            "Set nothing: count the sockets the policy would set (per rule) and observe their paths' idle limits (keepalive paths)."
    )
    var observe = false

    @Flag(
        name: .customLong(Policy.Observation.pathsKey.replacing("_", with: "-")),
        help: "Set the options and observe the connections' paths' idle limits (keepalive paths)."
    )
    var observePaths = false

    @Option(help: .hidden)
    var deferAccept: String?

    func validate() throws {
        if deferAccept != nil {
            throw ValidationError(
                "--defer-accept: TCP_DEFER_ACCEPT cannot be set from BPF (bpf_setsockopt refuses it); use libkeepalive_listen.so or libkeepalive_socket.so"
            )
        }
        do { _ = try precedence.map(Precedence.init(parsing:)) } catch {
            throw ValidationError("--precedence \(error.problem)")
        }
        _ = try parsedRules()
    }

    /// The --rule flags, in order, each checked; an error names the rule.
    private func parsedRules() throws -> [Rule] {
        var parsed: [Rule] = []
        for (index, spec) in rules.enumerated() {
            do throws(RuleError) { parsed.append(try Rule(parsing: spec)) } catch {
                throw ValidationError("--rule '\(spec)' (rule \(index + 1)): \(error)")
            }
        }
        do throws(RuleError) { return try Rule.validate(parsed) } catch { throw ValidationError("--rule: \(error)") }
    }

    /// The flag given for `option`, if any: a switch the compiler checks
    /// covers every option, so a new one cannot lack its flag.
    func value(_ option: PolicyOption) -> Int32? {
        switch option {
        case .keepidle: keepidle
        case .keepintvl: keepintvl
        case .keepcnt: keepcnt
        case .userTimeout: userTimeout
        case .syncnt: syncnt
        case .maxseg: maxseg
        case .windowClamp: windowClamp
        }
    }

    /// The policy the flags describe; options not given keep their defaults.
    /// validate() refused a precedence or rules that do not parse: the
    /// `try?`s below cannot lose one.
    var policy: Policy {
        let values = PolicyOption.allCases.reduce(into: [PolicyOption: Int32]()) { $0[$1] = value($1) }
        return Policy(
            values,
            precedence: precedence.flatMap { try? Precedence(parsing: $0) } ?? .application,
            rules: (try? parsedRules()) ?? [],
            observation: Policy.Observation(only: observe, paths: observePaths)
        )
    }

    private static func flag(_ option: PolicyOption) -> NameSpecification { .customLong(option.flag) }

    private static func help(_ option: PolicyOption) -> ArgumentHelp {
        ArgumentHelp(option.help, valueName: option.unit.valueName)
    }

    private static func flagValue(_ option: PolicyOption) -> @Sendable (String) throws -> Int32 {
        { text in
            do throws(PolicyError) { return try option.parse(text) } catch { throw CommandError(error.problem) }
        }
    }
}

/// A failure worth one line to the user.
struct CommandError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
