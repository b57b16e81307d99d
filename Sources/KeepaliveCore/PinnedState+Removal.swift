// SPDX-License-Identifier: MIT
import BPF
import Glibc

/// Removing the whole state: `detach --all`.
extension PinnedState {
    /// Removes every policy, link and pin of the state: enforcement ends
    /// everywhere. Every pin is read before anything is removed: one that
    /// cannot be read stops the removal with its errno, since whether it is
    /// keepalive's cannot be told. Links go before the programs they run, so
    /// a removal killed or failing half-way leaves nothing the next one
    /// cannot find. Returns what is not keepalive's, left in place.
    public func removeAll() throws -> [String] {
        try opened.withLock { open throws -> [String] in
            open = nil
            guard try BPFFS.isPresent(root) else { return [] }
            try checkOwnership()
            let rootFD = try FileDescriptor.open(root, flags: O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
            guard flock(rootFD.raw, LOCK_EX) == 0 else { throw SyscallError("lock \(root)", errno: errno) }
            defer { flock(rootFD.raw, LOCK_UN) }
            let object = try MainObject(pinRoot: root, features: try KernelFeatures.probe())
            let older = OlderLayouts(root: root)
            let ours = try pinnedProgramIDs(object).union(try older.programIDs())
            var kept: [String] = []
            // 1. Every link read and sorted first.
            var links: [String] = []
            for kind in Attachment.allCases {
                for name in try directoryNamesIfPresent(linksDirectory(kind)) ?? [] {
                    let path = linksDirectory(kind) + "/" + name
                    if try isOurs(link: path, runningOneOf: ours) { links.append(path) } else { kept.append(path) }
                }
            }
            // 2. Links, then programs, then maps.
            for path in links { try BPFFS.unpin(path) }
            for name in try directoryNames(root) where name.hasPrefix(Self.reapedLinkName) {
                try BPFFS.unpin(root + "/" + name)
            }
            for name in try directoryNames(root) where try !isDirectory(root + "/" + name) {
                let fd: FileDescriptor?
                do {
                    fd = try BPFFS.openIfPresent(pinned: root + "/" + name, as: .program)
                } catch is WrongObjectKind {
                    continue  // a map or a link: not a program to unpin here
                }
                if let fd, ours.contains(try BPFProgram(fd, name: name).id()) { try BPFFS.unpin(root + "/" + name) }
            }
            for map in object.maps.all { try BPFFS.unpin(try object.pinPath(map)) }
            try older.remove()
            for name in OlderLayouts.guardedPins where try older.layout1Pin(name) == .guarded {
                try BPFFS.unpin(root + "/" + name)
            }
            for directory in Attachment.allCases.map(linksDirectory) + [agentLockPath] { rmdir(directory) }
            guard rmdir(root) == 0 || errno == ENOENT else {
                kept += try directoryNames(root).map { root + "/" + $0 }.filter { !kept.contains($0) }
                return kept
            }
            return kept
        }
    }

    private func isDirectory(_ path: String) throws -> Bool {
        var st = stat()
        guard lstat(path, &st) == 0 else { throw SyscallError("inspect \(path)", errno: errno) }
        return (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// Whether a pinned link runs one of keepalive's programs. Another kind
    /// of object there is not ours; a pin that cannot be read throws.
    private func isOurs(link path: String, runningOneOf ours: Set<UInt32>) throws -> Bool {
        do {
            return ours.contains(try BPFLink.pinned(at: path).info().programID)
        } catch is WrongObjectKind {
            return false
        }
    }
}
