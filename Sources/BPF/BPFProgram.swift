import CLibBPF
import Glibc

/// A loaded BPF program.
public struct BPFProgram {
    public let fd: FileDescriptor

    public init(_ fd: FileDescriptor) { self.fd = fd }

    public static func pinned(at path: String) throws -> BPFProgram {
        BPFProgram(try BPFFS.open(pinned: path))
    }

    /// Runs an iterator program once (iter/...) and returns everything it wrote.
    /// The iterator works in the network namespace of the calling thread.
    public func iterate() throws -> [UInt8] {
        let link = FileDescriptor(owning: try BPFError.check("create iterator link",
                                                             bpf_link_create(fd.raw, 0, BPF_TRACE_ITER, nil)))
        let iterator = FileDescriptor(owning: try BPFError.check("create iterator", bpf_iter_create(link.raw)))
        var output: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = read(iterator.raw, &buffer, buffer.count)
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw BPFError("read iterator", errno: errno) }
            if n == 0 { return output }
            output.append(contentsOf: buffer[0..<n])
        }
    }

    /// Attaches to a cgroup through a BPF link (always multi: other programs stay).
    public func attach(cgroup cgroupFD: FileDescriptor, type: bpf_attach_type, cgroupPath: String) throws -> BPFLink {
        let raw = try BPFError.check("attach to \(cgroupPath)",
                                     bpf_link_create(fd.raw, cgroupFD.raw, type, nil))
        return BPFLink(FileDescriptor(owning: raw))
    }
}
