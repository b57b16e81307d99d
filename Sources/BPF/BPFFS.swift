import CLibBPF
import Glibc

/// The BPF filesystem, where programs, maps and links outlive their loader.
public enum BPFFS {
    public static let defaultMount = "/sys/fs/bpf"
    static let magic: Int = 0xcafe_4a11  // BPF_FS_MAGIC

    public static func isMounted(at path: String) -> Bool {
        var fs = statfs()
        return statfs(path, &fs) == 0 && Int(fs.f_type) == magic
    }

    /// Mounts bpffs at `path` unless it is mounted there already.
    public static func ensureMounted(at path: String = defaultMount) throws {
        if isMounted(at: path) { return }
        mkdir(path, 0o755)
        guard mount("bpf", path, "bpf", 0, nil) == 0 else {
            throw BPFError("mount bpffs at \(path)", errno: errno)
        }
    }

    /// Opens a pinned program, map or link.
    public static func open(pinned path: String) throws -> FileDescriptor {
        FileDescriptor(owning: try BPFError.check("open pinned \(path)", bpf_obj_get(path)))
    }

    public static func pin(_ fd: FileDescriptor, at path: String) throws {
        try BPFError.check("pin \(path)", bpf_obj_pin(fd.raw, path))
    }

    public static func exists(_ path: String) -> Bool {
        access(path, F_OK) == 0
    }

    /// Removes a pin; for a link this detaches it once no process holds it open.
    public static func unpin(_ path: String) throws {
        guard unlink(path) == 0 || errno == ENOENT else {
            throw BPFError("unpin \(path)", errno: errno)
        }
    }
}
