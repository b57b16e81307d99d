import CLibBPF
import Glibc

/// A BPF link: one attachment of a program, alive while pinned or held open.
public struct BPFLink {
    public let fd: FileDescriptor

    public init(_ fd: FileDescriptor) { self.fd = fd }

    public static func pinned(at path: String) throws -> BPFLink {
        BPFLink(try BPFFS.open(pinned: path))
    }

    public func pin(at path: String) throws {
        try BPFFS.pin(fd, at: path)
    }
}
