// SPDX-License-Identifier: MIT
import CLibBPF

/// The options a policy sets. Names, defaults and ranges come from
/// bpf/keepalive_policy.h, the one place they are defined.
public enum PolicyOption: String, CaseIterable, Sendable {
    case keepidle, keepintvl, keepcnt, userTimeout, syncnt, maxseg, windowClamp

    /// Key in the agent's YAML and in JSON output.
    public var key: String {
        switch self {
        case .keepidle: KA_KEEPIDLE_KEY
        case .keepintvl: KA_KEEPINTVL_KEY
        case .keepcnt: KA_KEEPCNT_KEY
        case .userTimeout: KA_USER_TIMEOUT_KEY
        case .syncnt: KA_SYNCNT_KEY
        case .maxseg: KA_MAXSEG_KEY
        case .windowClamp: KA_WINDOW_CLAMP_KEY
        }
    }

    /// The preload libraries' environment variable for it.
    public var environmentVariable: String {
        switch self {
        case .keepidle: KA_KEEPIDLE_ENV
        case .keepintvl: KA_KEEPINTVL_ENV
        case .keepcnt: KA_KEEPCNT_ENV
        case .userTimeout: KA_USER_TIMEOUT_ENV
        case .syncnt: KA_SYNCNT_ENV
        case .maxseg: KA_MAXSEG_ENV
        case .windowClamp: KA_WINDOW_CLAMP_ENV
        }
    }

    /// The option's index in the BPF program's error counters (enum ka_bpf_option).
    var bpfOption: ka_bpf_option {
        switch self {
        case .keepidle: KA_OPT_KEEPIDLE
        case .keepintvl: KA_OPT_KEEPINTVL
        case .keepcnt: KA_OPT_KEEPCNT
        case .userTimeout: KA_OPT_USER_TIMEOUT
        case .syncnt: KA_OPT_SYNCNT
        case .maxseg: KA_OPT_MAXSEG
        case .windowClamp: KA_OPT_WINDOW_CLAMP
        }
    }

    public var defaultValue: Int32 {
        switch self {
        case .keepidle: KA_KEEPIDLE_DEFAULT
        case .keepintvl: KA_KEEPINTVL_DEFAULT
        case .keepcnt: KA_KEEPCNT_DEFAULT
        case .userTimeout: KA_USER_TIMEOUT_DEFAULT
        case .syncnt: KA_SYNCNT_DEFAULT
        case .maxseg: KA_MAXSEG_DEFAULT
        case .windowClamp: KA_WINDOW_CLAMP_DEFAULT
        }
    }

    /// Accepted values besides 0 (the system default).
    public var range: ClosedRange<Int64> {
        switch self {
        case .keepidle: Int64(KA_KEEPIDLE_MIN)...Int64(KA_KEEPIDLE_MAX)
        case .keepintvl: Int64(KA_KEEPINTVL_MIN)...Int64(KA_KEEPINTVL_MAX)
        case .keepcnt: Int64(KA_KEEPCNT_MIN)...Int64(KA_KEEPCNT_MAX)
        case .userTimeout: Int64(KA_USER_TIMEOUT_MIN)...Int64(KA_USER_TIMEOUT_MAX)
        case .syncnt: Int64(KA_SYNCNT_MIN)...Int64(KA_SYNCNT_MAX)
        case .maxseg: Int64(KA_MAXSEG_MIN)...Int64(KA_MAXSEG_MAX)
        case .windowClamp: Int64(KA_WINDOW_CLAMP_MIN)...Int64(KA_WINDOW_CLAMP_MAX)
        }
    }

    /// The keepalive options are always listed; the others only when set.
    var alwaysShown: Bool {
        switch self {
        case .keepidle, .keepintvl, .keepcnt, .userTimeout: true
        case .syncnt, .maxseg, .windowClamp: false
        }
    }

    /// Its column in tables (status, inspect).
    public var column: String {
        switch self {
        case .keepidle: "IDLE"
        case .keepintvl: "INTVL"
        case .keepcnt: "CNT"
        case .userTimeout: "USER_TIMEOUT"
        case .syncnt: "SYNCNT"
        case .maxseg: "MAXSEG"
        case .windowClamp: "CLAMP"
        }
    }

    /// What the option does, for help texts.
    public var meaning: String {
        switch self {
        case .keepidle: "Idle time before the first keepalive probe"
        case .keepintvl: "Time between keepalive probes"
        case .keepcnt: "Unanswered probes before the connection is dropped"
        case .userTimeout: "How long sent data may stay unacknowledged; \(KA_USER_TIMEOUT_DERIVED) derives (idle + intvl * cnt) s"
        case .syncnt: "SYN retransmissions on connect"
        case .maxseg: "Maximum segment size on connect"
        case .windowClamp: "Clamp of the advertised window"
        }
    }

    /// One line of help: meaning, accepted values and unit, default.
    public var help: String {
        "\(meaning) (0 = system default, or \(rangeText) \(unit); default \(defaultValue))."
    }

    public var unit: String {
        switch self {
        case .keepidle, .keepintvl: "seconds"
        case .keepcnt, .syncnt: "count"
        case .userTimeout: "milliseconds"
        case .maxseg, .windowClamp: "bytes"
        }
    }

    var rangeText: String {
        self == .userTimeout ? "\(KA_USER_TIMEOUT_DERIVED) to derive, or 1..\(range.upperBound)"
            : "\(range.lowerBound)..\(range.upperBound)"
    }

    /// Checks a value against the kernel's range.
    public func validate(_ value: Int64) throws(PolicyError) -> Int32 {
        guard value == 0 || range.contains(value) else { throw .outOfRange(option: self, value: String(value)) }
        return Int32(value)
    }

    /// Parses and checks a textual value (a CLI flag's).
    public func parse(_ text: String) throws(PolicyError) -> Int32 {
        guard let value = Int64(text) else { throw .notANumber(option: self, value: text) }
        return try validate(value)
    }
}

public enum PolicyError: Error, CustomStringConvertible, Equatable {
    case notANumber(option: PolicyOption, value: String)
    case outOfRange(option: PolicyOption, value: String)
    case badPrecedence(String)
    case pathTooLong(String)

    /// The problem with the value, without naming where it came from (the
    /// caller names it: a YAML key and line, a CLI flag).
    public var problem: String {
        switch self {
        case let .notANumber(_, value):
            "'\(value)' is not a whole number"
        case let .outOfRange(option, value):
            "\(value) is out of range (0 for the system default, or \(option.rangeText) \(option.unit))"
        case let .badPrecedence(value):
            "'\(value)' is neither '\(Precedence.application.name)' nor '\(Precedence.policy.name)'"
        case let .pathTooLong(path):
            "the cgroup path '\(path)' is longer than \(KA_CGROUP_PATH_MAX - 1) bytes, the most a policy can record"
        }
    }

    public var description: String {
        switch self {
        case let .notANumber(option, _), let .outOfRange(option, _): "\(option.key): \(problem)"
        case .badPrecedence: "\(Precedence.key): \(problem)"
        case .pathTooLong: problem
        }
    }
}
