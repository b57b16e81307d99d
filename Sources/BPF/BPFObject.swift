import CLibBPF
import Glibc

/// An ELF object of BPF programs and maps, opened from memory and loaded into the kernel.
public final class BPFObject {
    private let object: OpaquePointer
    private let bytes: [UInt8]  // libbpf refers to the buffer until the object is closed

    public init(bytes: [UInt8], name: String) throws {
        self.bytes = bytes
        var opts = bpf_object_open_opts()
        opts.sz = MemoryLayout<bpf_object_open_opts>.size  // LIBBPF_OPTS does not import
        object = try name.withCString { cname in
            opts.object_name = cname
            return try bytes.withUnsafeBytes { raw in
                try BPFError.check("open BPF object \(name)",
                                   bpf_object__open_mem(raw.baseAddress, raw.count, &opts))
            }
        }
        if libbpf_get_error(UnsafeRawPointer(object)) != 0 {
            throw BPFError("open BPF object \(name)", errno: Int32(-libbpf_get_error(UnsafeRawPointer(object))))
        }
    }

    deinit { bpf_object__close(object) }

    /// Makes the object use an existing (pinned) map instead of creating its own.
    public func reuseMap(named name: String, _ fd: FileDescriptor) throws {
        let map = try BPFError.check("find map \(name)", bpf_object__find_map_by_name(object, name))
        try BPFError.check("reuse map \(name)", bpf_map__reuse_fd(map, fd.raw))
    }

    /// Verifies and loads every program, creating the maps not reused.
    public func load() throws {
        try BPFError.check("load BPF object", bpf_object__load(object))
    }

    public func program(named name: String) throws -> BPFProgram {
        let prog = try BPFError.check("find program \(name)", bpf_object__find_program_by_name(object, name))
        let fd = try BPFError.check("program \(name) fd", bpf_program__fd(prog))
        return BPFProgram(try FileDescriptor.duplicate(fd, what: "program \(name)"))
    }

    public func mapDescriptor(named name: String) throws -> FileDescriptor {
        let map = try BPFError.check("find map \(name)", bpf_object__find_map_by_name(object, name))
        let fd = try BPFError.check("map \(name) fd", bpf_map__fd(map))
        return try FileDescriptor.duplicate(fd, what: "map \(name)")
    }
}
