import ArgumentParser
import KeepaliveCore

struct Detach: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Remove a cgroup's policy (its sockets fall back to an ancestor's), or every policy with --all."
    )

    @Argument(help: "cgroup v2 directory: absolute, or relative to the cgroup2 mount.")
    var cgroup: String?

    @Flag(help: "Remove every policy, link and pin: keepalive no longer acts anywhere.")
    var all = false

    @OptionGroup var state: StateOptions

    func validate() throws {
        guard (cgroup == nil) != (!all) else {
            throw ValidationError(all ? "give a cgroup or --all, not both" : "give a cgroup, or --all")
        }
    }

    func run() throws {
        let (cgroups, opened) = try state.open(create: false)
        let target = try cgroup.map { try cgroups.resolve($0) }
        guard let pinned = opened else {
            if let target { throw CommandError("no policy on \(target.relativePath)") }
            print("nothing to remove")
            return
        }
        if all {
            try pinned.transaction { try $0.removeAll() }
            print("removed every policy and \(pinned.root)")
            return
        }
        guard let target else { return }
        let removed = try pinned.transaction { txn in
            try txn.prune()
            return try txn.remove(target)
        }
        guard removed else { throw CommandError("no policy on \(target.relativePath)") }
        print("removed policy from \(target.relativePath)")
    }
}
