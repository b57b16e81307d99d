// SPDX-License-Identifier: MIT
import CLibBPF
import Glibc
import Synchronization

/// Per-CPU values in chunks: an array of maps (BPF_MAP_TYPE_ARRAY_OF_MAPS)
/// whose inner maps are per-CPU arrays of `chunkSize` Values, each made
/// when a key in it is first written and removed (`removeChunk`) once no
/// key in it is used: per-CPU memory for the chunks in use only. Key k is
/// entry k % chunkSize of the chunk at k / chunkSize (as the program reads it).
///
/// Writers are serialised by the caller (the state's lock), which keeps the
/// chunks it opened for writing only while it holds the lock
/// (`forgetOpened`): another process may remove or replace a chunk
/// meanwhile, and one written in its place would count nothing. Reads find
/// each chunk anew, once per pass (`readPass`).
public final class PerCPUChunks<Value: BitwiseCopyable>: Sendable {
    private let outer: MapOfMaps
    public let chunkSize: Int
    private let chunkName: String
    private let opened = Mutex<[UInt32: BPFPerCPUMap<UInt32, Value>]>([:])

    public var handle: MapHandle { outer.handle }

    public init(_ fd: FileDescriptor, name: String, chunkSize: Int) throws {
        outer = try MapOfMaps(fd, name: name)
        self.chunkSize = chunkSize
        chunkName = String(name.prefix(9)) + "_chunk"  // BPF_OBJ_NAME_LEN: 15 characters
    }

    /// Sets each CPU's value at `key` (its chunk made if it is not there).
    public func update(_ key: UInt32, perCPU value: (Int) -> Value) throws {
        let (chunk, index) = locate(key)
        try writable(at: chunk).update(index, perCPU: value)
    }

    /// Forgets the chunks opened for writing: the caller's lock is released.
    public func forgetOpened() {
        opened.withLock { $0 = [:] }
    }

    /// Reads of many keys, each chunk looked up and opened once: a lookup
    /// in an array of maps from userspace waits for an RCU grace period on
    /// some kernels (about 10 ms each in a Linux 6.1 guest). For one pass
    /// (a status, a scrape): a chunk may be replaced after it.
    public final class ReadPass {
        private let chunks: PerCPUChunks
        private var opened: [UInt32: BPFPerCPUMap<UInt32, Value>?] = [:]

        init(_ chunks: PerCPUChunks) { self.chunks = chunks }

        /// Every CPU's value at `key`; nil if its chunk is not there.
        public func lookup(_ key: UInt32) throws -> [Value]? {
            try open(key)?.lookup(chunks.locate(key).index)
        }

        /// The kernel memory of the chunks holding `keys` (bytes): those
        /// this pass opened, each once. A chunk no key uses (a removal that
        /// failed) is not found: finding it would take a lookup of every
        /// index, each a grace period on those kernels.
        public func memory(holding keys: some Sequence<UInt32>) throws -> UInt64 {
            for key in keys { _ = try open(key) }
            return try opened.values.reduce(0) { $0 &+ (try $1?.handle.memory() ?? 0) }
        }

        private func open(_ key: UInt32) throws -> BPFPerCPUMap<UInt32, Value>? {
            let chunk = chunks.locate(key).chunk
            if let map = opened[chunk] { return map }
            let map = try chunks.chunk(at: chunk)
            opened[chunk] = .some(map)
            return map
        }
    }

    public func readPass() -> ReadPass { ReadPass(self) }

    /// Removes the chunk that holds `key` (none there: nothing to do).
    public func removeChunk(holding key: UInt32) throws(SyscallError) {
        let chunk = locate(key).chunk
        _ = opened.withLock { $0.removeValue(forKey: chunk) }
        try outer.remove(at: chunk)
    }

    fileprivate func locate(_ key: UInt32) -> (chunk: UInt32, index: UInt32) {
        (key / UInt32(chunkSize), key % UInt32(chunkSize))
    }

    /// The chunk at `chunk` for writing: the one opened since the lock was
    /// taken, the one there, or a new one.
    private func writable(at chunk: UInt32) throws -> BPFPerCPUMap<UInt32, Value> {
        if let map = opened.withLock({ $0[chunk] }) { return map }
        let map = try self.chunk(at: chunk) ?? makeChunk(at: chunk)
        opened.withLock { $0[chunk] = map }
        return map
    }

    /// The chunk at `chunk`, opened (nil if there is none, or it went meanwhile).
    fileprivate func chunk(at chunk: UInt32) throws -> BPFPerCPUMap<UInt32, Value>? {
        guard let fd = try outer.inner(at: chunk) else { return nil }
        return try BPFPerCPUMap(fd, name: chunkName, type: BPF_MAP_TYPE_PERCPU_ARRAY)
    }

    /// A new chunk (zero) at `chunk`: a grace period paid once per chunk.
    private func makeChunk(at chunk: UInt32) throws -> BPFPerCPUMap<UInt32, Value> {
        let fd = FileDescriptor(
            owning: try SyscallError.check(
                "create a chunk of map \(handle.name)",
                bpf_map_create(
                    BPF_MAP_TYPE_PERCPU_ARRAY,
                    chunkName,
                    4,
                    UInt32(MemoryLayout<Value>.size),
                    UInt32(chunkSize),
                    nil
                )
            )
        )
        try outer.put(fd, at: chunk)
        return try BPFPerCPUMap(fd, name: chunkName, type: BPF_MAP_TYPE_PERCPU_ARRAY)
    }
}
