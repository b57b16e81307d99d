// SPDX-License-Identifier: MIT
import CLibBPF
import struct SystemPackage.FilePath

/// Who set a policy: the agent reconciles only its own, and leaves the CLI's alone.
public enum PolicyOwner: String, Codable, Sendable {
    case cli, agent
}

/// Who wins when a program sets keepalive options itself.
public enum Precedence: CaseIterable, Codable, Sendable {
    /// The policy is the default; the program may change it later (Go, Java, drivers do).
    case application
    /// The program's own keepalive setsockopt calls get the policy's values (and still succeed).
    case policy

    public static let key = KA_PRECEDENCE_KEY

    /// The name in files, flags and output (bpf/keepalive_policy.h).
    public var name: String {
        switch self {
        case .application: KA_PRECEDENCE_APPLICATION
        case .policy: KA_PRECEDENCE_POLICY
        }
    }

    public init(parsing text: String) throws(PolicyError) {
        guard let value = Self.allCases.first(where: { $0.name == text }) else { throw .badPrecedence(text) }
        self = value
    }

    public init(from decoder: Decoder) throws {
        self = try Precedence(parsing: decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(name)
    }
}

/// The keepalive settings for one cgroup, as the user gave them.
/// 0 leaves the system default; userTimeout KA_USER_TIMEOUT_DERIVED derives it from the others.
public struct Policy: Equatable, Hashable, Sendable {
    public var keepidle = PolicyOption.keepidle.defaultValue
    public var keepintvl = PolicyOption.keepintvl.defaultValue
    public var keepcnt = PolicyOption.keepcnt.defaultValue
    public var userTimeout = PolicyOption.userTimeout.defaultValue
    public var syncnt = PolicyOption.syncnt.defaultValue
    public var maxseg = PolicyOption.maxseg.defaultValue
    public var windowClamp = PolicyOption.windowClamp.defaultValue
    public var precedence = Precedence.application

    public init() {}

    /// A policy from already-validated values; options not given keep their defaults.
    public init(_ values: [PolicyOption: Int32], precedence: Precedence = .application) {
        for (option, value) in values { self[option] = value }
        self.precedence = precedence
    }

    public subscript(option: PolicyOption) -> Int32 {
        get {
            switch option {
            case .keepidle: keepidle
            case .keepintvl: keepintvl
            case .keepcnt: keepcnt
            case .userTimeout: userTimeout
            case .syncnt: syncnt
            case .maxseg: maxseg
            case .windowClamp: windowClamp
            }
        }
        set {
            switch option {
            case .keepidle: keepidle = newValue
            case .keepintvl: keepintvl = newValue
            case .keepcnt: keepcnt = newValue
            case .userTimeout: userTimeout = newValue
            case .syncnt: syncnt = newValue
            case .maxseg: maxseg = newValue
            case .windowClamp: windowClamp = newValue
            }
        }
    }

    public var derivesUserTimeout: Bool { userTimeout == KA_USER_TIMEOUT_DERIVED }

    /// The user timeout in force: for KA_USER_TIMEOUT_DERIVED, derived by the header's ka_derived_user_timeout.
    public var effectiveUserTimeout: Int32 {
        derivesUserTimeout ? ka_derived_user_timeout(keepidle, keepintvl, keepcnt) : userTimeout
    }

    /// Marks a user timeout that was derived from the other values.
    public static let derivedMark = "(derived)"

    /// An option's value as it is in force, for people: the derived user timeout spelled out.
    public func shown(_ option: PolicyOption, separator: String = "") -> String {
        option == .userTimeout && derivesUserTimeout ? "\(effectiveUserTimeout)\(separator)\(Self.derivedMark)" : "\(self[option])"
    }

    /// "keepidle=15 keepintvl=15 keepcnt=9 user_timeout=150000(derived)" and the rest when set.
    public var summary: String {
        let shownOptions = PolicyOption.allCases.filter { $0.alwaysShown || self[$0] != 0 }
        return shownOptions.map { "\($0.key)=\(shown($0))" }.joined(separator: " ")
            + (precedence == .policy ? " \(Precedence.key)=\(precedence.name)" : "")
    }
}

/// A policy in force on one cgroup: the Swift view of `struct ka_policy`.
public struct PolicyRecord: Equatable, Sendable {
    public var policy: Policy
    public var owner: PolicyOwner
    /// The cgroup's path below the cgroup2 mount.
    public var path: FilePath
    /// Where its counters are (ka_counters): unique among the policies.
    public var slot: UInt32
    /// The pod or container it was set for, if it was.
    public var origin: Origin

    public init(policy: Policy, owner: PolicyOwner, path: FilePath, slot: UInt32 = 0, origin: Origin = .none) {
        self.policy = policy
        self.owner = owner
        self.path = path
        self.slot = slot
        self.origin = origin
    }

    public init(_ record: ka_policy) {
        var policy = Policy()
        policy.keepidle = record.keepidle
        policy.keepintvl = record.keepintvl
        policy.keepcnt = record.keepcnt
        policy.userTimeout = record.flags & KA_POLICY_USER_TIMEOUT_DERIVED != 0 ? KA_USER_TIMEOUT_DERIVED : record.user_timeout
        policy.syncnt = record.syncnt
        policy.maxseg = record.maxseg
        policy.windowClamp = record.window_clamp
        policy.precedence = record.flags & KA_POLICY_PRECEDENCE_POLICY != 0 ? .policy : .application
        self.policy = policy
        owner = record.flags & KA_POLICY_AGENT != 0 ? .agent : .cli
        slot = record.slot
        path = withUnsafeBytes(of: record.path) { raw in
            FilePath(platformString: raw.prefix { $0 != 0 }.map { CChar(bitPattern: $0) } + [0])
        }
        origin = Origin(record.origin)
    }

    /// The record the BPF program reads (user timeout resolved).
    public func encoded() throws(PolicyError) -> ka_policy {
        var flags = owner == .agent ? KA_POLICY_AGENT : 0
        if policy.derivesUserTimeout { flags |= KA_POLICY_USER_TIMEOUT_DERIVED }
        if policy.precedence == .policy { flags |= KA_POLICY_PRECEDENCE_POLICY }
        var record = ka_policy()
        record.keepidle = policy.keepidle
        record.keepintvl = policy.keepintvl
        record.keepcnt = policy.keepcnt
        record.user_timeout = policy.effectiveUserTimeout
        record.syncnt = policy.syncnt
        record.maxseg = policy.maxseg
        record.window_clamp = policy.windowClamp
        record.flags = flags
        record.slot = slot
        let bytes = path.withPlatformString { Array(UnsafeBufferPointer(start: $0, count: strlen($0))) }
        guard bytes.count < Int(KA_CGROUP_PATH_MAX) else { throw .pathTooLong(path.cgroupDisplay) }
        withUnsafeMutableBytes(of: &record.path) { raw in
            for (index, byte) in bytes.enumerated() { raw[index] = UInt8(bitPattern: byte) }
        }
        record.origin = origin.encoded
        return record
    }

    /// Same policy, owner, cgroup and origin: writing it again would change nothing (its slot is bookkeeping).
    public func sameSettings(as other: PolicyRecord) -> Bool {
        policy == other.policy && owner == other.owner && path == other.path && origin == other.origin
    }
}
