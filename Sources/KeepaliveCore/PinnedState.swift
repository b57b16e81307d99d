import BPF
import CLibBPF
import Foundation
import Glibc

/// keepalive's kernel state, pinned in bpffs so that it outlives every process:
///
///     <root>/prog                          the sock_ops program
///     <root>/prog-setsockopt               the cgroup/setsockopt program
///     <root>/ka_policies                   cgroup id -> policy
///     <root>/ka_sockets                    policy slot -> sockets configured
///     <root>/ka_errors                     option -> failed setsockopt calls (per CPU)
///     <root>/links/<cgroup id>             sock_ops: one link per covered subtree
///     <root>/links-setsockopt/<cgroup id>  setsockopt: one per subtree with `precedence: policy`
///
/// The CLI and the agent share it; every change happens in a `transaction`,
/// under an exclusive flock on <root>, so they never fight. (flock excludes
/// other processes; a mutex excludes this process's other threads.)
public final class PinnedState: @unchecked Sendable {
    public static let defaultRoot = BPFFS.defaultMount + "/keepalive"
    static let mapNames = ["ka_policies", "ka_sockets", "ka_errors"]

    public let root: String
    public let cgroups: CgroupFS
    let programs: [Attachment: BPFProgram]
    let policies: BPFMap<UInt64, ka_policy>
    let sockets: BPFMap<UInt32, UInt64>
    let errors: BPFMap<UInt32, UInt64>
    private let rootFD: FileDescriptor
    private let threads = NSLock()

    func linksDirectory(_ kind: Attachment) -> String { root + "/" + kind.linksDirectory }
    func linkPath(_ kind: Attachment, _ id: UInt64) -> String { linksDirectory(kind) + "/\(id)" }

    private init(root: String, cgroups: CgroupFS, rootFD: FileDescriptor) throws {
        self.root = root
        self.cgroups = cgroups
        self.rootFD = rootFD
        var programs: [Attachment: BPFProgram] = [:]
        for kind in Attachment.allCases { programs[kind] = try BPFProgram.pinned(at: root + "/" + kind.programPin) }
        self.programs = programs
        policies = try .pinned(at: root + "/ka_policies", name: "ka_policies")
        sockets = try .pinned(at: root + "/ka_sockets", name: "ka_sockets")
        errors = try .pinned(at: root + "/ka_errors", name: "ka_errors")
    }

    /// Opens the pinned state, or nil if nothing is pinned yet (so no policy is in force).
    public static func open(root: String = defaultRoot, cgroups: CgroupFS) throws -> PinnedState? {
        try open(root: root, cgroups: cgroups, create: false)
    }

    /// Opens the pinned state, first mounting bpffs and loading the embedded
    /// program if nothing is pinned yet.
    public static func openOrCreate(root: String = defaultRoot, cgroups: CgroupFS) throws -> PinnedState {
        if root.hasPrefix(BPFFS.defaultMount + "/") { try BPFFS.ensureMounted() }
        guard mkdir(root, 0o700) == 0 || errno == EEXIST else {
            throw BPFError("create \(root)", errno: errno)
        }
        // Not nil: with `create`, a missing state is made.
        return try open(root: root, cgroups: cgroups, create: true)!
    }

    private static func open(root: String, cgroups: CgroupFS, create: Bool) throws -> PinnedState? {
        guard BPFFS.exists(root) else { return nil }
        let rootFD = try FileDescriptor.open(root)
        try lock(rootFD, root)
        defer { flock(rootFD.raw, LOCK_UN) }
        // Programs are pinned last: until all are, no policy was ever added.
        let complete = Attachment.allCases.allSatisfy { BPFFS.exists(root + "/" + $0.programPin) }
        if !complete {
            guard create else { return nil }
            try loadAndPin(root: root)
        }
        return try PinnedState(root: root, cgroups: cgroups, rootFD: rootFD)
    }

    /// Loads the embedded object, reusing any maps already pinned (a loader that
    /// died half-way), and pins what is missing; the programs last, as the mark
    /// that the state is complete.
    private static func loadAndPin(root: String) throws {
        let object = try BPFObject(bytes: PackageResources.keepalive_bpf_o, name: "keepalive")
        for name in mapNames where BPFFS.exists(root + "/" + name) {
            try object.reuseMap(named: name, BPFFS.open(pinned: root + "/" + name))
        }
        try object.load()
        for name in mapNames where !BPFFS.exists(root + "/" + name) {
            try BPFFS.pin(object.mapDescriptor(named: name), at: root + "/" + name)
        }
        for kind in Attachment.allCases {
            guard mkdir(root + "/" + kind.linksDirectory, 0o700) == 0 || errno == EEXIST else {
                throw BPFError("create \(root)/\(kind.linksDirectory)", errno: errno)
            }
        }
        for kind in Attachment.allCases where !BPFFS.exists(root + "/" + kind.programPin) {
            try BPFFS.pin(object.program(named: kind.programName).fd, at: root + "/" + kind.programPin)
        }
    }


    private static func lock(_ fd: FileDescriptor, _ path: String) throws {
        guard flock(fd.raw, LOCK_EX) == 0 else { throw BPFError("lock \(path)", errno: errno) }
    }

    /// Runs `body` holding the exclusive lock, on a fresh view of the state.
    public func transaction<T>(_ body: (Transaction) throws -> T) throws -> T {
        threads.lock()
        defer { threads.unlock() }
        try Self.lock(rootFD, root)
        defer { flock(rootFD.raw, LOCK_UN) }
        return try body(Transaction(state: self))
    }

    /// Every policy with its counters: a read-only view that needs no lock.
    public func entries() throws -> [Transaction.Entry] {
        try Transaction(state: self).entries()
    }

    /// Failed bpf_setsockopt calls since the state was created, by option key
    /// ("keepalive" for SO_KEEPALIVE itself).
    public func setsockoptErrors() throws -> [(option: String, count: UInt64)] {
        let names = [(KA_OPT_KEEPALIVE, "keepalive")] + PolicyOption.allCases.map { ($0.bpfOption, $0.key) }
        return try names.map { index, name in (name, try errors.lookupSumPerCPU(index.rawValue)) }
    }

    /// The cgroup ids that have a link of this kind pinned.
    func pinnedLinkIDs(_ kind: Attachment) -> Set<UInt64> {
        guard let dir = opendir(linksDirectory(kind)) else { return [] }
        defer { closedir(dir) }
        var ids: Set<UInt64> = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if let id = UInt64(name) { ids.insert(id) }
        }
        return ids
    }

    /// Removes every pin and the root itself; links go, so enforcement ends.
    func unpinAll() throws {
        for kind in Attachment.allCases {
            for id in pinnedLinkIDs(kind) { try BPFFS.unpin(linkPath(kind, id)) }
            rmdir(linksDirectory(kind))
            try BPFFS.unpin(root + "/" + kind.programPin)
        }
        for name in Self.mapNames { try BPFFS.unpin(root + "/" + name) }
        guard rmdir(root) == 0 || errno == ENOENT else { throw BPFError("remove \(root)", errno: errno) }
    }
}
