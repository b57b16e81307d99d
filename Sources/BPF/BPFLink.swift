// SPDX-License-Identifier: MIT
import CLibBPF
import Glibc

/// A BPF link: one attachment of a program, alive while pinned or held open.
public struct BPFLink: Sendable {
    public let fd: FileDescriptor
    /// What errors call it: its pin, or what it attaches.
    public let name: String

    public init(_ fd: FileDescriptor, name: String = "link") {
        self.fd = fd
        self.name = name
    }

    public static func pinned(at path: String) throws -> BPFLink {
        BPFLink(try BPFFS.open(pinned: path, as: .link), name: path)
    }

    public func pin(at path: String) throws(SyscallError) {
        try BPFFS.pin(fd, at: path)
    }

    /// What the kernel says about the link.
    public struct Info: Sendable, Equatable {
        public let id: UInt32
        public let programID: UInt32
        public let type: bpf_link_type
        /// For cgroup links: the cgroup's id, 0 once the cgroup is gone.
        public let cgroupID: UInt64
        public let attachType: bpf_attach_type
    }

    public func info() throws(SyscallError) -> Info {
        var info = bpf_link_info()
        var length = UInt32(MemoryLayout<bpf_link_info>.size)
        try SyscallError.check("read link \(name) info", bpf_obj_get_info_by_fd(fd.raw, &info, &length))
        let cgroup = info.type == BPF_LINK_TYPE_CGROUP.rawValue
        return Info(
            id: info.id,
            programID: info.prog_id,
            type: bpf_link_type(info.type),
            cgroupID: cgroup ? info.cgroup.cgroup_id : 0,
            attachType: cgroup ? bpf_attach_type(info.cgroup.attach_type) : bpf_attach_type(0)
        )
    }

    /// Makes the link run `program` instead, in one step: no event goes
    /// unhandled in between (cgroup links only; bpf_link_update).
    public func update(to program: BPFProgram) throws(SyscallError) {
        try SyscallError.check(
            "update link \(name) to program \(program.name)",
            bpf_link_update(fd.raw, program.fd.raw, nil)
        )
    }
}
