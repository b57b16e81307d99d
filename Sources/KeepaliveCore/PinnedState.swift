import BPF
import CLibBPF
import Glibc
import Logging
import Synchronization
import struct SystemPackage.FilePath

/// keepalive's kernel state, pinned in bpffs so that it outlives every process:
///
///     <root>/ka_meta, ka_policies_v3, ka_counters,   maps, pinned by libbpf under
///            ka_errors, ka_events, ka_events_head    their names (bpf/*.bpf.c)
///     <root>/keepalive_sockops, keepalive_setsockopt,
///            keepalive_reaped                        the programs
///     <root>/links/<cgroup id>                       sock_ops: one link per covered subtree
///     <root>/links-setsockopt/<cgroup id>            setsockopt: one per subtree with `precedence: policy`
///     <root>/link-reaped                             the reaped-connection tracepoint
///     <root>/agent-lock                              held by the one agent enforcing this state
///
/// (bpffs refuses dots in names.)
///
/// The CLI and the agent share it; every change happens in a transaction,
/// under an exclusive flock on <root>. Opening brings the state to this
/// binary's programs: a missing state is made, an older one upgraded in
/// place (bpf_link_update on every link: no socket goes unconfigured), a newer
/// one refused. Any step may be killed: the next opening finds the kernel's
/// truth and finishes or repairs it.
public final class PinnedState: @unchecked Sendable {
    public static let defaultRoot = BPFFS.defaultMount + "/keepalive"

    public let root: String
    public let cgroups: CgroupFS
    let logger: Logger
    private let threads = Mutex(())  // excludes this process's threads; flock excludes other processes
    private var open: Open?          // under `threads`

    /// What is open while the pinned state stays the same one.
    final class Open {
        let kernel: PinnedKernel
        var cached: (transaction: Transaction, seq: UInt64)?
        /// The root directory as checked and locked by the last full check.
        var rootFD: FileDescriptor?
        init(kernel: PinnedKernel) { self.kernel = kernel }
    }

    public init(root: String = defaultRoot, cgroups: CgroupFS, logger: Logger) {
        self.root = root
        self.cgroups = cgroups
        self.logger = logger
    }

    var reapedLinkPath: String { root + "/link-reaped" }
    var agentLockPath: String { root + "/" + Self.agentLock }
    static let agentLock = "agent-lock"

    /// A pin put beside `path` during an install, unique to the object `id`,
    /// that replaces `path` in one rename when the install is done.
    static func staged(_ path: String, id: UInt32) -> String { path + stagedMark + "\(id)" }
    static let stagedMark = "-next-"
    func linksDirectory(_ kind: Attachment) -> String { root + "/" + kind.linksDirectory }

    // MARK: transactions

    /// A transaction and what was found when it began.
    public struct Session {
        public let transaction: Transaction
        /// The opening check's findings (empty when a cached view was reused).
        public let report: Transaction.Report
        public let programs: ProgramIdentity
        public let countingReaped: Bool
        let kernel: PinnedKernel

        /// Sockets configured and connections reaped under a policy.
        public func counters(of record: PolicyRecord) -> PolicyCounters { kernel.counters(of: record) }
        /// Failed bpf_setsockopt calls since the state was made, by option key.
        public func setsockoptErrors() throws -> [(option: String, count: UInt64)] { try kernel.setsockoptErrors() }
        public func reapedEvents() throws -> [ReapedEvent] { try kernel.reapedEvents() }
    }

