// SPDX-License-Identifier: MIT
import BPF
import CLibBPF
import Glibc

import struct SystemPackage.FilePath

/// The cgroup v2 hierarchy: where it is mounted and the directories in it.
/// Paths below the mount are FilePaths: a cgroup's name may hold any byte
/// but '/' and NUL, so paths are bytes, not strings.
public struct CgroupFS: Sendable {
    /// Where cgroup2 is mounted (e.g. /sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid systems).
    public let mount: FilePath
    /// The id of the cgroup at the mount: the hierarchy's root (1), or in a
    /// cgroup namespace (a container's systemd) the namespace's root. Paths
    /// below the mount mean something only together with it.
    public let rootID: UInt64

    static let magic = 0x6367_7270  // CGROUP2_SUPER_MAGIC
    public static let hierarchyRootID: UInt64 = 1  // kernfs numbers the hierarchy's root 1

    public init(mount: FilePath, rootID: UInt64 = hierarchyRootID) {
        self.mount = mount
        self.rootID = rootID
    }

    /// Finds the cgroup2 hierarchy: `root` if given (the cgroup2 mount itself,
    /// or a directory holding it at unified/, as a hybrid host's /sys/fs/cgroup
    /// mounted into a container does), else the first cgroup2 in mountinfo.
    /// The mount's root must be a cgroup's own directory (a cgroup
    /// namespace's root is, a subdirectory bind-mounted elsewhere is not):
    /// then /proc/PID/cgroup paths are below it.
    public static func discover(
        root: String?,
        mountinfo: String = "/proc/self/mountinfo"
    ) throws(CgroupError) -> CgroupFS {
        let mount: FilePath
        if let root {
            let given = FilePath(root).lexicallyNormalized()
            guard let found = [given, given.appending("unified")].first(where: isCgroup2) else {
                throw .notCgroup2Mount(root)
            }
            mount = found
        } else {
            let text: String
            do { text = try readTextFile(FilePath(mountinfo)) } catch { throw .unreadable(mountinfo, error.errno) }
            guard let found = cgroup2MountPoint(inMountinfo: text) else { throw .notMounted }
            mount = FilePath(found)
        }
        guard let st = mount.status() else {
            throw errno == ENOENT ? .notFound(mount.string) : .unreadable(mount.string, errno)
        }
        return CgroupFS(mount: mount, rootID: UInt64(st.st_ino))
    }

