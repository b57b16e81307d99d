import BPF
import Glibc
import struct SystemPackage.FilePath

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
