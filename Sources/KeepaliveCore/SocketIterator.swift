// SPDX-License-Identifier: MIT
import BPF
import CLibBPF
import Glibc

import struct SystemPackage.FilePath

/// Runs keepalive's BPF TCP iterator over one cgroup subtree, in every network
/// namespace its processes use: to apply policies to sockets that already
/// exist (`attach --existing`, the agent) and to report what is in force (`inspect`).
public final class SocketIterator {
    private let object: IteratorObject
    private let program: BPFProgram
    private let config: BPFMap<UInt32, ka_iter_config>
    private let cgroups: CgroupFS

    /// Loads the iterator in the kernel's build; with `pinRoot` (a state
    /// exists) it shares the state's maps. A kernel without it (the features
    /// `existing sockets` and `inspect`) is refused by name.
    public init(pinRoot: String?, cgroups: CgroupFS, for feature: KernelFeatures.Feature) throws {
        let features = try KernelFeatures.probe()
        try features.require(feature)
        object = try IteratorObject(pinRoot: pinRoot, build: features.build)
        try object.load()
        let skeleton = object.skeleton.pointee
        program = try BPFObject.program(object.program, name: "keepalive_iter")
        let map = skeleton.maps.ka_iter_config!
        config = try BPFMap(
            try BPFObject.mapDescriptor(map),
            name: BPFObject.name(ofMap: map),
            type: bpf_map__type(map)
        )
        self.cgroups = cgroups
    }

    public struct Result: Sendable {
        public var sockets: [SocketReport] = []
        public var namespaces = 0
        /// Network namespaces that could not be entered, and why.
        public var unreachable: [String] = []
        public var applied: Int { sockets.filter(\.applied).count }
        public var keptOwn: Int { sockets.filter(\.keptOwn).count }
    }

    /// Visits the subtree's sockets in each of its network namespaces; with
    /// `applying`, gives each its nearest policy first (under application
    /// precedence, a socket whose program turned keepalive on keeps its values).
    public func run(_ subtree: Cgroup, applying: Bool, owners: Bool = true) throws -> Result {
        let mode = applying ? KA_ITER_APPLY : KA_ITER_INSPECT
        try config.update(0, ka_iter_config(cgroup_id: subtree.id, mode: mode.rawValue, reserved: 0))
        let processes = ProcessTable(subtree: subtree, cgroups: cgroups)
        let socketOwners = owners ? processes.socketOwners() : [:]
        var result = Result()
        result.unreachable = processes.unreadable.map { "\($0): the namespaces of processes there may be missed" }
        var records: [ka_socket_record] = []
        for namespace in processes.networkNamespaces() {
            do {
                records += try NetworkNamespace.within(namespace) { try decode(program.iterate()) }
                result.namespaces += 1
            } catch {
                result.unreachable.append("\(error)")
            }
        }
        result.sockets = records.map { SocketReport($0, owners: socketOwners[$0.socket.inode] ?? []) }
        return result
    }

    /// Applies policies to the subtree's existing sockets, unless no process is
    /// in it. A socket belongs to the cgroup its creator was in when it made
    /// it, so a cgroup just made holds none; what this skips is a cgroup whose
    /// processes all moved away and left their sockets behind.
    public func runIfPopulated(_ subtree: Cgroup) throws -> Result? {
        let processes = ProcessTable(subtree: subtree, cgroups: cgroups)
        guard !processes.pids.isEmpty || !processes.unreadable.isEmpty else { return nil }  // unreadable: run anyway
        return try run(subtree, applying: true, owners: false)
    }

    private func decode(_ bytes: [UInt8]) -> [ka_socket_record] {
        let size = MemoryLayout<ka_socket_record>.size
        return stride(from: 0, to: bytes.count - size + 1, by: size).map { offset in
            bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: ka_socket_record.self) }
        }
    }
}

/// A process holding a socket.
public struct SocketOwner: Sendable, Codable, Equatable {
    public let pid: Int32
    public let command: String
}