    static func isCgroup2(_ path: FilePath) -> Bool {
        path.withPlatformString(filesystemType(ofPath:)) == magic
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
        var out: [UInt8] = []
        let bytes = Array(path.utf8)
        var i = 0
        while i < bytes.count {
            if bytes[i] == UInt8(ascii: "\\"), i + 3 < bytes.count,
                let code = UInt8(String(decoding: bytes[(i + 1)...(i + 3)], as: UTF8.self), radix: 8)
            {
                out.append(code)
                i += 4
            } else {
                out.append(bytes[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    public func absolute(_ path: FilePath) -> FilePath {
        mount.appending(path.components)
    }

    /// A user's argument: a path inside the mount, absolute or relative to it.
    /// The root is taken only when named explicitly ("/" or the mount itself);
    /// an empty path, "." and ".." are refused rather than guessed at.
    public func resolve(_ argument: String) throws(CgroupError) -> Cgroup {
        let given = FilePath(argument)
        guard !argument.isEmpty, !given.components.contains(where: { $0.kind != .regular }) else {
            throw .ambiguous(argument)
        }
        let relative: FilePath
        if given.isAbsolute {
            if given == "/" {
                relative = FilePath()
            } else {
                var rest = given
                guard rest.removePrefix(mount) else { throw .notCgroup2(argument, mountPoint: mount.string) }
                relative = FilePath(root: nil, rest.components)
            }
        } else {
            relative = given
        }
        guard let st = absolute(relative).status() else {
            throw errno == ENOENT ? .notFound(argument) : .unreadable(absolute(relative).displayString, errno)
        }
        guard (st.st_mode & S_IFMT) == S_IFDIR, Self.isCgroup2(absolute(relative)) else {
            throw .notCgroup2(argument, mountPoint: mount.string)
        }
        return Cgroup(path: relative, id: UInt64(st.st_ino))
    }

    /// The cgroup at `path` below the mount, if it exists now.
    public func cgroup(at path: FilePath) -> Cgroup? {
        guard let st = absolute(path).status(), (st.st_mode & S_IFMT) == S_IFDIR else { return nil }
        return Cgroup(path: path, id: UInt64(st.st_ino))
    }

    /// Whether the cgroup `id` still exists at `path`. It is gone only on
    /// proof: ENOENT, or another cgroup at that path now (ids are never
    /// reused and cgroup2 directories cannot be renamed). Any other error
    /// (EACCES, EMFILE, ...) proves nothing.
    public func presence(of path: FilePath, id: UInt64) -> CgroupPresence {
        guard let st = absolute(path).status() else {
            return errno == ENOENT ? .gone : .unknown(errno: errno)
        }
        return UInt64(st.st_ino) == id ? .present : .gone
    }

    /// The cgroups directly below `parent`, read with one readdir. A directory
    /// that vanished has none; one that cannot be read is an error, never
    /// taken for an empty one.
    public func children(of parent: FilePath) throws(SyscallError) -> [Cgroup] {
        let directory = absolute(parent)
        guard let dir = directory.openDirectoryStream() else {
            if errno == ENOENT { return [] }
            throw SyscallError("read \(directory.displayString)", errno: errno)
        }
        defer { closedir(dir) }
        var found: [Cgroup] = []
        errno = 0
        while let entry = readdir(dir) {
            guard entry.pointee.d_type == DT_DIR else { continue }
            let name = directoryEntryName(entry)
            guard name.kind == .regular else { continue }
            found.append(Cgroup(path: parent.appending(name), id: UInt64(entry.pointee.d_ino)))
        }
        guard errno == 0 else { throw SyscallError("read \(directory.displayString)", errno: errno) }  // not its end
        return found
    }

    /// Visits every cgroup below `top`, parents before children; `visit`
    /// returns false to skip a cgroup's own subtree. Returns the directories
    /// that could not be read.
    @discardableResult
    public func walk(below top: FilePath, _ visit: (Cgroup) -> Bool) -> [SyscallError] {
        var failures: [SyscallError] = []
        var pending = [top]
        while let parent = pending.popLast() {
            do {
                for child in try children(of: parent) where visit(child) { pending.append(child.path) }
            } catch {
                failures.append(error)
            }
        }
        return failures
    }
}

/// One cgroup v2 directory. Its id is the directory's inode number, the id
/// the kernel reports for the cgroup (kernfs node id) and our map key.
public struct Cgroup: Hashable, Sendable {
    /// Below the cgroup2 mount; empty for the root.
    public let path: FilePath
    public let id: UInt64

    public init(path: FilePath, id: UInt64) {
        self.path = path
        self.id = id
    }

    /// The path for people: "/" for the root, odd bytes escaped.
    public var display: String { path.cgroupDisplay }
}

public enum CgroupPresence: Equatable, Sendable {
    case present
    case gone
    case unknown(errno: Int32)
}

extension FilePath {
    /// A cgroup path for people and logs: "/" for the root; bytes that are not
    /// printable UTF-8 as \xNN.
    public var cgroupDisplay: String { isEmpty ? "/" : displayString }

    /// The path as text: valid, printable UTF-8 as is, any other byte as \xNN.
    public var displayString: String {
        let bytes = withPlatformString { Array(UnsafeBufferPointer(start: $0, count: strlen($0))) }
            .map { UInt8(bitPattern: $0) }
        var text = ""
        var index = bytes.startIndex
        while index < bytes.endIndex {
            let length = utf8SequenceLength(bytes[index])
            let end = index + length
            if length > 0, end <= bytes.endIndex,
                let scalar = String(validating: bytes[index..<end], as: UTF8.self),
                scalar.unicodeScalars.allSatisfy({
                    !($0.properties.generalCategory == .control)
                })
            {
                text += scalar
                index = end
            } else {
                text += "\\x" + String(bytes[index], radix: 16, uppercase: false).leftPadded(to: 2)
                index += 1
            }
        }
        return text
    }

    /// The path's depth below the mount: 0 for the root.
    public var depth: Int { components.count }

    /// The strict ancestors of a relative path, nearest first, the root (empty) last.
    public var ancestors: [FilePath] {
        var result: [FilePath] = []
        var current = self
        while !current.isEmpty {
            current.removeLastComponent()
            result.append(current)
        }
        return result
    }
}

private func utf8SequenceLength(_ lead: UInt8) -> Int {
    switch lead {
    case 0x00...0x7f: 1
    case 0xc2...0xdf: 2
    case 0xe0...0xef: 3
    case 0xf0...0xf4: 4
    default: 0
    }
}

extension String {
    /// Zeros in front, up to `width` characters.
    public func leftPadded(to width: Int) -> String {
        String(repeating: "0", count: max(0, width - count)) + self
    }
}

public enum CgroupError: Error, CustomStringConvertible, Equatable {
    case notMounted
    case notFound(String)
    case notCgroup2(String, mountPoint: String)
    case noProcess(Int32)
    case noUnit(String)
    case notCgroup2Mount(String)
    case ambiguous(String)
    case unreadable(String, Int32)

    public var description: String {
        switch self {
        case .notMounted: "no cgroup2 filesystem is mounted (see /proc/self/mountinfo)"
        case let .notFound(path): "cgroup '\(path)' does not exist"
        case let .notCgroup2(path, mount): "'\(path)' is not a cgroup v2 directory (cgroup2 is mounted at \(mount))"
        case let .noProcess(pid): "no process \(pid) with a cgroup v2 path (see /proc/\(pid)/cgroup)"
        case let .notCgroup2Mount(path): "'\(path)' is not a cgroup2 mount, nor holds one at unified/"
        case let .noUnit(name): "no cgroup for unit '\(name)' (it is not running, or not under a slice)"
        case let .unreadable(path, code): "cannot read \(path): \(errnoText(code))"
        case let .ambiguous(path):
            "cgroup path '\(path)' is empty or has '.' or '..' in it; name the root cgroup explicitly as /"
        }
    }
}
