// SPDX-License-Identifier: MIT
import CLibBPF
import Glibc
import KeepaliveCore
import NIOCore
import NIOPosix
import Synchronization

import struct SystemPackage.FilePath

/// Tells when watched directories gain or lose subdirectories: inotify, one
/// watch per directory (it is not recursive). Its descriptor is read through
/// NIO, so its events are an AsyncSequence of buffers for the enforcement
/// loop to consume and decode, and closing it ends the sequence.
final class CgroupWatcher: Sendable {
    enum Event: Sendable, Equatable {
        /// A directory appeared: its path below the cgroup2 mount.
        case appeared(FilePath)
        case vanished(FilePath)
        /// Events were lost: everything must be resolved again.
        case overflow
    }

    private struct Table {
        var byPath: [FilePath: Int32] = [:]
        var byDescriptor: [Int32: FilePath] = [:]
        /// Directories the watch limit left unwatched (a rescan covers them).
        var unwatched: Set<FilePath> = []
    }

    private let fd: Int32
    private let cgroups: CgroupFS
    private let table = Mutex(Table())
    static let mask = UInt32(IN_CREATE | IN_DELETE | IN_MOVED_TO | IN_MOVED_FROM | IN_ONLYDIR)

    init(cgroups: CgroupFS) throws {
        fd = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
        guard fd >= 0 else { throw AgentError("inotify_init1: \(String(cString: strerror(errno)))") }
        self.cgroups = cgroups
    }

    /// The raw events, until the channel is closed. NIO owns the descriptor from here.
    func channel(on loop: any EventLoop) async throws -> NIOAsyncChannel<ByteBuffer, Never> {
        try await NIOPipeBootstrap(group: loop)
            .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 64 * 1024))
            .takingOwnershipOfDescriptor(input: fd) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, Never>(wrappingChannelSynchronously: channel)
                }
            }
    }

    /// Watches `paths` too (directories below the cgroup2 mount). Returns the
    /// ones that could not be watched because the limit is reached.
    @discardableResult
    func watch(_ paths: some Sequence<FilePath>) -> Set<FilePath> {
        table.withLock { table in
            for path in paths where table.byPath[path] == nil {
                let wd = cgroups.absolute(path).withPlatformString { inotify_add_watch(fd, $0, Self.mask) }
                if wd >= 0 {
                    table.byPath[path] = wd
                    table.byDescriptor[wd] = path
                    table.unwatched.remove(path)
                } else if errno == ENOSPC {
                    table.unwatched.insert(path)
                }  // otherwise gone already: its parent's watch reports that
            }
            return table.unwatched
        }
    }

    var watchedCount: Int { table.withLock { $0.byPath.count } }
    var unwatched: Set<FilePath> { table.withLock { $0.unwatched } }

    /// The events in one read's worth of bytes.
    func decode(_ buffer: ByteBuffer) -> [Event] {
        var events: [Event] = []
        let header = MemoryLayout<inotify_event>.size
        buffer.withUnsafeReadableBytes { raw in
            var offset = 0
            while offset + header <= raw.count {
                let wd = raw.loadUnaligned(fromByteOffset: offset, as: Int32.self)
                let mask = raw.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self)
                let length = Int(raw.loadUnaligned(fromByteOffset: offset + 12, as: UInt32.self))
                let name = raw[(offset + header)..<min(raw.count, offset + header + length)].prefix { $0 != 0 }
                offset += header + length
                if mask & UInt32(IN_Q_OVERFLOW) != 0 {
                    events.append(.overflow)
                    continue
                }
                if mask & UInt32(IN_IGNORED) != 0 {
                    table.withLock { table in
                        if let path = table.byDescriptor.removeValue(forKey: wd) { table.byPath[path] = nil }
                    }
                    continue
                }
                guard mask & UInt32(IN_ISDIR) != 0, !name.isEmpty,
                    let parent = table.withLock({ $0.byDescriptor[wd] }),
                    let component = FilePath.Component(platformString: name.map { CChar(bitPattern: $0) } + [0])
                else { continue }
                let path = parent.appending(component)
                events.append(mask & UInt32(IN_CREATE | IN_MOVED_TO) != 0 ? .appeared(path) : .vanished(path))
            }
        }
        return events
    }
}

struct AgentError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
