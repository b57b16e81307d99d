import ArgumentParser
import KeepaliveCore

struct Detach: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Remove a cgroup's policy (its sockets fall back to an ancestor's), or every policy with --all."
    )

    @OptionGroup var target: TargetOptions

    @Flag(help: "Remove every policy, link and pin: keepalive no longer acts anywhere.")
    var all = false

    @OptionGroup var state: StateOptions

    func validate() throws {
        guard (target.given == 0) != (!all) else {
            throw ValidationError(all ? "give a cgroup or --all, not both" : "give a cgroup, or --all")
        }
    }

    func run() throws {
        let cgroups = try state.cgroups()
        let opened = try state.openExisting(cgroups)
        let cgroup = all ? nil : try target.resolve(cgroups)
        guard let pinned = opened else {
            if let cgroup { throw CommandError("no policy on \(cgroup.relativePath)") }
            print("nothing to remove")
            return
        }
        if all {
            try pinned.transaction { try $0.removeAll() }
            print("removed every policy and \(pinned.root)")
            return
        }
        guard let cgroup else { return }
        let removed = try pinned.transaction { txn in
            try txn.prune()
            return try txn.remove(cgroup)
        }
        guard removed else { throw CommandError("no policy on \(cgroup.relativePath)") }
        print("removed policy from \(cgroup.relativePath)")
    }
}