    /// Runs `body` in a transaction, holding the state's lock. With `create` a
    /// missing state is made; without, nil is returned if there is none.
    /// With `fullCheck` false (the agent between its periodic checks) the
    /// state open since the last transaction is used as it is, without
    /// checking its path and pins again (the agent's heartbeat does, every
    /// second), and so is the view that transaction left while nobody else
    /// changed the state: a small change costs a few system calls.
    public func transaction<T>(create: Bool, fullCheck: Bool = true, _ body: (Session) throws -> T) throws -> T? {
        try threads.withLock { _ -> T? in
            let state: Open
            let rootFD: FileDescriptor
            if !fullCheck, let current = open, let fd = current.rootFD {
                guard flock(fd.raw, LOCK_EX) == 0 else { throw SyscallError("lock \(root)", errno: errno) }
                (state, rootFD) = (current, fd)
            } else {
                guard let fd = try lockedRoot(create: create) else {
                    open = nil
                    return nil
                }
                rootFD = fd
                do {
                    state = try currentOpen()
                } catch {
                    flock(fd.raw, LOCK_UN)
                    throw error
                }
                state.rootFD = fd
            }
            defer { flock(rootFD.raw, LOCK_UN) }
            let seq = try state.kernel.changeSequence()
            let session: Session
            if !fullCheck, let cached = state.cached, cached.seq == seq {
                session = Session(transaction: cached.transaction, report: Transaction.Report(),
                                  programs: state.kernel.identity, countingReaped: state.kernel.countingReaped,
                                  kernel: state.kernel)
            } else {
                let transaction = try Transaction(kernel: state.kernel)
                let report = try transaction.repair()
                try state.kernel.repairReapedLink()
                session = Session(transaction: transaction, report: report, programs: state.kernel.identity,
                                  countingReaped: state.kernel.countingReaped, kernel: state.kernel)
            }
            do {
                let result = try body(session)
                state.cached = (session.transaction, try state.kernel.changeSequence())
                return result
            } catch {
                state.cached = nil  // the view may be half-way: read it afresh next time
                throw error
            }
        }
    }

    /// Whether another process changed the state since this one's last
    /// transaction (the change sequence moved). One map lookup: for the
    /// agent's heartbeat. False when there is nothing to compare with.
    public func changedElsewhere() -> Bool {
        threads.withLock { _ in
            guard let open, let cached = open.cached, let seq = try? open.kernel.changeSequence() else { return false }
            return seq != cached.seq
        }
    }

    /// Whether the state this process has open is still the one pinned (its
    /// root directory and its maps). Cheap: for the agent's heartbeat.
    public func pinning() -> Pinning {
        threads.withLock { _ in open?.kernel.pinning() ?? .replaced }
    }

    // MARK: reading without the lock

    /// What is in force, as pinned now.
    public struct Snapshot: Sendable {
        public var programs: ProgramIdentity?
        public var countingReaped = false
        public var policies: [(id: UInt64, record: PolicyRecord, counters: PolicyCounters)] = []
        public var setsockoptErrors: [(option: String, count: UInt64)] = []
    }

    /// The policies in force and their counters, read from the maps pinned
    /// now without taking the lock (the kernel reads each entry atomically):
    /// what metrics report. Empty when nothing is pinned.
    public func snapshot() -> Snapshot {
        guard let kernel = pinnedKernel() else { return Snapshot() }
        var snapshot = Snapshot(programs: kernel.identity, countingReaped: kernel.countingReaped)
        snapshot.policies = ((try? kernel.readPolicies()) ?? [:]).map { ($0.key, $0.value, kernel.counters(of: $0.value)) }
        snapshot.setsockoptErrors = (try? kernel.setsockoptErrors()) ?? []
        return snapshot
    }

    /// The reaped connections the kernel side keeps, from number `after` on,
    /// and the number the next one will get.
    public func reapedEvents(after: UInt64) throws -> (events: [ReapedEvent], next: UInt64) {
        guard let kernel = pinnedKernel() else { return ([], 0) }
        let next = try kernel.reapedEventHead()
        return after >= next ? ([], next) : (try kernel.reapedEvents(after: after), next)
    }

    /// The kernel handles of the state pinned now: this process's own while
    /// they are still the pinned ones, else freshly opened from the pins.
    private func pinnedKernel() -> PinnedKernel? {
        if let kernel = threads.withLock({ _ in open?.kernel }), kernel.isStillPinned() { return kernel }
        guard let object = try? MainObject(pinRoot: root) else { return nil }
        return try? PinnedKernel(pinned: object, state: self)
    }

    // MARK: opening

    /// Makes the pin directory if it is missing, first mounting bpffs (mode
    /// 0700) at the default place if none is there, and checks it before use.
    /// `keepalive prepare` runs this outside a sandboxed agent's namespace.
    public func prepare() throws {
        guard root.hasPrefix("/"), FilePath(root).components.count > 0 else {
            throw StateError.badPinPath(root, "must be an absolute path of a directory on bpffs")
        }
        if !BPFFS.exists(root) {
            let parent = FilePath(root).removingLastComponent().string
            if !BPFFS.isBPFFS(parent) {
                guard parent == BPFFS.defaultMount else { throw StateError.notOnBPFFS(root) }
                try BPFFS.mount(at: parent)
                logger.info("mounted bpffs at \(parent) (mode 0700)")
            }
            guard mkdir(root, 0o700) == 0 || errno == EEXIST else { throw SyscallError("create \(root)", errno: errno) }
        }
        try checkOwnership()
    }

