import ArgumentParser
import KeepaliveCore

/// Which cgroup a command acts on: a path, a systemd unit, or a process's cgroup.
struct TargetOptions: ParsableArguments {
    @Argument(help: "cgroup v2 directory: absolute, or relative to the cgroup2 mount.")
    var cgroup: String?

    @Option(help: ArgumentHelp("A systemd unit, e.g. nginx.service, instead of a path.", valueName: "name"))
    var unit: String?

    @Option(help: ArgumentHelp("A process whose cgroup to use, instead of a path.", valueName: "pid"))
    var pid: Int32?

    var given: Int { [cgroup != nil, unit != nil, pid != nil].filter { $0 }.count }

    func validate() throws {
        guard given <= 1 else { throw ValidationError("give one of CGROUP, --unit or --pid") }
    }

    func resolve(_ cgroups: CgroupFS) throws -> Cgroup {
        let resolver = TargetResolver(cgroups: cgroups)
        if let unit { return try resolver.cgroup(ofUnit: unit) }
        if let pid { return try resolver.cgroup(ofPID: pid) }
        guard let cgroup else { throw CommandError("give a cgroup, --unit or --pid") }
        return try cgroups.resolve(cgroup)
    }
}
