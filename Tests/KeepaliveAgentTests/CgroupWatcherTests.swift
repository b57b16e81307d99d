// SPDX-License-Identifier: MIT
import Foundation
import Glibc
import NIOCore
import Testing

import struct SystemPackage.FilePath

@testable import KeepaliveAgent
@testable import KeepaliveCore

/// inotify's records as the watcher decodes them: directories only, the
/// path rebuilt from the watch, overflow and removed watches understood.
@Suite final class CgroupWatcherTests {
    let root: URL
    let watcher: CgroupWatcher

    init() throws {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("ka-watch-\(UUID().uuidString)")
        try FileManager.default.createDirectory(
            at: root.appendingPathComponent("pods"),
            withIntermediateDirectories: true
        )
        watcher = try CgroupWatcher(cgroups: CgroupFS(mount: FilePath(root.path)))
    }

    /// Each test has its own tree in the temporary directory: removed when it ends.
    deinit { try? FileManager.default.removeItem(at: root) }

    /// One inotify_event record: wd, mask, cookie, len, then the name padded.
    func record(wd: Int32, mask: UInt32, name: [UInt8]) -> [UInt8] {
        let padded = name.isEmpty ? [] : name + [UInt8](repeating: 0, count: 16 - name.count % 16)
        var bytes: [UInt8] = []
        for value in [UInt32(bitPattern: wd), mask, 0, UInt32(padded.count)] {
            withUnsafeBytes(of: value) { bytes += $0 }
        }
        return bytes + padded
    }

    @Test func decodesNewAndRemovedDirectories() throws {
        #expect(watcher.watch(["pods"]).isEmpty)
        let wd = Int32(1)
        var bytes = record(wd: wd, mask: UInt32(IN_CREATE | IN_ISDIR), name: Array("pod-a".utf8))
        bytes += record(wd: wd, mask: UInt32(IN_CREATE), name: Array("a-file".utf8))  // not a directory
        bytes += record(wd: wd, mask: UInt32(IN_DELETE | IN_ISDIR), name: [0xff, 0x62])
        bytes += record(wd: 99, mask: UInt32(IN_CREATE | IN_ISDIR), name: Array("unknown-watch".utf8))
        bytes += record(wd: -1, mask: UInt32(IN_Q_OVERFLOW), name: [])
        let odd = FilePath.Component(platformString: [CChar(bitPattern: 0xff), 0x62, 0])!
        #expect(
            watcher.decode(ByteBuffer(bytes: bytes)) == [
                .appeared("pods/pod-a"), .vanished(FilePath("pods").appending(odd)), .overflow,
            ]
        )
    }

    @Test func aRemovedWatchIsForgotten() throws {
        watcher.watch(["pods"])
        #expect(watcher.watchedCount == 1)
        _ = watcher.decode(ByteBuffer(bytes: record(wd: 1, mask: UInt32(IN_IGNORED), name: [])))
        #expect(watcher.watchedCount == 0)
    }
}
