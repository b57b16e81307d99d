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
    /// Rules by destination, tried in order; the values above apply where none matches.
    public var rules: [Rule] = []
    /// What the policy does with its connections: sets their options, observes their paths too, or only observes.
    public var observation = Observation.none

    /// Whether a policy watches its connections' idle gaps (ka_paths), and whether it also sets their options.
    public enum Observation: Equatable, Hashable, Sendable {
        /// Sets the options; observes nothing.
        case none
        /// Sets the options and observes paths (`observe_paths`).
        case paths
        /// Sets nothing: counts the sockets it would set and observes paths (`observe`).
        case only

        public static let onlyKey = KA_OBSERVE_KEY
        public static let pathsKey = KA_OBSERVE_PATHS_KEY

        /// From the two switches of flags and files; `observe` implies observing paths.
        public init(only: Bool, paths: Bool) {
            self = only ? .only : paths ? .paths : .none
        }

        public var observesPaths: Bool { self != .none }
        /// In `status`: "-", "paths" (and sets), "only" (sets nothing).
        public var name: String {
            switch self {
            case .none: "-"
            case .paths: "paths"
            case .only: "only"
            }
        }
        public var setsOptions: Bool { self != .only }

        var flags: UInt32 {
            switch self {
            case .none: 0
            case .paths: KA_POLICY_OBSERVE_PATHS
            case .only: KA_POLICY_OBSERVE_PATHS | KA_POLICY_OBSERVE_ONLY
            }
        }

        init(flags: UInt32) {
            self =
                flags & KA_POLICY_OBSERVE_ONLY != 0 ? .only : flags & KA_POLICY_OBSERVE_PATHS != 0 ? .paths : .none
        }

        /// " observe" or " observe_paths", as summaries end.
        var summary: String {
            switch self {
            case .none: ""
            case .paths: " \(Self.pathsKey)"
            case .only: " \(Self.onlyKey)"
            }
        }
    }

    public init() {}

    /// A policy from already-validated values; options not given keep their defaults.
    public init(
        _ values: [PolicyOption: Int32],
        precedence: Precedence = .application,
        rules: [Rule] = [],
        observation: Observation = .none
    ) {
        for (option, value) in values { self[option] = value }
        self.precedence = precedence
        self.rules = rules
        self.observation = observation
    }

    public subscript(option: PolicyOption) -> Int32 {
        get { self[keyPath: option.definition.field] }
        set { self[keyPath: option.definition.field] = newValue }
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
        option == .userTimeout && derivesUserTimeout
            ? "\(effectiveUserTimeout)\(separator)\(Self.derivedMark)" : "\(self[option])"
    }

    /// "keepidle=15 keepintvl=15 keepcnt=9 user_timeout=150000(derived)" and the rest when set.
    public var summary: String {
        valuesSummary + (precedence == .policy ? " \(Precedence.key)=\(precedence.name)" : "")
            + (rules.isEmpty ? "" : " " + rules.map { "rule=[\($0.summary)]" }.joined(separator: " "))
            + observation.summary
    }

    /// The option values alone, as `summary` shows them.
    public var valuesSummary: String {
        PolicyOption.allCases.filter { $0.alwaysShown || self[$0] != 0 }
            .map { "\($0.key)=\(shown($0))" }.joined(separator: " ")
    }

    /// The values as the BPF program reads them (user timeout resolved).
    var encodedValues: ka_values {
        ka_values(
            keepidle: keepidle,
            keepintvl: keepintvl,
            keepcnt: keepcnt,
            user_timeout: effectiveUserTimeout,
            syncnt: syncnt,
            maxseg: maxseg,
            window_clamp: windowClamp
        )
    }

    /// Values read back from a record; `derived` says the user timeout was.
    mutating func setValues(_ values: ka_values, derivedUserTimeout derived: Bool) {
        keepidle = values.keepidle
        keepintvl = values.keepintvl
        keepcnt = values.keepcnt
        userTimeout = derived ? KA_USER_TIMEOUT_DERIVED : values.user_timeout
        syncnt = values.syncnt
        maxseg = values.maxseg
        windowClamp = values.window_clamp
    }
}

