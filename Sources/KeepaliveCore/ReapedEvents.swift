// SPDX-License-Identifier: MIT
import BPF
import CLibBPF
import Glibc

import struct SystemPackage.FilePath

/// Why the kernel ended a covered connection (enum ka_reaped_reason).
public enum ReapedReason: Sendable, CaseIterable, Codable {
    /// Idle: keepalive probes went unanswered.
    case keepalive
    /// Data went unacknowledged: the user timeout (or retransmissions) gave up.
    case userTimeout
    /// Reset in answer to the first segment after an idle gap (recorded for
    /// policies that observe paths; never counted).
    case reset

    /// The reasons the kernel's counters keep.
    public static let counted: [ReapedReason] = [.keepalive, .userTimeout]

    public var key: String {
        switch self {
        case .keepalive: KA_REAPED_KEEPALIVE_KEY
        case .userTimeout: KA_REAPED_USER_TIMEOUT_KEY
        case .reset: KA_EVENT_RESET_KEY
        }
    }

    init(_ raw: UInt32) {
        switch raw {
        case KA_REAPED_USER_TIMEOUT.rawValue: self = .userTimeout
        case UInt32(KA_EVENT_RESET): self = .reset
        default: self = .keepalive
        }
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(key)
    }

    public init(from decoder: Decoder) throws {
        let key = try decoder.singleValueContainer().decode(String.self)
        self = Self.allCases.first { $0.key == key } ?? .keepalive
    }
}

/// A connection the kernel ended because its peer stopped answering, as the
/// reaped-connection program recorded it.
public struct ReapedEvent: Sendable {
    public let sequence: UInt64
    /// Seconds since the epoch.
    public let time: Double
    public let cgroupID: UInt64
    public let policyCgroupID: UInt64
    public let inode: UInt64
    public let local: String
    public let remote: String
    public let reason: ReapedReason
    /// Since the peer's last packet.
    public let silentMilliseconds: UInt64
    /// The idle gap its first unanswered segment came after, where its policy observes paths.
    public let idleGapMilliseconds: UInt32?
    /// The socket's values when it died (its own, or its namespace's defaults).
    public let keepidle: UInt64
    public let keepintvl: UInt64
    public let keepcnt: UInt32
    public let userTimeout: UInt32
    /// The path of the cgroup whose policy covered the socket, if it still has one.
    public internal(set) var policyPath: FilePath?
    /// Who that policy was set for.
    public internal(set) var policyOrigin = Origin.none
    /// The policy's rule that gave the socket its values (0-based); nil: the policy's own.
    public let rule: Int?
    /// That rule's label (its name, else its number), if the policy is still there.
    public internal(set) var ruleLabel: String?

    init(_ e: ka_event, clock: KernelClock) {
        sequence = e.seq - 1
        time = clock.wallTime(ofBootNanoseconds: e.boot_ns)
        cgroupID = e.socket.cgroup_id
        policyCgroupID = e.policy_cgroup_id
        inode = e.socket.inode
        (local, remote) = e.socket.endpoints
        reason = ReapedReason(e.reason)
        silentMilliseconds = clock.milliseconds(ofJiffies: e.silent_jiffies)
        idleGapMilliseconds = e.idle_gap_ms == 0 ? nil : e.idle_gap_ms
        keepidle = clock.milliseconds(ofJiffies: e.keepidle_jiffies) / 1000
        keepintvl = clock.milliseconds(ofJiffies: e.keepintvl_jiffies) / 1000
        keepcnt = e.keepcnt
        userTimeout = e.user_timeout_ms
        rule = e.rule == 0 ? nil : Int(e.rule) - 1
    }
}

/// The kernel's clocks as the BPF program reads them: jiffies (whose length
/// is the coarse clocks' resolution) and boot time.
struct KernelClock {
    let nanosecondsPerJiffy: UInt64
    let bootToWall: Double

