// SPDX-License-Identifier: MIT
import CLibBPF
import Glibc

/// The BPF filesystem, where programs, maps and links outlive their loader.
public enum BPFFS {
    public static let defaultMount = "/sys/fs/bpf"
    static let magic = 0xcafe_4a11  // BPF_FS_MAGIC

    /// Whether `path` is on a bpffs; false when nothing is there (ENOENT),
    /// and an error when that cannot be told.
    public static func isBPFFS(_ path: String) throws(SyscallError) -> Bool {
        var fs = statfs()
        if statfs(path, &fs) == 0 { return Int(fs.f_type) == magic }
        if errno == ENOENT { return false }
        throw SyscallError("statfs \(path)", errno: errno)
    }

    /// Mounts a bpffs at `path` that only root can enter (systemd mounts it
    /// the same way); the default 1777 would let any user pre-create pins.
    public static func mount(at path: String) throws(SyscallError) {
        guard Glibc.mkdir(path, 0o700) == 0 || errno == EEXIST else {
            throw SyscallError("create \(path)", errno: errno)
        }
        guard Glibc.mount("bpf", path, "bpf", 0, "mode=0700") == 0 else {
            throw SyscallError("mount bpffs at \(path)", errno: errno)
        }
    }

    /// What a pinned path holds.
    public enum ObjectKind: String, Sendable {
        case map, program, link

        /// The anonymous inode name the kernel gives each kind's descriptors
        /// (links were "bpf_link" before Linux 6.x named them "bpf-link").
        init?(anonymousInode name: String) {
            switch name {
            case "anon_inode:bpf-map": self = .map
            case "anon_inode:bpf-prog": self = .program
            case "anon_inode:bpf-link", "anon_inode:bpf_link": self = .link
            default: return nil
            }
        }
    }

    /// Opens a pinned object, checking that it is the kind the caller expects:
    /// another kind there is a WrongObjectKind, never taken for it.
    public static func open(pinned path: String, as kind: ObjectKind) throws -> FileDescriptor {
        guard let fd = try openIfPresent(pinned: path, as: kind) else {
            throw SyscallError("open pinned \(path)", errno: ENOENT)
        }
        return fd
    }

    /// The same, or nil when nothing is pinned there (ENOENT, and only then).
    public static func openIfPresent(pinned path: String, as kind: ObjectKind) throws -> FileDescriptor? {
        let raw = bpf_obj_get(path)
        if raw < 0 && errno == ENOENT { return nil }
        let fd = FileDescriptor(owning: try SyscallError.check("open pinned \(path)", raw))
        let found = try self.kind(of: fd, at: path)
        guard found == kind else { throw WrongObjectKind(path: path, found: found, expected: kind) }
        return fd
    }

    /// The kind of a BPF object's descriptor, from its anonymous inode's name; nil if it is no BPF object.
    static func kind(of fd: FileDescriptor, at path: String) throws(SyscallError) -> ObjectKind? {
        var target = [CChar](repeating: 0, count: 64)
        let n = readlink("/proc/self/fd/\(fd.raw)", &target, target.count - 1)
        guard n > 0 else { throw SyscallError("identify \(path) (readlink /proc/self/fd)", errno: errno) }
        return ObjectKind(anonymousInode: String(decoding: target[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }

    public static func pin(_ fd: FileDescriptor, at path: String) throws(SyscallError) {
        try SyscallError.check("pin \(path)", bpf_obj_pin(fd.raw, path))
    }

    /// Puts `from` in place of `to` in one step (bpffs renames over an existing pin).
    public static func rename(_ from: String, to: String) throws(SyscallError) {
        guard Glibc.rename(from, to) == 0 else { throw SyscallError("rename \(from) to \(to)", errno: errno) }
    }

    /// Whether something is at `path`: false only on ENOENT; an error otherwise.
    public static func isPresent(_ path: String) throws(SyscallError) -> Bool {
        var st = stat()
        if lstat(path, &st) == 0 { return true }
        if errno == ENOENT { return false }
        throw SyscallError("inspect \(path)", errno: errno)
    }

    /// Removes a pin; for a link this detaches it once no process holds it open.
    /// Returns false if it was not there.
    @discardableResult
    public static func unpin(_ path: String) throws(SyscallError) -> Bool {
        if unlink(path) == 0 { return true }
        guard errno == ENOENT else { throw SyscallError("unpin \(path)", errno: errno) }
        return false
    }
}

/// A pin that holds another kind of object than the one expected (or none).
public struct WrongObjectKind: Error, CustomStringConvertible, Sendable {
    public let path: String
    public let found: BPFFS.ObjectKind?
    public let expected: BPFFS.ObjectKind

    public var description: String {
        "\(path) is \(found.map { "a \($0.rawValue)" } ?? "not a BPF object"), expected a \(expected.rawValue)"
    }
}

/// The statfs type of the filesystem holding `path` (its magic number), or nil.
public func filesystemType(of path: String) -> Int? {
    path.withCString(filesystemType(ofPath:))
}

/// The same for a path of bytes (a cgroup's name may not be UTF-8).
public func filesystemType(ofPath path: UnsafePointer<CChar>) -> Int? {
    var fs = statfs()
    return statfs(path, &fs) == 0 ? Int(fs.f_type) : nil
}
