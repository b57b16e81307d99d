// SPDX-License-Identifier: MIT
import CLibBPF

/// Why the pinned state cannot be used as it is; nothing in force is changed.
public enum StateError: Error, CustomStringConvertible, Equatable {
    /// The pin path is not usable: relative, empty, or not a directory.
    case badPinPath(String, String)
    /// The pin path is not on a BPF filesystem.
    case notOnBPFFS(String)
    /// The pin path could be changed by someone other than root.
    case unsafePinPath(String, String)
    /// The state was written by a newer keepalive.
    case newerLayout(path: String, found: UInt32, known: UInt32)
    case newerProgram(path: String, found: UInt32, known: UInt32)
    /// Every policy slot is taken.
    case full(capacity: Int)
    /// The rule map is full: that many policies have rules.
    case rulesFull(capacity: Int)
    /// Layout-1 state cannot be migrated: some of its cgroups could not be found.
    case migrationBlocked(String)
    /// Part of the state is not pinned (an interrupted install, an outside hand): a command repairs it.
    case incomplete(path: String, String)
    /// Another agent holds this state.
    case agentRunning(path: String, pid: Int32?)
    /// The state's policies were set from another cgroup root (a cgroup
    /// namespace sees a subtree as its root): their paths mean other cgroups here.
    case otherCgroupView(path: String, recorded: UInt64, seen: UInt64)

    public var description: String {
        switch self {
        case let .badPinPath(path, why):
            "pin path '\(path)' \(why)"
        case let .notOnBPFFS(path):
            "pin path '\(path)' is not on a BPF filesystem (mount one with: mount -t bpf -o mode=0700 bpf DIR)"
        case let .unsafePinPath(path, why):
            "pin path '\(path)' is unsafe: \(why); it must be a root-owned directory nobody else can write"
        case let .newerLayout(path, found, known):
            "the state at \(path) has layout \(found), written by a newer keepalive (this one knows layout \(known)); "
                + "use that version, or remove everything with its detach --all"
        case let .newerProgram(path, found, known):
            "the state at \(path) runs program version \(found), newer than this keepalive's \(known); "
                + "use that version, or remove everything with its detach --all"
        case let .full(capacity):
            "the policy map is full: all \(capacity) policies are in use; what is in force stays"
        case let .rulesFull(capacity):
            "the rule map is full: \(capacity) policies have rules already; what is in force stays"
        case let .migrationBlocked(why):
            "cannot upgrade the state of keepalive 0.1.0 in place: \(why); nothing was changed"
        case let .incomplete(path, what):
            "the state at \(path) is incomplete (\(what)); any keepalive command (e.g. status) repairs it"
        case let .agentRunning(path, pid):
            "another keepalive agent\(pid.map { " (pid \($0))" } ?? "") is enforcing the state at \(path); "
                + "two agents would undo each other's policies"
        case let .otherCgroupView(path, recorded, seen):
            "the state at \(path) was made from the cgroup2 hierarchy rooted at cgroup id \(recorded), but this "
                + "process sees it rooted at id \(seen) (another cgroup namespace); use the same cgroup root "
                + "as the state's other users, or another pin path"
        }
    }
}
