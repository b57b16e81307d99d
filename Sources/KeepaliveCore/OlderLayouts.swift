import BPF
import CLibBPF
import Glibc
import struct SystemPackage.FilePath

/// The pinned maps of older layouts, and the one-time migration of their
/// policies into the current maps. Layout 1 (keepalive 0.1.0, no ka_meta)
/// recorded no path, so the cgroup tree is walked once to find them; layout
/// 2's record is layout 3's without the origin.
struct OlderLayouts {
    /// keepalive 0.1.0's struct ka_policy, as it was pinned in "ka_policies".
    struct Policy: BitwiseCopyable {
        var keepidle, keepintvl, keepcnt, userTimeout, syncnt, maxseg, windowClamp: Int32
        var flags, slot, generation: UInt32
    }

    static let programPins = ["prog", "prog-setsockopt"]
    static let policiesPin = "ka_policies"
    static let socketsPin = "ka_sockets"
    static let layout2PoliciesPin = "ka_policies_v2"
    static var pins: [String] { programPins + [policiesPin, socketsPin, layout2PoliciesPin] }

    let root: String

    var isPresent: Bool { Self.pins.contains { BPFFS.exists(root + "/" + $0) } }

    /// Ids of the programs 0.1.0 pinned: links may still run them.
    func programIDs() -> Set<UInt32> {
        Set(Self.programPins.compactMap { name in
            try? BPFProgram.pinned(at: root + "/" + name, name: name).id()
        })
    }

    /// Layout 2's policies, as layout 3 records (no origin); their slots and
    /// so their counters stay as they were.
    func layout2Policies() throws -> [(id: UInt64, record: ka_policy)] {
        let path = root + "/" + Self.layout2PoliciesPin
        guard BPFFS.exists(path) else { return [] }
        let map = try BPFMap<UInt64, ka_policy_layout2>(try BPFFS.open(pinned: path, as: .map),
                                                          name: Self.layout2PoliciesPin, type: BPF_MAP_TYPE_HASH)
        return try map.entries().map { id, old in
            var record = ka_policy()
            withUnsafeMutableBytes(of: &record) { new in
                withUnsafeBytes(of: old) { new.copyMemory(from: $0) }  // the same fields, in the same places
            }
            return (id, record)
        }
    }

    /// The policies 0.1.0 had in force, with their cgroup's path and socket count.
    func policies(in cgroups: CgroupFS) throws -> [(id: UInt64, record: PolicyRecord, configured: UInt64)] {
        let path = root + "/" + Self.policiesPin
        guard BPFFS.exists(path) else { return [] }
        let map = try BPFMap<UInt64, Policy>(try BPFFS.open(pinned: path, as: .map), name: Self.policiesPin,
                                               type: BPF_MAP_TYPE_HASH)
        let sockets = try? BPFMap<UInt32, UInt64>(try BPFFS.open(pinned: root + "/" + Self.socketsPin, as: .map),
                                                   name: Self.socketsPin, type: BPF_MAP_TYPE_ARRAY)
        let entries = try map.entries()
        guard !entries.isEmpty else { return [] }
        var paths: [UInt64: FilePath] = [cgroups.rootID: FilePath()]
        let unreadable = cgroups.walk(below: FilePath()) { paths[$0.id] = $0.path; return true }
        var result: [(id: UInt64, record: PolicyRecord, configured: UInt64)] = []
        for (id, old) in entries {
            guard let path = paths[id] else {
                // Not found: gone, unless part of the tree could not be read.
                if let failure = unreadable.first { throw StateError.migrationBlocked("\(failure)") }
                continue
            }
            var record = ka_policy()
            (record.keepidle, record.keepintvl, record.keepcnt) = (old.keepidle, old.keepintvl, old.keepcnt)
            (record.user_timeout, record.syncnt, record.maxseg) = (old.userTimeout, old.syncnt, old.maxseg)
            (record.window_clamp, record.flags) = (old.windowClamp, old.flags)
            var migrated = PolicyRecord(record)
            migrated.path = path
            result.append((id, migrated, (try? sockets?.lookup(old.slot) ?? 0) ?? 0))
        }
        return result
    }

    func remove() throws {
        for name in Self.pins { try BPFFS.unpin(root + "/" + name) }
    }
}
