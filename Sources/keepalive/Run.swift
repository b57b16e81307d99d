// SPDX-License-Identifier: MIT
import ArgumentParser
import Foundation
import Glibc
import KeepaliveCore

/// `keepalive run [policy options] -- COMMAND`: COMMAND and its children with
/// keepalive on every TCP socket they open. As root, in a cgroup of its own
/// with the policy attached (any binary); without privilege, through the
/// preload library (dynamically linked programs).
struct Run: ParsableCommand, StateCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a command with keepalive on every TCP socket it and its children open.",
        discussion: """
            As root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, cgroup v2): in a cgroup of its own (a \
            transient systemd scope where systemd runs, else a directory under keepalive.run/), \
            with the policy attached, for any binary; the policy and the cgroup go when the \
            command and its children have exited. Without privilege: libkeepalive_socket.so, \
            the options passed as its environment variables (dynamically linked programs only). \
            The command's exit status, signals, standard streams and environment pass through.
            """
    )

    enum Mode: String, ExpressibleByArgument, CaseIterable {
        case bpf, preload
    }

    @OptionGroup var values: PolicyArguments

    @Option(help: ArgumentHelp("Force a mode (default: bpf with privilege, else preload).", valueName: "bpf|preload"))
    var mode: Mode?

    @Flag(help: "No line on stderr saying which mode runs.")
    var quiet = false

    @OptionGroup var options: StateOptions

    @Argument(
        parsing: .postTerminator,
        help: ArgumentHelp("The command and its arguments, after --.", valueName: "command")
    )
    var command: [String] = []

    func validate() throws {
        guard !command.isEmpty else {
            throw ValidationError("give the command after --, e.g. keepalive run -- curl https://example.org")
        }
    }

    /// Signals keepalive passes on to the command. SIGINT and SIGQUIT from a
    /// terminal reach the whole foreground process group, the command too:
    /// keepalive ignores them rather than deliver them twice.
    static let forwarded: [Int32] = [SIGTERM, SIGHUP, SIGUSR1, SIGUSR2, SIGALRM, SIGCONT]

    /// Before any thread exists, so that every thread inherits the mask: the
    /// forwarding thread takes them with sigwait, no other thread sees them.
    static func blockForwardedSignals() {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in forwarded { sigaddset(&set, signal) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
        signal(SIGINT, SIG_IGN)
        signal(SIGQUIT, SIG_IGN)
    }

    func run() throws {
        let missing = try Privileges.missingForBPF()
        switch mode ?? (missing.isEmpty ? .bpf : .preload) {
        case .bpf: try runCovered(missing: missing)
        case .preload: try runPreloaded()
        }
    }

    // MARK: bpf

    private func runCovered(missing: [String]) throws {
        guard missing.isEmpty else {
            throw CommandError(
                "--mode bpf: missing privilege: \(missing.joined(separator: ", ")) (run as root, or --mode preload)"
            )
        }
        let policy = values.policy
        let cgroups = try options.cgroups()
        let state = options.state(cgroups)
        // Before the cgroup is made.
        if let lacking = try state.kernelFeatures().unsupported(by: policy) { throw lacking }
        let run = try RunCgroup.enter(cgroups, description: "keepalive run: \(command.joined(separator: " "))")
        let child: pid_t
        do {
            _ = try state.transaction(create: true) { try $0.transaction.apply(policy, to: run.cgroup) }
            child = try spawn(environment: ProcessInfo.processInfo.environment)
            try run.leave()
        } catch {
            // Undoing: the error above is the one to tell; what cannot be
            // undone here the next keepalive command removes (an empty run cgroup).
            try? run.leave()
            _ = try? state.transaction(create: false) { try $0.transaction.remove(run.cgroup.id) }
            run.remove()
            throw error
        }
        if !quiet { printError("keepalive: bpf mode: policy on \(run.cgroup.display): \(policy.summary)") }
        let status = waitForwardingSignals(to: child)
        if run.isPopulated {
            // Its children run on, covered; the next keepalive command removes it once they are gone.
            if !quiet {
                printError(
                    "keepalive: \(command[0])'s children still run in \(run.cgroup.display): the policy stays until they exit"
                )
            }
        } else {
            do {
                _ = try state.transaction(create: false) { try $0.transaction.remove(run.cgroup.id) }
            } catch {
                printError(
                    "keepalive: the policy on \(run.cgroup.display) stays until the next keepalive command: \(error)"
                )
            }
            run.remove()
        }
        exitAs(status)
    }

    // MARK: preload

    private func runPreloaded() throws {
        let policy = values.policy
        guard policy.rules.isEmpty else { throw CommandError("--rule needs the bpf mode (run as root)") }
        guard policy.precedence == .application else {
            throw CommandError("--precedence \(policy.precedence.name) needs the bpf mode (run as root)")
        }
        guard policy.observation == .none else {
            throw CommandError("--observe and --observe-paths need the bpf mode (run as root)")
        }
        let library = Self.socketLibrary()
        // Found as the loader will look for it, or said now rather than by ld.so in every process.
        guard dlopen(library, RTLD_LAZY | RTLD_LOCAL) != nil else {
            throw CommandError(
                "--mode preload: cannot load \(library): \(dlerror().map { String(cString: $0) } ?? "not found") (is the keepalive package installed?)"
            )
        }
        let preloaded = ProcessInfo.processInfo.environment["LD_PRELOAD"].map { [$0] } ?? []
        setenv("LD_PRELOAD", ([library] + preloaded).joined(separator: ":"), 1)
        for option in PolicyOption.allCases {
            if option == .userTimeout && policy.derivesUserTimeout {
                unsetenv(option.environmentVariable)  // unset: the library derives it
            } else {
                setenv(option.environmentVariable, "\(policy[option])", 1)
            }
        }
        if !quiet {
            printError("keepalive: preload mode (\(library)): \(policy.valuesSummary)")
            if let path = Self.executable(command[0]), ELFFile.isStaticallyLinked(path) {
                printError(
                    "keepalive: warning: \(path) is statically linked: the preload library cannot reach it (run as root for the bpf mode)"
                )
            }
        }
        // Nothing of keepalive's own is left to do: the command takes this process over.
        let argv = command.map { strdup($0) } + [nil]
        execvp(command[0], argv)
        throw CommandError("cannot run \(command[0]): \(String(cString: strerror(errno)))")
    }

    /// Next to this binary in a build tree (build/bin, build/lib), else by
    /// name from the loader's path (the package installs it there).
    static func socketLibrary() -> String {
        let name = "libkeepalive_socket.so"
        // /proc/self/exe unreadable (no /proc): the library is then looked for by name alone.
        let binary = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? "/"
        let beside = URL(fileURLWithPath: binary).deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("lib").appendingPathComponent(name).path
        return access(beside, R_OK) == 0 ? beside : name
    }

    /// The file a command name runs, as execvp finds it.
    static func executable(_ name: String) -> String? {
        if name.contains("/") { return name }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        return path.split(separator: ":").map { "\($0)/\(name)" }.first { access($0, X_OK) == 0 }
    }

    // MARK: the command's process

    /// COMMAND, started here (so in the run's cgroup) with default signal
    /// dispositions and an empty mask, whatever keepalive's are.
    private func spawn(environment: [String: String]) throws -> pid_t {
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t()
        var all = sigset_t()
        sigemptyset(&none)
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let argv = command.map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for pointer in argv + envp { free(pointer) } }
        var pid = pid_t()
        let result = posix_spawnp(&pid, command[0], nil, &attributes, argv, envp)
        guard result == 0 else { throw CommandError("cannot run \(command[0]): \(String(cString: strerror(result)))") }
        return pid
    }

    /// Waits for the command, passing on the forwarded signals meanwhile.
    private func waitForwardingSignals(to child: pid_t) -> Int32 {
        let forwarder = Thread {
            var set = sigset_t()
            sigemptyset(&set)
            for signal in Self.forwarded { sigaddset(&set, signal) }
            while true {
                var signal: Int32 = 0
                if sigwait(&set, &signal) == 0 { kill(child, signal) }
            }
        }
        forwarder.start()
        var status: Int32 = 0
        while waitpid(child, &status, 0) < 0 && errno == EINTR {}
        return status
    }

    /// Ends keepalive as the command ended: its exit code, or its signal.
    private func exitAs(_ status: Int32) -> Never {
        let signal = status & 0x7f
        if signal == 0 { Glibc.exit((status >> 8) & 0xff) }
        Glibc.signal(signal, SIG_DFL)
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, signal)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
        raise(signal)
        Glibc.exit(128 + signal)  // a signal whose default is not to end the process
    }
}

