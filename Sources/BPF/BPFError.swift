import Glibc

/// A failed libbpf or bpf(2) call: what was attempted, and the errno it failed with.
public struct BPFError: Error, CustomStringConvertible, Equatable {
    public let operation: String
    public let errno: Int32

    public init(_ operation: String, errno: Int32) {
        self.operation = operation
        self.errno = errno
    }

    public var description: String {
        "\(operation): \(String(cString: strerror(errno))) (errno \(errno))"
    }

    /// Runs a call that returns a negative value (or sets errno) on failure.
    @discardableResult
    static func check(_ operation: @autoclosure () -> String, _ result: Int32) throws -> Int32 {
        if result < 0 {
            let code = result == -1 ? Glibc.errno : -result
            throw BPFError(operation(), errno: code)
        }
        return result
    }

    /// libbpf pointer-returning calls report failure as NULL with errno set.
    static func check<T>(_ operation: @autoclosure () -> String, _ pointer: T?) throws -> T {
        guard let pointer else { throw BPFError(operation(), errno: Glibc.errno) }
        return pointer
    }
}