    /// The coarse clocks tick once a jiffy: their resolution is 1/HZ.
    static var nanosecondsPerTick: UInt64 {
        var resolution = timespec()
        clock_getres(CLOCK_MONOTONIC_COARSE, &resolution)
        return max(1, UInt64(resolution.tv_nsec))
    }

    /// HZ, as the BPF program needs it to compare keepalive times.
    static var ticksPerSecond: UInt32 { UInt32(1_000_000_000 / nanosecondsPerTick) }

    init() {
        nanosecondsPerJiffy = Self.nanosecondsPerTick
        var boot = timespec()
        var wall = timespec()
        clock_gettime(CLOCK_BOOTTIME, &boot)
        clock_gettime(CLOCK_REALTIME, &wall)
        bootToWall = Double(wall.tv_sec) + Double(wall.tv_nsec) / 1e9 - Double(boot.tv_sec) - Double(boot.tv_nsec) / 1e9
    }

    func milliseconds(ofJiffies jiffies: UInt32) -> UInt64 {
        UInt64(jiffies) * nanosecondsPerJiffy / 1_000_000
    }

    func wallTime(ofBootNanoseconds ns: UInt64) -> Double {
        bootToWall + Double(ns) / 1e9
    }
}

extension PinnedKernel {
    /// The reaped connections the kernel side keeps, oldest first, numbered
    /// from `after` on. A slot being written (or overwritten while read) is left out.
    func reapedEvents(after: UInt64 = 0) throws -> [ReapedEvent] {
        let capacity = UInt64(KA_EVENTS_MAX)
        let head = try eventsHead.lookup(0) ?? 0
        let first = max(after, head > capacity ? head - capacity : 0)
        guard first < head else { return [] }
        let clock = KernelClock()
        var found: [ReapedEvent] = []
        for sequence in first..<head {
            guard let slot = try events.lookup(UInt32(sequence % capacity)), slot.seq == sequence + 1 else { continue }
            var event = ReapedEvent(slot, clock: clock)
            if let policy = try policies.lookup(slot.policy_cgroup_id).map({ PolicyRecord($0) }) {
                (event.policyPath, event.policyOrigin) = (policy.path, policy.origin)
                event.ruleLabel = try event.rule.map { Rule.label(try readRules(slot.policy_cgroup_id), $0) }
            }
            found.append(event)
        }
        // Slots the program moved past while they were read may hold newer events.
        let now = try eventsHead.lookup(0) ?? head
        return found.filter { now <= capacity || $0.sequence >= now - capacity }
    }

    /// A policy's rules as they are now (none: an empty list).
    private func readRules(_ id: UInt64) throws -> [Rule] {
        try rules.lookup(id).map(RuleSetRecord.rules(of:)) ?? []
    }

    /// The number the next reaped connection will get.
    func reapedEventHead() throws -> UInt64 {
        try eventsHead.lookup(0) ?? 0
    }
}

typealias AddressBytes = (
    UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
    UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8
)

extension ka_socket_id {
    /// "local:port", "remote:port".
    var endpoints: (local: String, remote: String) {
        (
            socketEndpoint(family: family, address: local_addr, port: local_port),
            socketEndpoint(family: family, address: remote_addr, port: remote_port)
        )
    }
}

/// "192.0.2.1:80" or "[2001:db8::1]:80", from the kernel's bytes.
func socketEndpoint(family: UInt32, address: AddressBytes, port: UInt16) -> String {
    var bytes = address
    var text = [UInt8](repeating: 0, count: Int(INET6_ADDRSTRLEN))
    let af = Int32(family)
    _ = withUnsafePointer(to: &bytes) { address in
        text.withUnsafeMutableBufferPointer { buffer in
            buffer.baseAddress!.withMemoryRebound(to: CChar.self, capacity: buffer.count) {
                inet_ntop(af, address, $0, socklen_t(buffer.count))
            }
        }
    }
    let host = String(decoding: text.prefix { $0 != 0 }, as: UTF8.self)
    return af == AF_INET6 ? "[\(host)]:\(port)" : "\(host):\(port)"
}
