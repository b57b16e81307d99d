// SPDX-License-Identifier: MIT
import Glibc

import struct SystemPackage.FilePath

/// The processes of a cgroup subtree, from cgroup.procs and /proc: their
/// network namespaces, and who holds which socket.
public struct ProcessTable {
    private(set) var pids: [Int32] = []
    /// What could not be read (a cgroup removed meanwhile is not in it):
    /// processes there may be missing.
    private(set) var unreadable: [String] = []

    init(subtree: Cgroup, cgroups: CgroupFS) {
        var directories = [subtree.path]
        unreadable = cgroups.walk(below: subtree.path) {
            directories.append($0.path)
            return true
        }.map(\.description)
        for directory in directories {
            do {
                let text = try readTextFile(cgroups.absolute(directory).appending("cgroup.procs"))
                pids += text.split(separator: "\n").compactMap { Int32($0) }
            } catch  where error.errno == ENOENT {
                continue  // removed since the walk: its processes are gone too
            } catch {
                unreadable.append("\(error)")
            }
        }
    }

    /// Every process on the machine (as this process sees /proc), for naming
    /// the holders of sockets: who holds one only completes what is shown.
    init(everyProcess: ()) {
        // No /proc: no process can be named; the sockets are still shown.
        pids = ((try? directoryNames("/proc")) ?? []).compactMap(Int32.init)
    }

    /// Who holds these sockets now, found by reading every process's fds.
    public static func socketOwnersOnTheMachine(of inodes: Set<UInt64>) -> [UInt64: [SocketOwner]] {
        guard !inodes.subtracting([0]).isEmpty else { return [:] }
        return ProcessTable(everyProcess: ()).socketOwners().filter { inodes.contains($0.key) }
    }

    /// One /proc/PID/ns/net path per distinct namespace, this process's own first.
    func networkNamespaces() -> [String] {
        var seen: Set<UInt64> = []
        var paths: [String] = []
        for path in ["/proc/thread-self/ns/net"] + pids.map({ "/proc/\($0)/ns/net" }) {
            guard let st = FilePath(path).status(), seen.insert(UInt64(st.st_ino)).inserted else { continue }
            paths.append(path)
        }
        return paths
    }

    /// Socket inode -> the processes holding it (shown, never decided on:
    /// a process that exits meanwhile, or hides its fds, is left out).
    func socketOwners() -> [UInt64: [SocketOwner]] {
        var owners: [UInt64: [SocketOwner]] = [:]
        for pid in pids {
            let inodes = Self.socketInodes(of: pid)
            guard !inodes.isEmpty else { continue }
            // The process exited meanwhile: shown without its name.
            let command =
                (try? readTextFile(FilePath("/proc/\(pid)/comm")))?.split(separator: "\n").first.map(String.init) ?? "?"
            for inode in inodes { owners[inode, default: []].append(SocketOwner(pid: pid, command: command)) }
        }
        return owners
    }

    static func socketInodes(of pid: Int32) -> [UInt64] {
        var inodes: [UInt64] = []
        var target = [CChar](repeating: 0, count: 64)
        for name in (try? directoryNames("/proc/\(pid)/fd")) ?? [] {  // exited, or not ours to read: none shown
            let n = readlink("/proc/\(pid)/fd/\(name)", &target, target.count - 1)
            guard n > 0 else { continue }
            let link = String(decoding: target[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if link.hasPrefix("socket:["), let inode = UInt64(link.dropFirst(8).dropLast()) { inodes.append(inode) }
        }
        return inodes
    }
}