/// A policy in force on one cgroup: the Swift view of `struct ka_policy`.
public struct PolicyRecord: Equatable, Sendable {
    public var policy: Policy
    public var owner: PolicyOwner
    /// The cgroup's path below the cgroup2 mount.
    public var path: FilePath
    /// Where its counters are (its key in ka_counters_v4): unique among the policies.
    public var slot: UInt32
    /// The pod or container it was set for, if it was.
    public var origin: Origin
    /// Where its rules' counters are (ka_rule_counters_v4), when it has rules: unique among them.
    public var ruleSlot: UInt32
    /// The record says it has rules, but ka_rules holds none for it (an outside hand).
    public var rulesMissing = false
    /// With rulesMissing: the rule slot the record names, where the programs
    /// may still read a set. Read from the kernel, never written.
    public var orphanedRuleSlot: UInt32?
    /// The programs may not read these rules at its rule slot: an older
    /// binary wrote the record, or a run was killed while writing them
    /// (ka_rules' mark). Read from the kernel, never written.
    public var rulesStale = false

    public init(
        policy: Policy,
        owner: PolicyOwner,
        path: FilePath,
        slot: UInt32 = 0,
        origin: Origin = .none,
        ruleSlot: UInt32 = 0
    ) {
        self.policy = policy
        self.owner = owner
        self.path = path
        self.slot = slot
        self.origin = origin
        self.ruleSlot = ruleSlot
    }

    /// A record as pinned, with its rules and their slot as ka_rules holds
    /// them (nil: none there).
    public init(_ record: ka_policy, rules: (rules: [Rule], slot: UInt32)? = nil) {
        var policy = Policy()
        policy.setValues(record.values, derivedUserTimeout: record.flags & KA_POLICY_USER_TIMEOUT_DERIVED != 0)
        policy.precedence = record.flags & KA_POLICY_PRECEDENCE_POLICY != 0 ? .policy : .application
        policy.observation = Policy.Observation(flags: record.flags)
        self.policy = policy
        owner = record.flags & KA_POLICY_AGENT != 0 ? .agent : .cli
        slot = record.slot
        path = withUnsafeBytes(of: record.path) { raw in
            FilePath(platformString: raw.prefix { $0 != 0 }.map { CChar(bitPattern: $0) } + [0])
        }
        origin = Origin(record.origin)
        ruleSlot = 0
        if record.flags & KA_POLICY_HAS_RULES != 0 {
            if let rules {
                self.policy.rules = rules.rules
                ruleSlot = rules.slot
            } else {
                rulesMissing = true
                if record.flags & KA_POLICY_RULES_AT_SLOT != 0 {
                    orphanedRuleSlot = record.flags >> KA_POLICY_RULE_SLOT_SHIFT
                }
            }
        }
    }

    /// The record the BPF program reads (user timeout resolved).
    public func encoded() throws(PolicyError) -> ka_policy {
        var flags = owner == .agent ? KA_POLICY_AGENT : 0
        if policy.derivesUserTimeout { flags |= KA_POLICY_USER_TIMEOUT_DERIVED }
        if policy.precedence == .policy { flags |= KA_POLICY_PRECEDENCE_POLICY }
        if !policy.rules.isEmpty {
            flags |= KA_POLICY_HAS_RULES | KA_POLICY_RULES_AT_SLOT | ruleSlot << KA_POLICY_RULE_SLOT_SHIFT
        }
        flags |= policy.observation.flags
        var record = ka_policy()
        record.values = policy.encodedValues
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

    /// The rule set the BPF program reads, for a policy with rules.
    public var encodedRules: ka_rule_set? {
        policy.rules.isEmpty ? nil : RuleSetRecord.encode(policy.rules, under: policy, slot: ruleSlot)
    }

    /// Same policy, owner, cgroup and origin: writing it again would change nothing (its slots are bookkeeping).
    public func sameSettings(as other: PolicyRecord) -> Bool {
        policy == other.policy && owner == other.owner && path == other.path && origin == other.origin
            && rulesMissing == other.rulesMissing && rulesStale == other.rulesStale
    }
}