/// What the ELF header says of how a program is linked.
enum ELFFile {
    /// True for an ELF executable without PT_INTERP: no dynamic loader, so no
    /// LD_PRELOAD. Scripts and unreadable files: false (nothing can be told).
    static func isStaticallyLinked(_ path: String) -> Bool {
        guard let handle = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? handle.close() }  // read-only: closing loses nothing
        guard let header = try? handle.read(upToCount: 64), header.count == 64,
            header.starts(with: [0x7f, 0x45, 0x4c, 0x46]), header[4] == 2  // ELFCLASS64
        else { return false }
        func integer<T: FixedWidthInteger>(_ data: Data, _ offset: Int, _: T.Type) -> T {
            data[offset..<offset + MemoryLayout<T>.size].reversed().reduce(0) { $0 << 8 | T($1) }
        }
        let programHeaders = integer(header, 32, UInt64.self)
        let entrySize = Int(integer(header, 54, UInt16.self))
        let count = Int(integer(header, 56, UInt16.self))
        guard entrySize >= 4, count > 0, (try? handle.seek(toOffset: programHeaders)) != nil,
            let table = try? handle.read(upToCount: entrySize * count), table.count == entrySize * count
        else { return false }
        let types = (0..<count).map { integer(table, $0 * entrySize, UInt32.self) }
        return !types.contains(3)  // PT_INTERP
    }
}
