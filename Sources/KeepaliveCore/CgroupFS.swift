import CLibBPF
import Glibc

/// The cgroup v2 hierarchy: where it is mounted and the directories in it.
public struct CgroupFS: Sendable {
    /// Where cgroup2 is mounted (e.g. /sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid systems).
    public let mountPoint: String

    static let magic: Int = 0x6367_7270  // CGROUP2_SUPER_MAGIC

    public init(mountPoint: String) {
        self.mountPoint = mountPoint
    }

    /// Finds the cgroup2 mount of this process's mount namespace, unless `override`
    /// names one (in a container, the host's cgroup2 mounted at a path of its own).
    public static func discover(override: String? = nil,
                                mountinfo path: String = "/proc/self/mountinfo") throws(CgroupError) -> CgroupFS {
        if let override {
            let normalized = Cgroup.normalize(override)
            guard CgroupFS(mountPoint: normalized).isCgroup2(normalized) else {
                throw .badRoot(override)
            }
            return CgroupFS(mountPoint: normalized)
        }
        guard let text = try? readTextFile(path), let mount = cgroup2MountPoint(inMountinfo: text) else {
            throw .notMounted
        }
        return CgroupFS(mountPoint: mount)
    }

    /// The mount point of the first cgroup2 filesystem in a mountinfo text.
    public static func cgroup2MountPoint(inMountinfo text: String) -> String? {
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: false)
            // Optional fields end with "-"; the filesystem type follows it.
            guard let dash = fields.firstIndex(of: "-"), dash + 1 < fields.count, fields.count > 4 else { continue }
            if fields[dash + 1] == "cgroup2" { return unescapeMountPath(String(fields[4])) }
        }
        return nil
    }

    /// mountinfo escapes space, tab, newline and backslash as octal (\040 ...).
    static func unescapeMountPath(_ path: String) -> String {
        var out = "", chars = Array(path), i = 0
        while i < chars.count {
            if chars[i] == "\\", i + 3 < chars.count + 0, let code = UInt8(String(chars[(i + 1)...(i + 3)]), radix: 8) {
                out.append(Character(UnicodeScalar(code)))
                i += 4
            } else {
                out.append(chars[i])
                i += 1
            }
        }
        return out
    }

    /// Resolves a user's cgroup argument (absolute, or relative to the mount) to a cgroup.
    public func resolve(_ argument: String) throws(CgroupError) -> Cgroup {
        let path = Cgroup.normalize(argument.hasPrefix("/") ? argument : mountPoint + "/" + argument)
        guard path == mountPoint || path.hasPrefix(mountPoint + "/") else {
            throw .notCgroup2(argument, mountPoint: mountPoint)
        }
        var st = stat()
        guard stat(path, &st) == 0 else { throw .notFound(argument) }
        guard (st.st_mode & S_IFMT) == S_IFDIR, isCgroup2(path) else {
            throw .notCgroup2(argument, mountPoint: mountPoint)
        }
        return Cgroup(path: path, relativePath: relative(path), id: UInt64(st.st_ino))
    }

    /// The cgroup at an absolute path known to be inside the mount, if it exists.
    public func cgroup(atPath path: String) -> Cgroup? {
        var st = stat()
        guard stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else { return nil }
        return Cgroup(path: path, relativePath: relative(path), id: UInt64(st.st_ino))
    }

    func isCgroup2(_ path: String) -> Bool {
        var fs = statfs()
        return statfs(path, &fs) == 0 && Int(fs.f_type) == Self.magic
    }

    func relative(_ path: String) -> String {
        path == mountPoint ? "/" : String(path.dropFirst(mountPoint.count + 1))
    }

    /// The cgroups strictly above `cgroup`, nearest first, up to and including the root.
    public func ancestors(of cgroup: Cgroup) -> [Cgroup] {
        var result: [Cgroup] = []
        var path = cgroup.path
        while path != mountPoint, let slash = path.lastIndex(of: "/") {
            path = String(path[..<slash])
            guard path.count >= mountPoint.count, let parent = self.cgroup(atPath: path) else { break }
            result.append(parent)
        }
        return result
    }

    /// Visits the cgroups below `root` (not `root` itself), parents before children.
    /// `visit` returns false to skip a cgroup's own subtree.
    public func walk(below root: Cgroup, _ visit: (Cgroup) -> Bool) {
        guard let dir = opendir(root.path) else { return }
        defer { closedir(dir) }
        while let entry = readdir(dir) {
            guard entry.pointee.d_type == DT_DIR else { continue }
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name == "." || name == ".." { continue }
            let child = Cgroup(path: root.path + "/" + name,
                               relativePath: root.relativePath == "/" ? name : root.relativePath + "/" + name,
                               id: UInt64(entry.pointee.d_ino))
            if visit(child) { walk(below: child, visit) }
        }
    }

    public var root: Cgroup {
        get throws(CgroupError) { try resolve(mountPoint) }
    }
}

/// One cgroup v2 directory. Its id is the directory's inode number, the id
/// the kernel reports for the cgroup (kernfs node id) and our map key.
public struct Cgroup: Hashable, Sendable {
    public let path: String
    public let relativePath: String
    public let id: UInt64

    static func normalize(_ path: String) -> String {
        var parts: [Substring] = []
        for part in path.split(separator: "/") where part != "." {
            if part == ".." { _ = parts.popLast() } else { parts.append(part) }
        }
        return "/" + parts.joined(separator: "/")
    }
}

public enum CgroupError: Error, CustomStringConvertible, Equatable {
    case notMounted
    case notFound(String)
    case notCgroup2(String, mountPoint: String)
    case noProcess(Int32)
    case noUnit(String)
    case badRoot(String)

    public var description: String {
        switch self {
        case .notMounted: "no cgroup2 filesystem is mounted (see /proc/self/mountinfo)"
        case let .notFound(path): "cgroup '\(path)' does not exist"
        case let .notCgroup2(path, mount): "'\(path)' is not a cgroup v2 directory (cgroup2 is mounted at \(mount))"
        case let .noProcess(pid): "no process \(pid) with a cgroup v2 path (see /proc/\(pid)/cgroup)"
        case let .badRoot(path): "cgroup root '\(path)' (--cgroup-root or KEEPALIVE_CGROUP_ROOT) is not a cgroup2 mount"
        case let .noUnit(name): "no cgroup for unit '\(name)' (it is not running, or not under a slice)"
        }
    }
}

func readTextFile(_ path: String) throws -> String {
    guard let file = fopen(path, "r") else { throw CgroupError.notFound(path) }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = fread(&buffer, 1, buffer.count, file)
        if n <= 0 { break }
        bytes.append(contentsOf: buffer[0..<n])
    }
    return String(decoding: bytes, as: UTF8.self)
}
