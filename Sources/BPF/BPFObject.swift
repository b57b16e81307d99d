// SPDX-License-Identifier: MIT
import CLibBPF
import Glibc

/// One libbpf object, opened through its generated skeleton: opening sets
/// where libbpf pins (and reuses) the object's maps, loading turns a refusal
/// into a LoadError that names the program and carries the verifier's log.
public final class BPFObject {
    public let name: String
    private let log: UnsafeMutablePointer<CChar>
    private static let logSize = 1 << 20

    public init(name: String) {
        self.name = name
        log = .allocate(capacity: Self.logSize)
        log.initialize(to: 0)
    }

    deinit { log.deallocate() }

    /// Calls a skeleton's open function (NAME__open_opts) with options that pin
    /// maps declared LIBBPF_PIN_BY_NAME under `pinRoot`, or pin nothing if nil.
    public func open<Skeleton>(
        pinRoot: String?,
        _ open: (UnsafePointer<bpf_object_open_opts>) -> UnsafeMutablePointer<Skeleton>?
    )
        throws(SyscallError) -> UnsafeMutablePointer<Skeleton>
    {
        var opts = bpf_object_open_opts()
        opts.sz = MemoryLayout<bpf_object_open_opts>.size  // LIBBPF_OPTS does not import
        opts.kernel_log_buf = log
        opts.kernel_log_size = Self.logSize
        let opened: UnsafeMutablePointer<Skeleton>? = name.withCString { objectName in
            opts.object_name = objectName
            guard let pinRoot else { return open(&opts) }
            return pinRoot.withCString { root in
                opts.pin_root_path = root
                return open(&opts)
            }
        }
        return try SyscallError.check("open BPF object \(name)", opened)
    }

    /// Loads the object (`load` is the skeleton's NAME__load): what the
    /// kernel lacks was probed before (KernelFeatures), so a refusal here is
    /// the verifier's (or libbpf's) word, reported as such.
    public func load(_ object: OpaquePointer, _ load: () -> Int32) throws(LoadError) {
        _ = Libbpf.takeLastWarning()
        let result = load()
        guard result < 0 else { return }
        let verifierLog = String(cString: log)
        // A program is to blame only when the verifier said something about it.
        var failed: String?
        var program = bpf_object__next_program(object, nil)
        while !verifierLog.isEmpty, let current = program, failed == nil {
            if bpf_program__autoload(current) && bpf_program__fd(current) < 0 {
                failed = String(cString: bpf_program__name(current))
            }
            program = bpf_object__next_program(object, current)
        }
        throw LoadError(
            object: name,
            program: failed,
            errno: -result,
            log: verifierLog,
            libbpfMessage: Libbpf.takeLastWarning()
        )
    }

    /// Marks `programs` the only ones of the object to load: the kernel verifies
    /// those alone (each program is there in several builds).
    public static func loadOnly(_ programs: [OpaquePointer], of object: OpaquePointer) {
        var current = bpf_object__next_program(object, nil)
        while let program = current {
            bpf_program__set_autoload(program, programs.contains(program))
            current = bpf_object__next_program(object, program)
        }
    }

    /// A loaded program of the object, named `name` (its pin's) or as the object names it.
    public static func program(_ program: OpaquePointer, name: String? = nil) throws(SyscallError) -> BPFProgram {
        let name = name ?? String(cString: bpf_program__name(program))
        let fd = try SyscallError.check("program \(name) descriptor", bpf_program__fd(program))
        return BPFProgram(try FileDescriptor.duplicate(fd, what: "program \(name)"), name: name)
    }

    /// A loaded map's descriptor (the object keeps its own).
    public static func mapDescriptor(_ map: OpaquePointer) throws(SyscallError) -> FileDescriptor {
        let name = String(cString: bpf_map__name(map))
        return try FileDescriptor.duplicate(
            try SyscallError.check("map \(name) descriptor", bpf_map__fd(map)),
            what: "map \(name)"
        )
    }

    public static func name(ofMap map: OpaquePointer) -> String { String(cString: bpf_map__name(map)) }
    public static func name(ofProgram program: OpaquePointer) -> String { String(cString: bpf_program__name(program)) }

    /// Where libbpf pins a LIBBPF_PIN_BY_NAME map, set when the object was opened.
    public static func pinPath(ofMap map: OpaquePointer) -> String? {
        bpf_map__pin_path(map).map { String(cString: $0) }
    }

    /// Makes libbpf create this map afresh instead of pinning or reusing one.
    public static func unpinned(_ map: OpaquePointer) throws(SyscallError) {
        try SyscallError.check("unpin map \(name(ofMap: map)) in the object", bpf_map__set_pin_path(map, nil))
    }
}
