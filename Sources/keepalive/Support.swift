import ArgumentParser
import BPF
import Glibc
import KeepaliveCore

func printError(_ line: String) {
    let text = line + "\n"
    _ = text.withCString { write(STDERR_FILENO, $0, strlen($0)) }
}

/// Columns padded to their widest cell.
func printTable(header: [String], rows: [[String]]) {
    let widths = header.indices.map { i in ([header] + rows).map { $0[i].count }.max() ?? 0 }
    for row in [header] + rows {
        let cells = row.enumerated().map { i, cell in cell + String(repeating: " ", count: widths[i] - cell.count) }
        print(String(cells.joined(separator: "  ").reversed().drop { $0 == " " }.reversed()))
    }
}

/// Options every privileged subcommand shares.
struct StateOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("bpffs directory of keepalive's pinned state.", valueName: "path"))
    var pinPath: String = getenv("KEEPALIVE_PIN_PATH").map { String(cString: $0) } ?? PinnedState.defaultRoot

    @Option(name: .long, help: ArgumentHelp(
        "cgroup2 mount to use instead of the one in /proc/self/mountinfo (or KEEPALIVE_CGROUP_ROOT).",
        valueName: "path"))
    var cgroupRoot: String?

    @Flag(name: .long, help: "Print libbpf's messages.")
    var verbose = false

    /// Checks privilege, then finds the cgroup2 hierarchy.
    func cgroups() throws -> CgroupFS {
        let missing = Privileges.missingForBPF()
        guard missing.isEmpty else {
            throw CommandError("missing privilege: \(missing.joined(separator: ", ")) (run as root)")
        }
        Libbpf.setVerbose(verbose)
        return try CgroupFS.discover(override: cgroupRoot ?? getenv("KEEPALIVE_CGROUP_ROOT").map { String(cString: $0) })
    }

    /// The pinned state, or nil if no policy was ever set.
    func openExisting(_ cgroups: CgroupFS) throws -> PinnedState? {
        try PinnedState.open(root: pinPath, cgroups: cgroups)
    }

    /// The pinned state, made (bpffs mounted, program loaded) if need be.
    func openOrCreate(_ cgroups: CgroupFS) throws -> PinnedState {
        try PinnedState.openOrCreate(root: pinPath, cgroups: cgroups)
    }
}

/// A failure worth one line to the user.
struct CommandError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
