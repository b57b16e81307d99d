// SPDX-License-Identifier: MIT
import CLibBPF
import Glibc

/// One idle gap a connection died after (ka_path.deaths).
public struct PathDeath: Equatable, Sendable, Codable {
    public let gapMilliseconds: UInt32
    /// Answered by a reset; else it timed out.
    public let reset: Bool

    init(encoded: UInt32) {
        gapMilliseconds = encoded >> 1
        reset = encoded & KA_PATH_DEATH_RESET != 0
    }

    public init(gapMilliseconds: UInt32, reset: Bool) {
        self.gapMilliseconds = gapMilliseconds
        self.reset = reset
    }
}

/// What was seen of the idle gaps on a path (or on the paths of one prefix,
/// merged): the survivals' longest and count, the deaths' shortest kept.
public struct PathEvidence: Equatable, Sendable {
    public var longestSurvived: UInt32 = 0
    public var survivals: UInt64 = 0
    public var timeouts: UInt64 = 0
    public var resets: UInt64 = 0
    /// The shortest gaps deaths came after, ascending, at most KA_PATH_DEATHS.
    public var deaths: [PathDeath] = []
    /// When the latest evidence came: seconds since the epoch.
    public var lastSeen: Double = 0

    public init() {}

    init(_ record: ka_path, clock: KernelClock = KernelClock()) {
        longestSurvived = record.alive_max_ms
        survivals = UInt64(record.alive_count)
        timeouts = UInt64(record.timeouts)
        resets = UInt64(record.resets)
        deaths = withUnsafeBytes(of: record.deaths) { Array($0.bindMemory(to: UInt32.self)) }
            .filter { $0 != 0 }.map(PathDeath.init(encoded:))
        lastSeen = clock.wallTime(ofBootNanoseconds: record.last_boot_ns)
    }

    /// Two paths' evidence as one (a prefix's): the shortest deaths of both kept.
    public mutating func merge(_ other: PathEvidence) {
        longestSurvived = max(longestSurvived, other.longestSurvived)
        survivals += other.survivals
        timeouts += other.timeouts
        resets += other.resets
        deaths = Array(
            (deaths + other.deaths).sorted { $0.gapMilliseconds < $1.gapMilliseconds }
                .prefix(Int(KA_PATH_DEATHS))
        )
        lastSeen = max(lastSeen, other.lastSeen)
    }

    /// The limit's bounds: it is above `survived` and at most `died`.
    /// A death after a gap no longer than one survived is not the path's
    /// idle limit (the peer restarted, or the network failed): counted in
    /// `notIdle`, and left out.
    public var bounds: PathBounds {
        let survived = survivals > 0 ? longestSurvived : nil
        let idle = deaths.filter { $0.gapMilliseconds > (survived ?? 0) }
        return PathBounds(survived: survived, died: idle.first, notIdle: deaths.count - idle.count)
    }
}

/// The bounds of a path's idle limit, in milliseconds: (survived, died].
public struct PathBounds: Equatable, Sendable {
    /// The longest idle gap connections survived; nil: none seen.
    public let survived: UInt32?
    /// The shortest idle gap above it a connection died after; nil: none seen.
    public let died: PathDeath?
    /// Deaths kept that came after gaps no longer than one survived.
    public let notIdle: Int
}

/// Whether a policy's idle time keeps a path's connections alive.
public enum PathVerdict: Equatable, Sendable {
    /// Its keepalive probes come sooner than a gap connections survived.
    case below
    /// Connections died after idle gaps no longer than it: `lowerBelow` ms.
    case above(lowerBelow: UInt32)
    /// Between the bounds, or not enough of them.
    case unknown
    /// The policy leaves these connections' keepalive alone (a rule's keepalive: off).
    case off

    public var key: String {
        switch self {
        case .below: "below"
        case .above: "above"
        case .unknown: "not enough evidence"
        case .off: "keepalive off"
        }
    }

    /// How late the kernel may send a keepalive probe, as a share of the
    /// idle time: its timer wheel fires a timeout up to an eighth late (a
    /// level's granularity is an eighth of its shortest timeout). A policy
    /// of idle time I probes after gaps of I to I * 9/8.
    public static func latestProbe(idleMilliseconds idle: UInt64) -> UInt64 { idle + idle / 8 }

    /// The verdict for an idle time of `idleSeconds` against `bounds`: above
    /// when its probes may come after a gap connections died after, below
    /// when it is no longer than a gap they survived (its own probes' gaps,
    /// late as they are, when it was in force).
    public init(idleSeconds: Int32?, bounds: PathBounds) {
        guard let idleSeconds else {
            self = .off
            return
        }
        let idle = UInt64(idleSeconds) * 1000
        if let died = bounds.died, Self.latestProbe(idleMilliseconds: idle) >= UInt64(died.gapMilliseconds) {
            self = .above(lowerBelow: died.gapMilliseconds)
        } else if let survived = bounds.survived, idle <= UInt64(survived) {
            self = .below
        } else {
            self = .unknown
        }
    }
}

/// A path as `keepalive paths` names it: a policy's cgroup, a remote block
/// (one address unless merged into a prefix) and the service's port.
public struct PathKey: Hashable, Sendable {
    public let policyCgroupID: UInt64
    public let remote: CIDR
    public let port: UInt16
    /// Connections accepted on local `port`; else made to remote `port`.
    public let accepted: Bool

    init(_ key: ka_path_key) {
        policyCgroupID = key.policy_cgroup_id
        remote = CIDR(address: withUnsafeBytes(of: key.remote_addr) { Array($0) })
        port = key.port
        accepted = key.accepted != 0
    }