/// A TCP socket of the subtree as the kernel reports it.
public struct SocketReport: Sendable {
    public let cgroupID: UInt64
    public let inode: UInt64
    public let state: String
    public let local: String
    public let remote: String
    public let applied: Bool
    /// Keepalive was on already and the policy (application precedence) left it.
    public let keptOwn: Bool
    public let keepalive: Bool
    public let keepidle: Int32
    public let keepintvl: Int32
    public let keepcnt: Int32
    public let userTimeout: Int32
    /// The precedence of the socket's nearest policy; nil if it has none.
    public let precedence: Precedence?
    /// The cgroup whose policy covers it; nil if none does.
    public let policyCgroupID: UInt64?
    /// The policy's rule that chose its values (0-based); nil: the policy's own.
    public let rule: Int?
    /// Processes holding the socket; empty if none in the subtree.
    public let owners: [SocketOwner]

    init(_ r: ka_socket_record, owners: [SocketOwner]) {
        cgroupID = r.socket.cgroup_id
        inode = r.socket.inode
        state = tcpStateNames[Int(r.state)] ?? "STATE_\(r.state)"
        (local, remote) = r.socket.endpoints
        applied = r.flags & KA_SOCKET_APPLIED != 0
        keptOwn = r.flags & KA_SOCKET_KEPT_OWN != 0
        keepalive = r.keepalive != 0
        keepidle = r.keepidle
        keepintvl = r.keepintvl
        keepcnt = r.keepcnt
        userTimeout = r.user_timeout
        precedence =
            r.flags & KA_SOCKET_HAS_POLICY == 0
            ? nil
            : r.flags & KA_SOCKET_PRECEDENCE_POLICY != 0 ? .policy : .application
        policyCgroupID = r.flags & KA_SOCKET_HAS_POLICY == 0 ? nil : r.policy_cgroup_id
        rule = r.rule == 0 ? nil : Int(r.rule) - 1
        self.owners = owners
    }
}

let tcpStateNames = [
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
    6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING",
]

/// Entering a network namespace with setns(2), and back. setns changes only
/// the calling thread, so it runs on a thread of its own: a thread shared
/// with other work (Swift's pool, NIO's loops) never sits in another
/// namespace, whatever happens. (Not `ip netns exec`: it remounts /sys, and
/// bpffs with it.)
enum NetworkNamespace {
    static func within<T>(_ path: String, _ body: () throws -> T) throws -> T {
        try onThreadOfItsOwn {
            let target = open(path, O_RDONLY | O_CLOEXEC)
            guard target >= 0 else { throw SyscallError("open \(path)", errno: errno) }
            defer { close(target) }
            guard ka_setns_net(target) == 0 else {
                throw SyscallError("enter the network namespace \(path)", errno: errno)
            }
            return try body()
        }
    }
}

/// Runs `body` on a new thread and waits for it.
func onThreadOfItsOwn<T>(_ body: () throws -> T) throws -> T {
    try withoutActuallyEscaping(body) { body in
        let box = ThreadWork(body)
        var thread = pthread_t()
        let started = pthread_create(
            &thread,
            nil,
            { raw in
                Unmanaged<ThreadWorkBase>.fromOpaque(raw!).takeUnretainedValue().run()
                return nil
            },
            Unmanaged.passUnretained(box as ThreadWorkBase).toOpaque()
        )
        guard started == 0 else { throw SyscallError("start a thread", errno: started) }
        pthread_join(thread, nil)
        return try box.result!.get()
    }
}

/// What a thread of its own runs: a closure and, once it is done, its result.
private class ThreadWorkBase: @unchecked Sendable {
    func run() {}
}

private final class ThreadWork<T>: ThreadWorkBase, @unchecked Sendable {
    let body: () throws -> T
    var result: Result<T, any Error>?
    init(_ body: @escaping () throws -> T) { self.body = body }
    override func run() { result = Result { try body() } }
}
