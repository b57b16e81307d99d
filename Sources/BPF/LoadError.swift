// SPDX-License-Identifier: MIT
import Glibc

/// A BPF object the kernel did not accept: which object and program, the
/// errno, the verifier's log, and libbpf's own last word when there is no log
/// (a pinned map it could not reuse, say).
public struct LoadError: Error, CustomStringConvertible, Sendable {
    public let object: String
    public let program: String?
    public let errno: Int32
    public let log: String
    public let libbpfMessage: String?

    public init(object: String, program: String?, errno: Int32, log: String, libbpfMessage: String? = nil) {
        self.object = object
        self.program = program
        self.errno = errno
        self.log = log
        self.libbpfMessage = libbpfMessage
    }

    /// The verifier's verdict (its last line that is not statistics), else
    /// libbpf's message, else the errno's text.
    public var summary: String {
        let verdict = log.split(separator: "\n").last { line in
            line.contains { !$0.isWhitespace } && !line.hasPrefix("processed ") && !line.hasPrefix("verification time")
        }
        return verdict.map(String.init) ?? libbpfMessage ?? String(cString: strerror(errno))
    }

    public var description: String {
        let what = "load BPF object \(object)" + (program.map { ", program \($0)" } ?? "")
        return "\(what): \(summary) (errno \(errno))"
    }
}
