import CLibBPF
import Glibc

/// A BPF map with fixed-size key and value types (C structs or integers).
public struct BPFMap<Key: BitwiseCopyable, Value: BitwiseCopyable> {
    public let fd: FileDescriptor
    public let name: String

    public init(_ fd: FileDescriptor, name: String) {
        self.fd = fd
        self.name = name
    }

    public static func pinned(at path: String, name: String) throws -> BPFMap {
        BPFMap(try BPFFS.open(pinned: path), name: name)
    }

    public func lookup(_ key: Key) throws -> Value? {
        var key = key
        let value = UnsafeMutablePointer<Value>.allocate(capacity: 1)
        defer { value.deallocate() }
        if bpf_map_lookup_elem(fd.raw, &key, value) == 0 { return value.pointee }
        if errno == ENOENT { return nil }
        throw BPFError("look up in map \(name)", errno: errno)
    }

    public enum UpdateMode: UInt64 {
        case any = 0       // BPF_ANY
        case create = 1    // BPF_NOEXIST
        case replace = 2   // BPF_EXIST
    }

    public func update(_ key: Key, _ value: Value, mode: UpdateMode = .any) throws {
        var key = key
        var value = value
        try BPFError.check("update map \(name)", bpf_map_update_elem(fd.raw, &key, &value, mode.rawValue))
    }

    /// Deletes a key; returns false if it was not there.
    @discardableResult
    public func delete(_ key: Key) throws -> Bool {
        var key = key
        if bpf_map_delete_elem(fd.raw, &key) == 0 { return true }
        if errno == ENOENT { return false }
        throw BPFError("delete from map \(name)", errno: errno)
    }

    public func keys() throws -> [Key] {
        var keys: [Key] = []
        let current = UnsafeMutablePointer<Key>.allocate(capacity: 1)
        let next = UnsafeMutablePointer<Key>.allocate(capacity: 1)
        defer { current.deallocate(); next.deallocate() }
        var previous: UnsafeMutablePointer<Key>? = nil
        while bpf_map_get_next_key(fd.raw, previous, next) == 0 {
            keys.append(next.pointee)
            current.pointee = next.pointee
            previous = current
        }
        guard errno == ENOENT else { throw BPFError("iterate map \(name)", errno: errno) }
        return keys
    }

    /// Every entry, read with one lookup per key.
    public func entries() throws -> [(key: Key, value: Value)] {
        try keys().compactMap { key in try lookup(key).map { (key, $0) } }
    }
}

extension BPFMap where Value: FixedWidthInteger {
    /// Per-CPU maps hold one value per possible CPU; this sums them.
    public func lookupSumPerCPU(_ key: Key) throws -> Value {
        let cpus = Int(libbpf_num_possible_cpus())
        guard cpus > 0 else { throw BPFError("count possible CPUs", errno: Int32(-cpus)) }
        var key = key
        var values = [Value](repeating: 0, count: cpus)
        try BPFError.check("look up in map \(name)", bpf_map_lookup_elem(fd.raw, &key, &values))
        return values.reduce(0, &+)
    }
}
