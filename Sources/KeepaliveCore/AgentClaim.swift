// SPDX-License-Identifier: MIT
import BPF
import Glibc

import struct SystemPackage.FilePath

/// Held by the one agent that enforces a state: a second refuses to start.
public final class AgentClaim: Sendable {
    let fd: FileDescriptor
    init(fd: FileDescriptor) { self.fd = fd }
}

extension PinnedState {
    /// Claims the state for this agent (an flock held for its lifetime). A
    /// claim already held on the same lock directory is kept.
    public func claimForAgent(keeping held: AgentClaim? = nil) throws -> AgentClaim {
        var lock = Glibc.stat()
        var mine = Glibc.stat()
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

    /// The process holding an flock on `path`, from /proc/locks; nil if it
    /// cannot be told (it only completes the message of a refusal).
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