    /// The root directory, checked before use and locked; nil if there is no
    /// state and none is to be made.
    private func lockedRoot(create: Bool) throws -> FileDescriptor? {
        if create {
            try prepare()
        } else {
            guard root.hasPrefix("/"), BPFFS.exists(root) else { return nil }
            try checkOwnership()
        }
        let fd = try FileDescriptor.open(root, flags: O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
        guard flock(fd.raw, LOCK_EX) == 0 else { throw SyscallError("lock \(root)", errno: errno) }
        guard create || hasAnyState() else {
            flock(fd.raw, LOCK_UN)
            return nil
        }
        return fd
    }

    /// A directory on bpffs, owned by root, that nobody else can write.
    private func checkOwnership() throws {
        var st = stat()
        guard lstat(root, &st) == 0 else { throw SyscallError("inspect \(root)", errno: errno) }
        guard (st.st_mode & S_IFMT) == S_IFDIR else { throw StateError.badPinPath(root, "is not a directory") }
        guard BPFFS.isBPFFS(root) else { throw StateError.notOnBPFFS(root) }
        guard st.st_uid == 0 else { throw StateError.unsafePinPath(root, "it is owned by uid \(st.st_uid)") }
        guard st.st_mode & 0o022 == 0 else {
            throw StateError.unsafePinPath(root, "its mode \(String(st.st_mode & 0o7777, radix: 8)) lets others write")
        }
    }

    /// Whether anything of a state is pinned (an empty directory is none).
    private func hasAnyState() -> Bool {
        guard let names = try? directoryNames(root) else { return false }
        return names.contains { $0 != Self.agentLock && !Attachment.allCases.map(\.linksDirectory).contains($0) }
            || Attachment.allCases.contains { !((try? directoryNames(linksDirectory($0))) ?? []).isEmpty }
    }

    /// The state open now, reopened when it is no longer the one pinned (the
    /// root replaced, another binary's programs in force).
    private func currentOpen() throws -> Open {
        if let current = open, current.kernel.isStillPinned(), try current.kernel.metaMatches() { return current }
        let kernel = try openKernel()
        let opened = Open(kernel: kernel)
        open = opened
        return opened
    }

    /// Opens the pinned maps and programs: directly when they are this
    /// binary's, else by loading the object (libbpf reuses or pins the maps)
    /// and installing its programs in place.
    private func openKernel() throws -> PinnedKernel {
        let object = try MainObject(pinRoot: root)
        let metaPath = BPFObject.pinPath(ofMap: object.maps.ka_meta)!
        let meta = try? BPFMap<UInt32, ka_meta>(try BPFFS.open(pinned: metaPath, as: .map),
                                                  name: BPFObject.name(ofMap: object.maps.ka_meta),
                                                  type: BPF_MAP_TYPE_ARRAY).lookup(0)
        if let meta, meta.layout > KA_STATE_LAYOUT {
            throw StateError.newerLayout(path: root, found: meta.layout, known: UInt32(KA_STATE_LAYOUT))
        }
        if let meta, meta.layout != 0, meta.program_version > object.identity.version {
            throw StateError.newerProgram(path: root, found: meta.program_version, known: object.identity.version)
        }
        if let meta, meta.layout == KA_STATE_LAYOUT, meta.cgroup_root_id != 0, meta.cgroup_root_id != cgroups.rootID {
            throw StateError.otherCgroupView(path: root, recorded: meta.cgroup_root_id, seen: cgroups.rootID)
        }
        let legacy = OlderLayouts(root: root)
        let installed = meta.map {
            $0.layout == KA_STATE_LAYOUT && $0.object_hash == object.identity.hash
                && $0.program_version == object.identity.version
        } ?? false
        if installed && !legacy.isPresent && leftovers().isEmpty,
           let kernel = try? PinnedKernel(pinned: object, state: self) {
            return kernel
        }
        return try install(object, meta: meta, legacy: legacy)
    }

    /// Loads the object and puts its programs in force, so that at every
    /// moment some program handles every covered socket. Each step survives
    /// being killed: until the identity is written last, the next opening
    /// runs this again, knowing every program a link may still run.
    private func install(_ object: MainObject, meta: ka_meta?, legacy: OlderLayouts) throws -> PinnedKernel {
        let countingReaped = MainObject.kernelReportsSocketErrors
        if !countingReaped {
            logger.warning("reaped-connection counting is off: this kernel has no tracepoint inet_sk_error_report (Linux 5.13 or later with BTF)")
        }
        let known = pinnedProgramIDs(object).union(legacy.programIDs())
        try object.load(countingReaped: countingReaped)
        let kernel = try PinnedKernel(loaded: object, state: self, staleProgramIDs: known, countingReaped: countingReaped)
        switch meta?.layout ?? 0 {
        case 0:  // layout 1, or nothing yet
            for (slot, (id, migrated, configured)) in try legacy.policies(in: cgroups).enumerated() {
                var record = migrated
                record.slot = UInt32(slot)
                // A total: on one CPU only, so that the sum over CPUs is it.
                try kernel.counters.update(record.slot, perCPU: { ka_counters(configured: $0 == 0 ? configured : 0, reaped: (0, 0)) })
                try kernel.policies.update(id, try record.encoded())
            }
        case 2:
            for (id, record) in try legacy.layout2Policies() { try kernel.policies.update(id, record) }
        default:
            break
        }
        // 1. The new programs pinned under names of their own: no program a
        //    link may run is ever unpinned before the link runs another.
        var staged: [(staged: String, final: String)] = []
        for program in kernel.allPrograms {
            let final = root + "/" + program.name
            let next = Self.staged(final, id: try program.id())
            try BPFFS.unpin(next)
            try program.pin(at: next)
            staged.append((next, final))
        }
        // 2. Every link of ours to the new program, in place.
        for kind in Attachment.allCases {
            for (pin, state) in try kernel.readLinks(kind) where state == .staleProgram {
                try kernel.updateLink(kind, pin: pin)
            }
        }
        // 3. The reaped-connection link: a tracing link cannot be updated, so
        //    a new one replaces the old in one rename.
        if let reaped = kernel.reapedProgram {
            let link = try reaped.attachTracepoint()
            let next = Self.staged(reapedLinkPath, id: try link.info().id)
            try link.pin(at: next)
            try BPFFS.rename(next, to: reapedLinkPath)
        }
        // 4. The programs in place, then what earlier attempts left.
        for (next, final) in staged { try BPFFS.rename(next, to: final) }
        for leftover in leftovers() { try BPFFS.unpin(root + "/" + leftover) }
        for kind in Attachment.allCases where mkdir(linksDirectory(kind), 0o700) != 0 && errno != EEXIST {
            throw SyscallError("create \(linksDirectory(kind))", errno: errno)
        }
        // 5. The identity last.
        try kernel.writeIdentity(changeSeq: (meta?.change_seq ?? 0) &+ 1)
        try legacy.remove()
        let previous = meta.map { $0.layout == 0 ? "" : " (were \($0.program_version))" } ?? ""
        logger.info("programs \(object.identity) in force at \(root)\(previous)")
        return kernel
    }

    /// Pins an interrupted install left: staged programs and reaped links.
    private func leftovers() -> [String] {
        ((try? directoryNames(root)) ?? []).filter { $0.contains(Self.stagedMark) }
    }

    /// Ids of every program pinned under one of the object's program names
    /// (in place or staged): links may run any of them.
    private func pinnedProgramIDs(_ object: MainObject) -> Set<UInt32> {
        let names = [object.progs.keepalive_sockops, object.progs.keepalive_setsockopt, object.progs.keepalive_reaped]
            .map { BPFObject.name(ofProgram: $0!) }
        let pins = ((try? directoryNames(root)) ?? []).filter { pin in
            names.contains { pin == $0 || pin.hasPrefix($0 + Self.stagedMark) }
        }
        return Set(pins.compactMap { try? BPFProgram.pinned(at: root + "/" + $0, name: $0).id() })
    }

    // MARK: removal

    /// Removes every policy, link and pin of the state: enforcement ends
    /// everywhere. Links go first; a removal killed half-way is finished by
    /// the next one. Returns what was not keepalive's and was left in place.
    public func removeAll() throws -> [String] {
        try threads.withLock { _ -> [String] in
            open = nil
            guard BPFFS.exists(root) else { return [] }
            try checkOwnership()
            let rootFD = try FileDescriptor.open(root, flags: O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
            guard flock(rootFD.raw, LOCK_EX) == 0 else { throw SyscallError("lock \(root)", errno: errno) }
            let object = try MainObject(pinRoot: root)
            let ours = pinnedProgramIDs(object).union(OlderLayouts(root: root).programIDs())
            var kept: [String] = []
            for kind in Attachment.allCases {
                for name in (try? directoryNames(linksDirectory(kind))) ?? [] {
                    let path = linksDirectory(kind) + "/" + name
                    if let info = try? BPFLink.pinned(at: path).info(), ours.contains(info.programID) {
                        try BPFFS.unpin(path)
                    } else {
                        kept.append(path)
                    }
                }
            }
            for name in (try? directoryNames(root)) ?? [] where name.hasPrefix("link-reaped") { try BPFFS.unpin(root + "/" + name) }
            for name in (try? directoryNames(root)) ?? [] where ours.contains(programID(at: root + "/" + name)) {
                try BPFFS.unpin(root + "/" + name)
            }
            let maps = [object.maps.ka_policies_v3, object.maps.ka_counters, object.maps.ka_errors, object.maps.ka_meta,
                        object.maps.ka_events, object.maps.ka_events_head]
            for map in maps { if let path = BPFObject.pinPath(ofMap: map!) { try BPFFS.unpin(path) } }
            try OlderLayouts(root: root).remove()
            for directory in Attachment.allCases.map(linksDirectory) + [agentLockPath] { rmdir(directory) }
            flock(rootFD.raw, LOCK_UN)
            guard rmdir(root) == 0 || errno == ENOENT else {
                kept += ((try? directoryNames(root)) ?? []).map { root + "/" + $0 }.filter { !kept.contains($0) }
                return kept
            }
            return kept
        }
    }

    private func programID(at path: String) -> UInt32 {
        (try? BPFProgram.pinned(at: path, name: path).id()) ?? 0
    }

    // MARK: the agent's claim

    /// Held by the one agent that enforces this state: a second refuses to start.
    public final class AgentClaim: @unchecked Sendable {
        let fd: FileDescriptor
        init(fd: FileDescriptor) { self.fd = fd }
    }

    /// Claims the state for this agent (an flock held for its lifetime). A
    /// claim already held on the same lock directory is kept.
    public func claimForAgent(keeping held: AgentClaim? = nil) throws -> AgentClaim {
        var lock = Glibc.stat(), mine = Glibc.stat()
        if let held, stat(agentLockPath, &lock) == 0, fstat(held.fd.raw, &mine) == 0, lock.st_ino == mine.st_ino {
            return held
        }
        guard mkdir(agentLockPath, 0o700) == 0 || errno == EEXIST else {
            throw SyscallError("create \(agentLockPath)", errno: errno)
        }
        let fd = try FileDescriptor.open(agentLockPath)
        guard flock(fd.raw, LOCK_EX | LOCK_NB) == 0 else {
            if errno == EWOULDBLOCK { throw StateError.agentRunning(path: root, pid: lockHolder(of: agentLockPath)) }
            throw SyscallError("lock \(agentLockPath)", errno: errno)
        }
        return AgentClaim(fd: fd)
    }

    /// The process holding an flock on `path`, from /proc/locks.
    private func lockHolder(of path: String) -> Int32? {
        var st = stat()
        guard stat(path, &st) == 0, let locks = try? readTextFile(FilePath("/proc/locks")) else { return nil }
        let suffix = ":\(UInt64(st.st_ino))"
        for line in locks.split(separator: "\n") {
            let fields = line.split(separator: " ")
            if fields.count > 5, fields[1] == "FLOCK", fields[5].hasSuffix(suffix) { return Int32(fields[4]) }
        }
        return nil
    }
}

/// The names in a directory, "." and ".." left out.
func directoryNames(_ path: String) throws(SyscallError) -> [String] {
    guard let dir = opendir(path) else { throw SyscallError("read \(path)", errno: errno) }
    defer { closedir(dir) }
    var names: [String] = []
    while let entry = readdir(dir) {
        let name = directoryEntryName(entry)
        if name.kind == .regular { names.append(name.string) }
    }
    return names
}
