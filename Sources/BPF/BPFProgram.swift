// SPDX-License-Identifier: MIT
import CLibBPF
import Glibc

/// A loaded BPF program.
public struct BPFProgram: Sendable {
    public let fd: FileDescriptor
    public let name: String

    public init(_ fd: FileDescriptor, name: String) {
        self.fd = fd
        self.name = name
    }

    public static func pinned(at path: String, name: String) throws -> BPFProgram {
        BPFProgram(try BPFFS.open(pinned: path, as: .program), name: name)
    }

    /// The kernel's id for the program (what links report as their program).
    public func id() throws(SyscallError) -> UInt32 {
        var info = bpf_prog_info()
        var length = UInt32(MemoryLayout<bpf_prog_info>.size)
        try SyscallError.check("read program \(name) info", bpf_obj_get_info_by_fd(fd.raw, &info, &length))
        return info.id
    }

    public func pin(at path: String) throws(SyscallError) {
        try BPFFS.pin(fd, at: path)
    }

    /// Attaches to a cgroup through a BPF link (always multi: other programs stay).
    public func attach(
        cgroup cgroupFD: FileDescriptor,
        type: bpf_attach_type,
        cgroupPath: String
    ) throws(SyscallError) -> BPFLink {
        let raw = try SyscallError.check(
            "attach \(name) to \(cgroupPath)",
            bpf_link_create(fd.raw, cgroupFD.raw, type, nil)
        )
        return BPFLink(FileDescriptor(owning: raw), name: "\(name) at \(cgroupPath)")
    }

    /// Attaches a BTF tracepoint program (tp_btf/...) to its tracepoint.
    public func attachTracepoint() throws(SyscallError) -> BPFLink {
        BPFLink(
            FileDescriptor(owning: try SyscallError.check("attach \(name)", bpf_raw_tracepoint_open(nil, fd.raw))),
            name: "\(name)'s tracepoint"
        )
    }

    /// Runs an iterator program once (iter/...) and returns everything it wrote.
    /// The iterator works in the network namespace of the calling thread.
    public func iterate() throws(SyscallError) -> [UInt8] {
        let link = FileDescriptor(
            owning: try SyscallError.check(
                "create iterator link for \(name)",
                bpf_link_create(fd.raw, 0, BPF_TRACE_ITER, nil)
            )
        )
        let iterator = FileDescriptor(
            owning: try SyscallError.check("create iterator \(name)", bpf_iter_create(link.raw))
        )
        var output: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = read(iterator.raw, &buffer, buffer.count)
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw SyscallError("read iterator \(name)", errno: errno) }
            if n == 0 { return output }
            output.append(contentsOf: buffer[0..<n])
        }
    }
}