    init(policyCgroupID: UInt64, remote: CIDR, port: UInt16, accepted: Bool) {
        self.policyCgroupID = policyCgroupID
        self.remote = remote
        self.port = port
        self.accepted = accepted
    }

    /// The same path with its remote cut to a prefix (IPv4 and IPv6 lengths apart).
    public func merged(ipv4Prefix: Int, ipv6Prefix: Int) -> PathKey {
        let prefix = remote.isIPv4 ? 96 + ipv4Prefix : ipv6Prefix
        let block = CIDR(network: CIDR.masked(remote.network, prefix), prefix: prefix, isIPv4: remote.isIPv4)
        return PathKey(policyCgroupID: policyCgroupID, remote: block, port: port, accepted: accepted)
    }

    /// "10.20.0.0/16:5432" for connections made; "10.20.0.0/16 -> :8080" for accepted ones.
    public var display: String {
        let block = remote.prefix == 128 ? remote.addressText : remote.description
        let bracketed = !remote.isIPv4 && remote.prefix == 128 ? "[\(block)]" : block
        return accepted ? "\(bracketed) -> :\(port)" : "\(bracketed):\(port)"
    }

    /// The idle time `policy` gives these connections: its matching rule's,
    /// else its own (nil: keepalive off). A made connection's local port and
    /// an accepted one's remote port are ephemeral: no rule lists them.
    public func idleSeconds(under policy: Policy, systemDefault: Int32) -> Int32? {
        let rule = policy.rules.first {
            $0.matches(remote: remote.network, remotePort: accepted ? 0 : port, localPort: accepted ? port : 0)
        }
        if let rule, rule.off { return nil }
        let keepidle = rule.map { $0.values(under: policy).keepidle } ?? policy.keepidle
        return keepidle == 0 ? systemDefault : keepidle
    }
}

extension PinnedKernel {
    /// Every path observed, by the kernel's record.
    func observedPaths() throws -> [(key: PathKey, evidence: PathEvidence)] {
        let clock = KernelClock()
        return try paths.entries().map { (PathKey($0.key), PathEvidence($0.value, clock: clock)) }
    }
}

/// One line of `keepalive paths`: a path (or prefix), what was seen on it,
/// and what the policy in force there makes of it.
public struct PathReport: Sendable {
    public let key: PathKey
    public let evidence: PathEvidence
    public let bounds: PathBounds
    /// The idle time the policy (its matching rule) gives; nil: keepalive off.
    public let idleSeconds: Int32?
    public let verdict: PathVerdict

    /// Every path of the given policies, merged to the prefixes, sorted by cgroup id then remote.
    public static func reports(
        _ observed: [(key: PathKey, evidence: PathEvidence)],
        policies: [UInt64: Policy],
        ipv4Prefix: Int = 32,
        ipv6Prefix: Int = 128,
        systemKeepidle: Int32
    ) -> [PathReport] {
        var merged: [PathKey: PathEvidence] = [:]
        for (key, evidence) in observed where policies[key.policyCgroupID] != nil {
            merged[key.merged(ipv4Prefix: ipv4Prefix, ipv6Prefix: ipv6Prefix), default: PathEvidence()]
                .merge(evidence)
        }
        return merged.map { key, evidence in
            let idle = key.idleSeconds(under: policies[key.policyCgroupID]!, systemDefault: systemKeepidle)
            let bounds = evidence.bounds
            return PathReport(
                key: key,
                evidence: evidence,
                bounds: bounds,
                idleSeconds: idle,
                verdict: PathVerdict(idleSeconds: idle, bounds: bounds)
            )
        }.sorted { a, b in
            if a.key.policyCgroupID != b.key.policyCgroupID { return a.key.policyCgroupID < b.key.policyCgroupID }
            if a.key.remote.network != b.key.remote.network {
                return a.key.remote.network.lexicographicallyPrecedes(b.key.remote.network)
            }
            return (a.key.port, a.key.accepted ? 1 : 0) < (b.key.port, b.key.accepted ? 1 : 0)
        }
    }

    /// This network namespace's default idle time (seconds), for policies
    /// that leave keepidle at 0; the kernel's when it cannot be read.
    public static func namespaceKeepidle() -> Int32 {
        guard let file = fopen("/proc/sys/net/ipv4/tcp_keepalive_time", "r") else { return KA_KERNEL_KEEPIDLE }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 32)
        guard fgets(&line, Int32(line.count), file) != nil,
            let value = Int32(String(decoding: line.prefix { $0 != 0 && $0 != 10 }.map { UInt8($0) }, as: UTF8.self))
        else { return KA_KERNEL_KEEPIDLE }
        return value
    }

    /// An idle time below the limit to suggest when the policy's is above
    /// it: half the shortest gap connections died after (the usual margin),
    /// or the longest they survived if that is more, its late probes still
    /// short of the deaths, and at least a second.
    public var suggestedKeepidle: Int32? {
        guard case .above(let died) = verdict else { return nil }
        var seconds = max(Int32(died / 2000), Int32((bounds.survived ?? 0) / 1000))
        while seconds > 1 && PathVerdict.latestProbe(idleMilliseconds: UInt64(seconds) * 1000) >= UInt64(died) {
            seconds -= 1
        }
        return max(1, seconds)
    }

    /// The rule that gives these connections the suggested idle time.
    public var suggestedRule: String? {
        suggestedKeepidle.map { keepidle in
            let block = key.remote.prefix == 128 ? key.remote.addressText : key.remote.description
            let ports = key.accepted ? "\(Rule.localPortsKey)=\(key.port)" : "\(Rule.remotePortsKey)=\(key.port)"
            return "\(Rule.remoteKey)=\(block),\(ports),\(PolicyOption.keepidle.key)=\(keepidle)"
        }
    }
}
