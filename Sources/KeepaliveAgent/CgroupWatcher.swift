import Foundation
import Glibc

/// Tells when directories gain or lose subdirectories (inotify, one watch per
/// directory: it is not recursive). `onChange` runs on the watcher's thread.
final class CgroupWatcher: @unchecked Sendable {
    private let fd: Int32
    private let lock = NSLock()
    private var watches: [String: Int32] = [:]  // path -> watch descriptor, under `lock`
    private let onChange: @Sendable () -> Void

    init(onChange: @escaping @Sendable () -> Void) throws {
        fd = inotify_init1(Int32(IN_CLOEXEC))
        guard fd >= 0 else { throw AgentError("inotify_init1: \(String(cString: strerror(errno)))") }
        self.onChange = onChange
        let thread = Thread { [self] in readEvents() }
        thread.name = "cgroup-watcher"
        thread.start()
    }

    /// Watches exactly `paths` from now on. Returns how many are watched.
    @discardableResult
    func watch(_ paths: Set<String>) -> Int {
        lock.lock()
        defer { lock.unlock() }
        for (path, wd) in watches where !paths.contains(path) {
            inotify_rm_watch(fd, wd)
            watches[path] = nil
        }
        let mask = UInt32(IN_CREATE | IN_DELETE | IN_MOVED_TO | IN_MOVED_FROM | IN_ONLYDIR)
        for path in paths where watches[path] == nil {
            let wd = inotify_add_watch(fd, path, mask)
            if wd >= 0 { watches[path] = wd }  // gone already: its parent's watch reports it
        }
        return watches.count
    }

    private func readEvents() {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return }
            if containsDirectoryEvent(buffer[0..<n]) { onChange() }
        }
    }

    /// Cgroups are directories; files appearing in them (none do) would not matter.
    private func containsDirectoryEvent(_ bytes: ArraySlice<UInt8>) -> Bool {
        var offset = bytes.startIndex
        let header = MemoryLayout<inotify_event>.size
        while offset + header <= bytes.endIndex {
            let (mask, length) = bytes.withUnsafeBytes { raw in
                let base = offset - bytes.startIndex
                return (raw.loadUnaligned(fromByteOffset: base + 4, as: UInt32.self),
                        Int(raw.loadUnaligned(fromByteOffset: base + 12, as: UInt32.self)))
            }
            if mask & UInt32(IN_ISDIR) != 0 || mask & UInt32(IN_Q_OVERFLOW) != 0 { return true }
            offset += header + length
        }
        return false
    }
}

struct AgentError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
