import CLibBPF
import Glibc

/// A BPF link: one attachment of a program, alive while pinned or held open.
public struct BPFLink {
    public let fd: FileDescriptor

    public init(_ fd: FileDescriptor) { self.fd = fd }

    public static func pinned(at path: String) throws -> BPFLink {
        BPFLink(try BPFFS.open(pinned: path))
    }

    public struct Info {
        public let programID: UInt32
        /// The cgroup the link is attached to; 0 once that cgroup is gone.
        public let cgroupID: UInt64
    }

    public var info: Info {
        get throws {
            var info = bpf_link_info()
            var size = UInt32(MemoryLayout<bpf_link_info>.size)
            try BPFError.check("link info", bpf_obj_get_info_by_fd(fd.raw, &info, &size))
            return Info(programID: info.prog_id, cgroupID: info.cgroup.cgroup_id)
        }
    }

    public func pin(at path: String) throws {
        try BPFFS.pin(fd, at: path)
    }

    /// Replaces the attached program in place, without a window.
    public func update(program: BPFProgram) throws {
        try BPFError.check("update link", bpf_link_update(fd.raw, program.fd.raw, nil))
    }
}
