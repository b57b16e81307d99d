// SPDX-License-Identifier: MIT
import CLibBPF
import Glibc

/// What a map must be for a typed wrapper to use it: checked against the
/// kernel's info for the map before any access, so a pinned map of another
/// layout is refused instead of being read or written with the wrong sizes.
public struct MapShape: Equatable, Sendable, CustomStringConvertible {
    public let type: bpf_map_type
    public let keySize: Int
    public let valueSize: Int

    public init(type: bpf_map_type, keySize: Int, valueSize: Int) {
        self.type = type
        self.keySize = keySize
        self.valueSize = valueSize
    }

    /// The shape of a map of `Key` to `Value`.
    public init<Key, Value>(_ type: bpf_map_type, _: Key.Type, _: Value.Type) {
        self.init(type: type, keySize: MemoryLayout<Key>.size, valueSize: MemoryLayout<Value>.size)
    }

    public var description: String {
        "\(String(cString: libbpf_bpf_map_type_str(type))) map (key \(keySize) B, value \(valueSize) B)"
    }
}

/// A map of another type or record size than its user expects.
public struct MapIncompatible: Error, CustomStringConvertible, Sendable {
    public let name: String
    public let found: MapShape
    public let expected: MapShape

    public var description: String { "map \(name) is a \(found), expected a \(expected)" }
}

/// A map descriptor checked against the shape its user expects, and what
/// works whatever the value type: iteration over keys, deletion.
public struct MapHandle: Sendable {
    public let fd: FileDescriptor
    public let name: String
    public let id: UInt32
    public let capacity: Int

    /// Throws MapIncompatible when the map is of another shape (cilium's
    /// ErrMapIncompatible): a fact about the map, not a failed call.
    public init(_ fd: FileDescriptor, name: String, expecting expected: MapShape) throws {
        var info = bpf_map_info()
        var length = UInt32(MemoryLayout<bpf_map_info>.size)
        try SyscallError.check("read map \(name) info", bpf_obj_get_info_by_fd(fd.raw, &info, &length))
        let shape = MapShape(
            type: bpf_map_type(info.type),
            keySize: Int(info.key_size),
            valueSize: Int(info.value_size)
        )
        guard shape == expected else { throw MapIncompatible(name: name, found: shape, expected: expected) }
        self.fd = fd
        self.name = name
        id = info.id
        capacity = Int(info.max_entries)
    }

    /// The kernel memory the map takes, by the kernel's own account (memlock
    /// in its fdinfo: exact from Linux 6.4, an estimate before).
    public func memory() throws(SyscallError) -> UInt64 {
        let path = "/proc/self/fdinfo/\(fd.raw)"
        guard let file = fopen(path, "r") else { throw SyscallError("read \(path)", errno: errno) }
        defer { fclose(file) }
        var line: UnsafeMutablePointer<CChar>?
        var capacity = 0
        defer { free(line) }
        while getline(&line, &capacity, file) > 0, let text = line.map({ String(cString: $0) }) {
            if text.hasPrefix("memlock:"), let bytes = UInt64(String(text.dropFirst(8).filter(\.isNumber))) {
                return bytes
            }
        }
        throw SyscallError("read the memlock of map \(name) in \(path)", errno: ENODATA)
    }

    public func keys<Key: BitwiseCopyable>(_: Key.Type = Key.self) throws(SyscallError) -> [Key] {
        var keys: [Key] = []
        let current = UnsafeMutablePointer<Key>.allocate(capacity: 1)
        let next = UnsafeMutablePointer<Key>.allocate(capacity: 1)
        defer {
            current.deallocate()
            next.deallocate()
        }
        var previous: UnsafeMutablePointer<Key>? = nil
        while bpf_map_get_next_key(fd.raw, previous, next) == 0 {
            keys.append(next.pointee)
            current.pointee = next.pointee
            previous = current
        }
        guard errno == ENOENT else { throw SyscallError("iterate map \(name)", errno: errno) }
        return keys
    }

    /// Deletes a key; returns false if it was not there.
    @discardableResult
    public func delete<Key: BitwiseCopyable>(_ key: Key) throws(SyscallError) -> Bool {
        var key = key
        if bpf_map_delete_elem(fd.raw, &key) == 0 { return true }
        if errno == ENOENT { return false }
        throw SyscallError("delete from map \(name)", errno: errno)
    }

