// SPDX-License-Identifier: MIT
import Glibc

/// An owned file descriptor, closed when the last reference goes.
public final class FileDescriptor: Sendable {
    public let raw: Int32

    public init(owning raw: Int32) {
        self.raw = raw
    }

    /// Duplicates a descriptor that someone else owns (e.g. a libbpf object).
    public static func duplicate(_ raw: Int32, what: String) throws(SyscallError) -> FileDescriptor {
        FileDescriptor(owning: try SyscallError.check("dup \(what)", fcntl(raw, F_DUPFD_CLOEXEC, 3)))
    }

    /// Opens a path, e.g. a cgroup directory to attach to.
    public static func open(
        _ path: String,
        flags: Int32 = O_RDONLY | O_DIRECTORY
    ) throws(SyscallError) -> FileDescriptor {
        FileDescriptor(owning: try SyscallError.check("open \(path)", Glibc.open(path, flags | O_CLOEXEC)))
    }

    deinit { close(raw) }
}
