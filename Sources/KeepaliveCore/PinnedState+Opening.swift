// SPDX-License-Identifier: MIT
import BPF
import CLibBPF
import Glibc

import struct SystemPackage.FilePath

/// Opening the pinned state: the root checked and locked, the state made,
/// adopted, upgraded in place or refused.
extension PinnedState {
    /// Makes the pin directory if it is missing, first mounting bpffs (mode
    /// 0700) at the default place if none is there, and checks it before use.
    /// `keepalive prepare` runs this outside a sandboxed agent's namespace.
    public func prepare() throws {
        guard root.hasPrefix("/"), FilePath(root).components.count > 0 else {
            throw StateError.badPinPath(root, "must be an absolute path of a directory on bpffs")
        }
        if try !BPFFS.isPresent(root) {
            let parent = FilePath(root).removingLastComponent().string
            if try !BPFFS.isBPFFS(parent) {
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
    func lockedRoot(create: Bool) throws -> FileDescriptor? {
        if create {
            try prepare()
        } else {
            guard root.hasPrefix("/"), try BPFFS.isPresent(root) else { return nil }
            try checkOwnership()
        }
        let fd = try FileDescriptor.open(root, flags: O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
        guard flock(fd.raw, LOCK_EX) == 0 else { throw SyscallError("lock \(root)", errno: errno) }
        do {
            guard try create || hasAnyState() else {
                flock(fd.raw, LOCK_UN)
                return nil
            }
        } catch {
            flock(fd.raw, LOCK_UN)
            throw error
        }
        return fd
    }

    /// A directory on bpffs, owned by root, that nobody else can write.
    func checkOwnership() throws {
        var st = stat()
        guard lstat(root, &st) == 0 else { throw SyscallError("inspect \(root)", errno: errno) }
        guard (st.st_mode & S_IFMT) == S_IFDIR else { throw StateError.badPinPath(root, "is not a directory") }
        guard try BPFFS.isBPFFS(root) else { throw StateError.notOnBPFFS(root) }
        guard st.st_uid == 0 else { throw StateError.unsafePinPath(root, "it is owned by uid \(st.st_uid)") }
        guard st.st_mode & 0o022 == 0 else {
            throw StateError.unsafePinPath(root, "its mode \(String(st.st_mode & 0o7777, radix: 8)) lets others write")
        }
    }

    /// Whether anything of a state is pinned (an empty directory is none).
    private func hasAnyState() throws -> Bool {
        let links = Attachment.allCases.map(\.linksDirectory)
        if try directoryNames(root).contains(where: { $0 != Self.agentLock && !links.contains($0) }) { return true }
        return try Attachment.allCases.contains { !(try directoryNamesIfPresent(linksDirectory($0)) ?? []).isEmpty }
    }

    /// The state's kernel handles: those open now while they are still the
    /// pinned state, else reopened (the root replaced, another binary's
    /// programs in force).
    func currentKernel(_ current: PinnedKernel?) throws -> PinnedKernel {
        if let current, current.pinning() == .intact, try current.metaMatches() { return current }
        return try openKernel()
    }

    /// Opens the pinned maps and programs: directly when they are this
    /// binary's, else by loading the object (libbpf reuses or pins the maps)
    /// and installing its programs in place.
    private func openKernel() throws -> PinnedKernel {
        let object = try MainObject(pinRoot: root, features: try kernelFeatures())
        let meta = try pinnedMeta(object)
        if let meta, meta.layout > KA_STATE_LAYOUT {
            throw StateError.newerLayout(path: root, found: meta.layout, known: UInt32(KA_STATE_LAYOUT))
        }
        if let meta, meta.layout != 0, meta.program_version > object.identity.version {
            throw StateError.newerProgram(path: root, found: meta.program_version, known: object.identity.version)
        }
        if let meta, meta.layout == KA_STATE_LAYOUT, meta.cgroup_root_id != 0, meta.cgroup_root_id != cgroups.rootID {
            throw StateError.otherCgroupView(path: root, recorded: meta.cgroup_root_id, seen: cgroups.rootID)
        }
        let older = OlderLayouts(root: root)
        let installed =
            meta.map {
                $0.layout == KA_STATE_LAYOUT && $0.object_hash == object.identity.hash
                    && $0.program_version == object.identity.version
            } ?? false
        if installed, try !older.isPresent(), try leftovers().isEmpty, try older.guarded() {
            do {
                return try PinnedKernel(pinned: object, state: self)
            } catch let error as SyscallError where error.errno == ENOENT {
                logger.notice("a pin of the state is missing (\(error)): installing the programs again")
            }
        }
        return try install(object, meta: meta, older: older)
    }

    /// The state's identity as pinned; nil when no ka_meta is pinned. A map
    /// of another shape there is no identity this binary can read: refused.
    private func pinnedMeta(_ object: MainObject) throws -> ka_meta? {
        let path = try object.pinPath(object.maps.meta)
        guard let fd = try BPFFS.openIfPresent(pinned: path, as: .map) else { return nil }
        return try BPFMap<UInt32, ka_meta>(fd, name: BPFObject.name(ofMap: object.maps.meta), type: BPF_MAP_TYPE_ARRAY)
            .lookup(0)
    }

    /// Loads the object and puts its programs in force, so that at every
    /// moment some program handles every covered socket. Each step survives
    /// being killed: until the identity is written last, the next opening
    /// runs this again, knowing every program a link may still run.
    private func install(_ object: MainObject, meta: ka_meta?, older: OlderLayouts) throws -> PinnedKernel {
        let known = try pinnedProgramIDs(object).union(try older.programIDs())
        try object.load()
        let kernel = try PinnedKernel(loaded: object, state: self, staleProgramIDs: known)
        try older.migrate(into: kernel, from: meta?.layout ?? 0, cgroups: cgroups)
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
        if let reaped = kernel.reapedProgram { try replaceReapedLink(running: reaped) }
        // 4. The programs in place, then what earlier attempts left.
        for (next, final) in staged { try BPFFS.rename(next, to: final) }
        for leftover in try leftovers() { try BPFFS.unpin(root + "/" + leftover) }
        for kind in Attachment.allCases where mkdir(linksDirectory(kind), 0o700) != 0 && errno != EEXIST {
            throw SyscallError("create \(linksDirectory(kind))", errno: errno)
        }
        // 5. Older layouts' maps gone and the guard against keepalive 0.1.0 in place; the identity last.
        try older.remove()
        try older.guardAgainstLayout1()
        try kernel.writeIdentity(changeSeq: (meta?.change_seq ?? 0) &+ 1)
        let previous = meta.map { $0.layout == 0 ? "" : " (were \($0.program_version))" } ?? ""
        logger.info("programs \(object.identity) in force at \(root)\(previous)")
        return kernel
    }

    /// Attaches `program` to its tracepoint and puts the link at the reaped
    /// link's pin in one rename (a tracing link cannot be updated in place).
    func replaceReapedLink(running program: BPFProgram) throws {
        let link = try program.attachTracepoint()
        let next = Self.staged(reapedLinkPath, id: try link.info().id)
        try link.pin(at: next)
        try BPFFS.rename(next, to: reapedLinkPath)
    }

    /// Pins an interrupted install left: staged programs and reaped links.
    func leftovers() throws -> [String] {
        try directoryNames(root).filter { $0.contains(Self.stagedMark) }
    }

    /// Ids of every program pinned under one of the programs' pin names (in
    /// place or staged): links may run any of them.
    func pinnedProgramIDs(_ object: MainObject) throws -> Set<UInt32> {
        let names = MainObject.Programs.pins
        var ids: Set<UInt32> = []
        for pin in try directoryNames(root)
        where names.contains(where: { pin == $0 || pin.hasPrefix($0 + Self.stagedMark) }) {
            ids.insert(try BPFProgram.pinned(at: root + "/" + pin, name: pin).id())
        }
        return ids
    }

    /// The pins under the root that belong to no layout this binary knows:
    /// left alone, and named by `status`.
    func unknownPins(_ kernel: PinnedKernel) throws -> [String] {
        let maps = [
            kernel.policies.handle, kernel.counters.handle, kernel.errors.handle, kernel.meta.handle,
            kernel.events.handle, kernel.eventsHead.handle, kernel.rules.handle, kernel.ruleSets.outer.handle,
            kernel.ruleCounters.handle, kernel.paths.handle,
        ].map(\.name)
        let known = Set(
            maps + MainObject.Programs.pins + Attachment.allCases.map(\.linksDirectory) + OlderLayouts.pins
                + [Self.agentLock, Self.reapedLinkName]
        )
        return try directoryNames(root).filter { !known.contains($0) && !$0.contains(Self.stagedMark) }.sorted()
    }
}
