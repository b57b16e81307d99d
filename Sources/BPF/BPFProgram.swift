import CLibBPF
import Glibc

/// A loaded BPF program.
public struct BPFProgram {
    public let fd: FileDescriptor

    public init(_ fd: FileDescriptor) { self.fd = fd }

    public static func pinned(at path: String) throws -> BPFProgram {
        BPFProgram(try BPFFS.open(pinned: path))
    }

    public var id: UInt32 {
        get throws {
            var info = bpf_prog_info()
            var size = UInt32(MemoryLayout<bpf_prog_info>.size)
            try BPFError.check("program info", bpf_obj_get_info_by_fd(fd.raw, &info, &size))
            return info.id
        }
    }

    /// Attaches to a cgroup through a BPF link (always multi: other programs stay).
    public func attach(cgroup cgroupFD: FileDescriptor, type: bpf_attach_type, cgroupPath: String) throws -> BPFLink {
        let raw = try BPFError.check("attach to \(cgroupPath)",
                                     bpf_link_create(fd.raw, cgroupFD.raw, type, nil))
        return BPFLink(FileDescriptor(owning: raw))
    }
}
