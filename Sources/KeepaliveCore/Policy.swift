import CLibBPF

/// Who set a policy: the agent reconciles only its own, and leaves the CLI's alone.
public enum PolicyOwner: String, Sendable {
    case cli, agent

    init(record: ka_policy) { self = record.flags & KA_POLICY_AGENT != 0 ? .agent : .cli }
}

/// Who wins when a program sets keepalive options itself.
public enum Precedence: String, CaseIterable, Sendable {
    /// The policy is the default; the program may change it later (Go, Java, drivers do).
    case application = "application"  // KA_PRECEDENCE_APPLICATION
    /// The program's own keepalive setsockopt calls get the policy's values (and still succeed).
    case policy = "policy"            // KA_PRECEDENCE_POLICY

    public static let key = KA_PRECEDENCE_KEY

    public init(parsing text: String) throws(PolicyError) {
        guard let value = Precedence(rawValue: text) else { throw .badPrecedence(text) }
        self = value
    }
}

/// The keepalive settings for one cgroup, as the user gave them.
/// 0 leaves the system default; userTimeout -1 derives it from the others.
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

    /// The user timeout in force: for -1, derived by the header's ka_derived_user_timeout.
    public var effectiveUserTimeout: Int32 {
        guard userTimeout == KA_USER_TIMEOUT_DERIVED else { return userTimeout }
        return ka_derived_user_timeout(keepidle, keepintvl, keepcnt)
    }

    /// The record the BPF program reads (user timeout resolved).
    public func record(slot: UInt32, owner: PolicyOwner = .cli,
                       generation: UInt32 = .random(in: 1...UInt32.max)) -> ka_policy {
        var flags = owner == .agent ? KA_POLICY_AGENT : 0
        if userTimeout == KA_USER_TIMEOUT_DERIVED { flags |= KA_POLICY_USER_TIMEOUT_DERIVED }
        if precedence == .policy { flags |= KA_POLICY_PRECEDENCE_POLICY }
        return ka_policy(keepidle: keepidle, keepintvl: keepintvl, keepcnt: keepcnt,
                         user_timeout: effectiveUserTimeout, syncnt: syncnt, maxseg: maxseg,
                         window_clamp: windowClamp, flags: flags, slot: slot, generation: generation)
    }

    /// The policy a record was made from.
    public init(record: ka_policy) {
        keepidle = record.keepidle
        keepintvl = record.keepintvl
        keepcnt = record.keepcnt
        userTimeout = record.flags & KA_POLICY_USER_TIMEOUT_DERIVED != 0
            ? KA_USER_TIMEOUT_DERIVED : record.user_timeout
        syncnt = record.syncnt
        maxseg = record.maxseg
        windowClamp = record.window_clamp
        precedence = record.flags & KA_POLICY_PRECEDENCE_POLICY != 0 ? .policy : .application
    }
}

extension Policy {
    /// "keepidle=15 keepintvl=15 keepcnt=9 user_timeout=150000(derived)" and the rest when set.
    public var summary: String {
        PolicyOption.allCases.compactMap { option -> String? in
            let value = self[option]
            switch option {
            case .userTimeout:
                return "\(option.key)=\(effectiveUserTimeout)" + (value == KA_USER_TIMEOUT_DERIVED ? "(derived)" : "")
            case .syncnt, .maxseg, .windowClamp:
                return value == 0 ? nil : "\(option.key)=\(value)"
            default:
                return "\(option.key)=\(value)"
            }
        }.joined(separator: " ") + (precedence == .policy ? " precedence=policy" : "")
    }
}
