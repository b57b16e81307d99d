// SPDX-License-Identifier: MIT
import KeepaliveCore

import struct SystemPackage.FilePath

/// One cgroup the policy file selects now: the entry that selects it, the
/// values it gets, and the pod or container it belongs to if it is one.
struct Choice: Sendable {
    let cgroup: Cgroup
    let spec: Int
    let policy: Policy
    let origin: Origin
    /// The entry's "file:line", for the log.
    let source: String

    var desire: Transaction.Desire {
        Transaction.Desire(cgroup: cgroup, policy: policy, source: source, origin: origin)
    }
}

/// The cgroups the policy file selects now, found by id (the kernel's name)
/// and by path (inotify's): each event costs a lookup, not a scan.
struct Selection {
    private var byID: [UInt64: Choice] = [:]
    private var byPath: [FilePath: UInt64] = [:]

    init(_ choices: some Sequence<Choice> = []) {
        for choice in choices { insertIfLater(choice) }
    }

    var count: Int { byID.count }
    var choices: Dictionary<UInt64, Choice>.Values { byID.values }

    subscript(id: UInt64) -> Choice? { byID[id] }

    /// Selects a cgroup, unless a later entry of the file selects it already; whether it did.
    @discardableResult
    mutating func insertIfLater(_ choice: Choice) -> Bool {
        if let present = byID[choice.cgroup.id], present.spec > choice.spec { return false }
        byID[choice.cgroup.id] = choice
        byPath[choice.cgroup.path] = choice.cgroup.id
        return true
    }

    /// Forgets the cgroup at `path`; its id, if it was selected. (cgroup2
    /// removes only empty directories: a removed one has no selected children.)
    mutating func remove(at path: FilePath) -> UInt64? {
        guard let id = byPath.removeValue(forKey: path) else { return nil }
        byID[id] = nil
        return id
    }
}
