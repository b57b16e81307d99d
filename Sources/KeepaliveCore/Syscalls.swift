// SPDX-License-Identifier: MIT
import BPF
import Glibc

import struct SystemPackage.FilePath

// The system calls keepalive makes on paths and directories, in one place.

/// System calls on FilePaths, passing their bytes as they are: a cgroup's
/// name need not be UTF-8, so it never goes through a String.
extension FilePath {
    /// stat(2); nil with errno set on failure.
    func status() -> Glibc.stat? {
        var st = Glibc.stat()
        return withPlatformString { statPath($0, &st) } == 0 ? st : nil
    }

    func openDirectory() throws(SyscallError) -> FileDescriptor {
        let fd = withPlatformString { Glibc.open($0, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        guard fd >= 0 else { throw SyscallError("open \(displayString)", errno: errno) }
        return FileDescriptor(owning: fd)
    }

    func openDirectoryStream() -> OpaquePointer? {
        withPlatformString { opendir($0) }
    }
}

/// A whole file's bytes.
func readFileBytes(_ path: FilePath) throws(SyscallError) -> [UInt8] {
    guard let file = path.withPlatformString({ fopen($0, "r") }) else {
        throw SyscallError("open \(path.displayString)", errno: errno)
    }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = fread(&buffer, 1, buffer.count, file)
        if n <= 0 { break }
        bytes.append(contentsOf: buffer[0..<n])
    }
    guard ferror(file) == 0 else { throw SyscallError("read \(path.displayString)", errno: errno) }
    return bytes
}

func readTextFile(_ path: FilePath) throws(SyscallError) -> String {
    String(decoding: try readFileBytes(path), as: UTF8.self)
}

/// stat(2) by name, where FilePath's own stat() would shadow it.
private func statPath(_ path: UnsafePointer<CChar>, _ st: inout Glibc.stat) -> Int32 {
    stat(path, &st)
}

/// The names in a directory, "." and ".." left out.
func directoryNames(_ path: String) throws(SyscallError) -> [String] {
    guard let dir = opendir(path) else { throw SyscallError("read \(path)", errno: errno) }
    defer { closedir(dir) }
    var names: [String] = []
    errno = 0
    while let entry = readdir(dir) {
        let name = directoryEntryName(entry)
        if name.kind == .regular { names.append(name.string) }
    }
    guard errno == 0 else { throw SyscallError("read \(path)", errno: errno) }  // readdir's NULL: the end, or a failure
    return names
}

/// The same, or nil when the directory is not there (ENOENT, and only then).
func directoryNamesIfPresent(_ path: String) throws(SyscallError) -> [String]? {
    do {
        return try directoryNames(path)
    } catch  where error.errno == ENOENT {
        return nil
    }
}

/// A directory entry's name, as the bytes the kernel gave (one place that reads d_name).
func directoryEntryName(_ entry: UnsafeMutablePointer<dirent>) -> FilePath.Component {
    withUnsafeBytes(of: entry.pointee.d_name) { raw in
        let bytes = raw.prefix { $0 != 0 }.map { CChar(bitPattern: $0) } + [0]
        return FilePath.Component(platformString: bytes)!  // a name from readdir: never empty, never holds '/'
    }
}

/// An errno as people read it: "Too many open files, errno 24".
func errnoText(_ code: Int32) -> String {
    "\(String(cString: strerror(code))), errno \(code)"
}
