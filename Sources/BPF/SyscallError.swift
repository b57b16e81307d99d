// SPDX-License-Identifier: MIT
import Glibc

/// A system call that failed (bpf(2) through libbpf, or another): what was
/// attempted, on what, and the errno it failed with.
public struct SyscallError: Error, CustomStringConvertible, Equatable, Sendable {
    public let operation: String
    public let errno: Int32

    public init(_ operation: String, errno: Int32) {
        self.operation = operation
        self.errno = errno
    }

    public var description: String {
        "\(operation): \(String(cString: strerror(errno))) (errno \(errno))"
    }

    /// Runs a call that returns a negative value (or -1 and errno) on failure.
    @discardableResult
    public static func check(_ operation: @autoclosure () -> String, _ result: Int32) throws(SyscallError) -> Int32 {
        guard result >= 0 else { throw SyscallError(operation(), errno: result == -1 ? Glibc.errno : -result) }
        return result
    }

    /// libbpf's pointer-returning calls report failure as NULL with errno set.
    public static func check<T>(_ operation: @autoclosure () -> String, _ pointer: T?) throws(SyscallError) -> T {
        guard let pointer else { throw SyscallError(operation(), errno: Glibc.errno) }
        return pointer
    }
}
