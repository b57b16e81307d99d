// SPDX-License-Identifier: MIT
import CLibBPF
import Glibc

/// An array of maps (BPF_MAP_TYPE_ARRAY_OF_MAPS) as userspace sees it: the
/// inner map at an index (found anew each time: another process may replace
/// or remove it), put in place, removed. Putting one in place is a single
/// swap for the programs, and the kernel waits for a grace period before it
/// returns (for any array of maps). Before Linux 6.7 a lookup from
/// userspace waits for one too, found or not (about 10 ms each in a 6.1
/// guest): callers look up only what they must, never every index.
public struct MapOfMaps: Sendable {
    public let handle: MapHandle

    public init(_ fd: FileDescriptor, name: String) throws {
        handle = try MapHandle(
            fd,
            name: name,
            expecting: MapShape(type: BPF_MAP_TYPE_ARRAY_OF_MAPS, keySize: 4, valueSize: 4)
        )
    }

    /// The id of the inner map at `index`; nil for none.
    private func innerID(at index: UInt32) throws(SyscallError) -> UInt32? {
        var index = index
        var id: UInt32 = 0
        return try handle.lookup(&index, into: &id) ? id : nil
    }

    /// The inner map at `index`, opened; nil for none (or removed since the lookup).
    public func inner(at index: UInt32) throws(SyscallError) -> FileDescriptor? {
        guard let id = try innerID(at: index) else { return nil }
        let raw = bpf_map_get_fd_by_id(id)
        if raw < 0 && errno == ENOENT { return nil }
        return FileDescriptor(owning: try SyscallError.check("open map \(id) at \(index) of map \(handle.name)", raw))
    }

    /// Puts `inner` at `index`, in place of what was there.
    public func put(_ inner: FileDescriptor, at index: UInt32) throws(SyscallError) {
        var index = index
        var raw = inner.raw
        try handle.update(&index, &raw, flags: Int32(BPF_ANY))
    }

    /// Removes the map at `index` (none there: nothing to do).
    public func remove(at index: UInt32) throws(SyscallError) {
        _ = try handle.delete(index)
    }
}

/// Values too large for a map update the programs could not see half-way
/// (a rule set: 8 kB), each alone in a single-entry array at its index of an
/// array of maps: replaced whole by swapping in a new array, made with the
/// value in it. Memory for the values there only. Written, never read
/// back (a lookup may wait for a grace period): the caller keeps its own
/// copy of each value, and marks it while a write is under way.
public struct MapCells<Value: BitwiseCopyable>: Sendable {
    public let outer: MapOfMaps
    private let cellName: String

    public init(_ fd: FileDescriptor, name: String) throws {
        outer = try MapOfMaps(fd, name: name)
        cellName = String(name.prefix(10)) + "_cell"  // BPF_OBJ_NAME_LEN: 15 characters
    }

    /// Puts `value` at `index`: a new cell holding it, swapped in.
    public func write(_ index: UInt32, _ value: Value) throws {
        let cell = try makeCell()
        try cell.update(0, value)
        try outer.put(cell.handle.fd, at: index)
    }

    /// The kernel memory one cell takes (bytes): a cell made to be measured, never put in place.
    public func cellMemory() throws -> UInt64 {
        try makeCell().handle.memory()
    }

    private func makeCell() throws -> BPFMap<UInt32, Value> {
        let fd = FileDescriptor(
            owning: try SyscallError.check(
                "create a cell of map \(outer.handle.name)",
                bpf_map_create(BPF_MAP_TYPE_ARRAY, cellName, 4, UInt32(MemoryLayout<Value>.size), 1, nil)
            )
        )
        return try BPFMap<UInt32, Value>(fd, name: cellName, type: BPF_MAP_TYPE_ARRAY)
    }

    public func remove(_ index: UInt32) throws(SyscallError) {
        try outer.remove(at: index)
    }
}