    func lookup(_ key: UnsafeRawPointer, into value: UnsafeMutableRawPointer) throws(SyscallError) -> Bool {
        if bpf_map_lookup_elem(fd.raw, key, value) == 0 { return true }
        if errno == ENOENT { return false }
        throw SyscallError("look up in map \(name)", errno: errno)
    }

    func update(_ key: UnsafeRawPointer, _ value: UnsafeRawPointer, flags: Int32) throws(SyscallError) {
        try SyscallError.check("update map \(name)", bpf_map_update_elem(fd.raw, key, value, UInt64(flags)))
    }
}

/// A BPF map with fixed-size key and value types (C structs or integers).
public struct BPFMap<Key: BitwiseCopyable, Value: BitwiseCopyable>: Sendable {
    public let handle: MapHandle

    public init(_ fd: FileDescriptor, name: String, type: bpf_map_type) throws {
        handle = try MapHandle(fd, name: name, expecting: MapShape(type, Key.self, Value.self))
    }

    public func lookup(_ key: Key) throws(SyscallError) -> Value? {
        var key = key
        let value = UnsafeMutablePointer<Value>.allocate(capacity: 1)
        defer { value.deallocate() }
        return try handle.lookup(&key, into: value) ? value.pointee : nil
    }

    /// Writes a value (BPF_ANY, BPF_NOEXIST or BPF_EXIST); one atomic replacement for readers.
    public func update(_ key: Key, _ value: Value, flags: Int32 = Int32(BPF_ANY)) throws(SyscallError) {
        var key = key
        var value = value
        try handle.update(&key, &value, flags: flags)
    }

    @discardableResult
    public func delete(_ key: Key) throws(SyscallError) -> Bool { try handle.delete(key) }

    public func keys() throws(SyscallError) -> [Key] { try handle.keys() }

    /// Every entry, read with one lookup per key (a key deleted meanwhile is skipped).
    public func entries() throws(SyscallError) -> [(key: Key, value: Value)] {
        var entries: [(key: Key, value: Value)] = []
        for key in try keys() {
            if let value = try lookup(key) { entries.append((key, value)) }
        }
        return entries
    }
}

/// A per-CPU map: one Value per possible CPU behind each key. The kernel
/// copies values at a stride rounded up to 8 bytes.
public struct BPFPerCPUMap<Key: BitwiseCopyable, Value: BitwiseCopyable>: Sendable {
    public let handle: MapHandle
    public let cpus: Int
    private var stride: Int { (MemoryLayout<Value>.size + 7) & ~7 }

    public init(_ fd: FileDescriptor, name: String, type: bpf_map_type) throws {
        handle = try MapHandle(fd, name: name, expecting: MapShape(type, Key.self, Value.self))
        let cpus = Int(libbpf_num_possible_cpus())
        guard cpus > 0 else { throw SyscallError("count possible CPUs", errno: Int32(-cpus)) }
        self.cpus = cpus
    }

    /// Every CPU's value, or nil if the key is absent.
    public func lookup(_ key: Key) throws(SyscallError) -> [Value]? {
        var key = key
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: stride * cpus, alignment: 8)
        defer { buffer.deallocate() }
        guard try handle.lookup(&key, into: buffer) else { return nil }
        return (0..<cpus).map { buffer.loadUnaligned(fromByteOffset: $0 * stride, as: Value.self) }
    }

    /// Sets every CPU's value to `value`.
    public func update(_ key: Key, _ value: Value, flags: Int32 = Int32(BPF_ANY)) throws(SyscallError) {
        try update(key, perCPU: { _ in value }, flags: flags)
    }

    /// Sets each CPU's value (e.g. a total on the first CPU, zero on the others).
    public func update(_ key: Key, perCPU value: (Int) -> Value, flags: Int32 = Int32(BPF_ANY)) throws(SyscallError) {
        var key = key
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: stride * cpus, alignment: 8)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: stride * cpus)
        for cpu in 0..<cpus { buffer.storeBytes(of: value(cpu), toByteOffset: cpu * stride, as: Value.self) }
        try handle.update(&key, buffer, flags: flags)
    }

    @discardableResult
    public func delete(_ key: Key) throws(SyscallError) -> Bool { try handle.delete(key) }

    public func keys() throws(SyscallError) -> [Key] { try handle.keys() }
}
