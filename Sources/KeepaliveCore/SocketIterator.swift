import BPF
import CLibBPF
import Glibc

/// Runs keepalive's BPF TCP iterator over one cgroup subtree, in every network
/// namespace its processes use: to apply policies to sockets that already
/// exist (`attach --existing`) and to report what is in force (`inspect`).
public final class SocketIterator {
    private let program: BPFProgram
    private let config: BPFMap<UInt32, ka_iter_config>
    private let cgroups: CgroupFS
    private let object: BPFObject  // keeps the maps this run created alive

    /// Loads the iterator, sharing the pinned maps when keepalive's state exists.
    public init(state: PinnedState?, cgroups: CgroupFS) throws {
        object = try BPFObject(bytes: PackageResources.keepalive_iter_bpf_o, name: "keepalive_iter")
        if let state {
            try object.reuseMap(named: "ka_policies", state.policies.fd)
            try object.reuseMap(named: "ka_sockets", state.sockets.fd)
            try object.reuseMap(named: "ka_errors", state.errors.fd)
        }
        do {
            try object.load()
        } catch let error as BPFError {
            throw IteratorError.unsupported(error)
        }
        program = try object.program(named: "keepalive_iter")
        config = BPFMap(try object.mapDescriptor(named: "ka_iter_config"), name: "ka_iter_config")
        self.cgroups = cgroups
    }

    public enum Mode: UInt32 {
        case inspect = 0  // KA_ITER_INSPECT
        case apply = 1    // KA_ITER_APPLY
    }

    public struct Result {
        public var sockets: [SocketReport]
        public var namespaces: Int
        public var applied: Int { sockets.filter(\.applied).count }
    }

    /// Visits the subtree's sockets in each of its network namespaces.
    public func run(_ subtree: Cgroup, mode: Mode) throws -> Result {
        try config.update(0, ka_iter_config(cgroup_id: subtree.id, mode: mode.rawValue, reserved: 0))
        let processes = ProcessTable(subtree: subtree, cgroups: cgroups)
        var records: [ka_socket_record] = []
        let namespaces = processes.networkNamespaces()
        for namespace in namespaces {
            records += try NetworkNamespace.within(namespace) { try decode(program.iterate()) }
        }
        return Result(sockets: records.map { SocketReport($0, owners: processes.owners(ofSocket: $0.inode)) },
                      namespaces: namespaces.count)
    }

    private func decode(_ bytes: [UInt8]) -> [ka_socket_record] {
        let size = MemoryLayout<ka_socket_record>.size
        return stride(from: 0, to: bytes.count - size + 1, by: size).map { offset in
            bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: ka_socket_record.self) }
        }
    }
}

public enum IteratorError: Error, CustomStringConvertible {
    case unsupported(BPFError)

    public var description: String {
        switch self {
        case .unsupported(let error):
            "this kernel cannot run keepalive's TCP iterator (iter/tcp with bpf_setsockopt needs Linux 5.14 or later): \(error)"
        }
    }
}

/// A TCP socket of the subtree as the kernel reports it.
public struct SocketReport: Sendable {
    public let cgroupID: UInt64
    public let inode: UInt64
    public let state: String
    public let local: String
    public let remote: String
    public let applied: Bool
    public let keepalive: Bool
    public let keepidle: Int32
    public let keepintvl: Int32
    public let keepcnt: Int32
    public let userTimeout: Int32
    /// The precedence of the socket's nearest policy; nil if it has none.
    public let precedence: Precedence?
    /// Processes holding the socket (pid, command); empty if none in the subtree.
    public let owners: [(pid: Int32, command: String)]

    init(_ r: ka_socket_record, owners: [(pid: Int32, command: String)]) {
        cgroupID = r.cgroup_id
        inode = r.inode
        state = tcpStateNames[Int(r.state)] ?? "STATE_\(r.state)"
        local = Self.endpoint(family: r.family, address: r.local_addr, port: r.local_port)
        remote = Self.endpoint(family: r.family, address: r.remote_addr, port: r.remote_port)
        applied = r.flags & KA_SOCKET_APPLIED != 0
        keepalive = r.keepalive != 0
        keepidle = r.keepidle
        keepintvl = r.keepintvl
        keepcnt = r.keepcnt
        userTimeout = r.user_timeout
        precedence = r.flags & KA_SOCKET_HAS_POLICY == 0 ? nil
            : r.flags & KA_SOCKET_PRECEDENCE_POLICY != 0 ? .policy : .application
        self.owners = owners
    }

    static func endpoint(family: UInt32, address: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                                                   UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8),
                         port: UInt16) -> String {
        var bytes = address
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        let af = Int32(family)
        _ = withUnsafePointer(to: &bytes) { inet_ntop(af, $0, &text, socklen_t(text.count)) }
        let host = String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return af == AF_INET6 ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
}

let tcpStateNames = [1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
                     6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"]

/// The processes of a cgroup subtree, their sockets and network namespaces, from /proc.
struct ProcessTable {
    private(set) var pids: [Int32] = []
    private var socketOwners: [UInt64: [(pid: Int32, command: String)]] = [:]

    init(subtree: Cgroup, cgroups: CgroupFS) {
        var dirs = [subtree]
        cgroups.walk(below: subtree) { dirs.append($0); return true }
        for dir in dirs {
            guard let text = try? readTextFile(dir.path + "/cgroup.procs") else { continue }
            pids += text.split(separator: "\n").compactMap { Int32($0) }
        }
        for pid in pids {
            let command = (try? readTextFile("/proc/\(pid)/comm"))?.split(separator: "\n").first.map(String.init) ?? "?"
            for inode in Self.socketInodes(of: pid) { socketOwners[inode, default: []].append((pid, command)) }
        }
    }

    func owners(ofSocket inode: UInt64) -> [(pid: Int32, command: String)] {
        socketOwners[inode] ?? []
    }

    /// One /proc/PID/ns/net path per distinct namespace, this process's own first.
    func networkNamespaces() -> [String] {
        var seen: Set<UInt64> = []
        var paths: [String] = []
        for path in ["/proc/thread-self/ns/net"] + pids.map({ "/proc/\($0)/ns/net" }) {
            var st = stat()
            guard stat(path, &st) == 0, seen.insert(UInt64(st.st_ino)).inserted else { continue }
            paths.append(path)
        }
        return paths
    }

    static func socketInodes(of pid: Int32) -> [UInt64] {
        guard let dir = opendir("/proc/\(pid)/fd") else { return [] }
        defer { closedir(dir) }
        var inodes: [UInt64] = []
        var target = [CChar](repeating: 0, count: 64)
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            let n = readlink("/proc/\(pid)/fd/\(name)", &target, target.count - 1)
            guard n > 0 else { continue }
            let link = String(decoding: target[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if link.hasPrefix("socket:["), let inode = UInt64(link.dropFirst(8).dropLast()) { inodes.append(inode) }
        }
        return inodes
    }
}

/// Entering a network namespace with setns(2) on the calling thread, and back.
/// (Not `ip netns exec`: that remounts /sys, and bpffs with it.)
enum NetworkNamespace {
    static func within<T>(_ path: String, _ body: () throws -> T) throws -> T {
        let original = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
        guard original >= 0 else { throw BPFError("open own network namespace", errno: errno) }
        defer { close(original) }
        let target = open(path, O_RDONLY | O_CLOEXEC)
        guard target >= 0 else { throw BPFError("open \(path)", errno: errno) }
        defer { close(target) }
        guard ka_setns_net(target) == 0 else { throw BPFError("setns \(path)", errno: errno) }
        defer { _ = ka_setns_net(original) }
        return try body()
    }
}
