// SPDX-License-Identifier: MIT
import CLibBPF

/// The options a policy sets. Each is defined once, in `definition`: its
/// names (policy key, CLI flag, environment variable, table column), its
/// kernel constant, range, unit and default. Those constants come from
/// bpf/keepalive_policy.h, shared with the BPF program and the preload
/// libraries. docs/extending.md lists the other places a new option touches.
public enum PolicyOption: String, CaseIterable, Sendable {
    case keepidle, keepintvl, keepcnt, userTimeout, syncnt, maxseg, windowClamp

    /// Everything about one option.
    public struct Definition: Sendable {
        /// Key in the agent's YAML and in JSON output; the CLI flag is made from it.
        public let key: String
        /// The preload libraries' environment variable.
        public let environmentVariable: String
        /// Its index in the BPF program's error counters and a rule's `given` bits.
        let bpfOption: ka_bpf_option
        public let defaultValue: Int32
        /// Accepted values besides 0 (the system default).
        public let range: ClosedRange<Int64>
        public let unit: Unit
        /// Its column in tables (status, inspect).
        public let column: String
        /// The keepalive options are always listed; the others only when set.
        let alwaysShown: Bool
        /// What the option does, for help texts.
        public let meaning: String
        /// Where a Policy keeps it.
        let field: WritableKeyPath<Policy, Int32> & Sendable
    }

    public enum Unit: String, Sendable {
        case seconds, count, milliseconds, bytes

        /// The value's name in the CLI's help.
        public var valueName: String {
            switch self {
            case .seconds: "s"
            case .count: "n"
            case .milliseconds: "ms"
            case .bytes: "bytes"
            }
        }
    }

    public var definition: Definition {
        switch self {
        case .keepidle:
            Definition(
                key: KA_KEEPIDLE_KEY,
                environmentVariable: KA_KEEPIDLE_ENV,
                bpfOption: KA_OPT_KEEPIDLE,
                defaultValue: KA_KEEPIDLE_DEFAULT,
                range: Self.range(KA_KEEPIDLE_MIN, KA_KEEPIDLE_MAX),
                unit: .seconds,
                column: "IDLE",
                alwaysShown: true,
                meaning: "Idle time before the first keepalive probe",
                field: \.keepidle
            )
        case .keepintvl:
            Definition(
                key: KA_KEEPINTVL_KEY,
                environmentVariable: KA_KEEPINTVL_ENV,
                bpfOption: KA_OPT_KEEPINTVL,
                defaultValue: KA_KEEPINTVL_DEFAULT,
                range: Self.range(KA_KEEPINTVL_MIN, KA_KEEPINTVL_MAX),
                unit: .seconds,
                column: "INTVL",
                alwaysShown: true,
                meaning: "Time between keepalive probes",
                field: \.keepintvl
            )
        case .keepcnt:
            Definition(
                key: KA_KEEPCNT_KEY,
                environmentVariable: KA_KEEPCNT_ENV,
                bpfOption: KA_OPT_KEEPCNT,
                defaultValue: KA_KEEPCNT_DEFAULT,
                range: Self.range(KA_KEEPCNT_MIN, KA_KEEPCNT_MAX),
                unit: .count,
                column: "CNT",
                alwaysShown: true,
                meaning: "Unanswered probes before the connection is dropped",
                field: \.keepcnt
            )
        case .userTimeout:
            Definition(
                key: KA_USER_TIMEOUT_KEY,
                environmentVariable: KA_USER_TIMEOUT_ENV,
                bpfOption: KA_OPT_USER_TIMEOUT,
                defaultValue: KA_USER_TIMEOUT_DEFAULT,
                range: Self.range(KA_USER_TIMEOUT_MIN, KA_USER_TIMEOUT_MAX),
                unit: .milliseconds,
                column: "USER_TIMEOUT",
                alwaysShown: true,
                meaning:
                    "How long sent data may stay unacknowledged; \(KA_USER_TIMEOUT_DERIVED) derives (idle + intvl * cnt) s",
                field: \.userTimeout
            )
        case .syncnt:
            Definition(
                key: KA_SYNCNT_KEY,
                environmentVariable: KA_SYNCNT_ENV,
                bpfOption: KA_OPT_SYNCNT,
                defaultValue: KA_SYNCNT_DEFAULT,
                range: Self.range(KA_SYNCNT_MIN, KA_SYNCNT_MAX),
                unit: .count,
                column: "SYNCNT",
                alwaysShown: false,
                meaning: "SYN retransmissions on connect",
                field: \.syncnt
            )
        case .maxseg:
            Definition(
                key: KA_MAXSEG_KEY,
                environmentVariable: KA_MAXSEG_ENV,
                bpfOption: KA_OPT_MAXSEG,
                defaultValue: KA_MAXSEG_DEFAULT,
                range: Self.range(KA_MAXSEG_MIN, KA_MAXSEG_MAX),
                unit: .bytes,
                column: "MAXSEG",
                alwaysShown: false,
                meaning: "Maximum segment size on connect",
                field: \.maxseg
            )
        case .windowClamp:
            Definition(
                key: KA_WINDOW_CLAMP_KEY,
                environmentVariable: KA_WINDOW_CLAMP_ENV,
                bpfOption: KA_OPT_WINDOW_CLAMP,
                defaultValue: KA_WINDOW_CLAMP_DEFAULT,
                range: Self.range(KA_WINDOW_CLAMP_MIN, KA_WINDOW_CLAMP_MAX),
                unit: .bytes,
                column: "CLAMP",
                alwaysShown: false,
                meaning: "Clamp of the advertised window",
                field: \.windowClamp
            )
        }
    }

    private static func range(_ lower: Int32, _ upper: Int32) -> ClosedRange<Int64> { Int64(lower)...Int64(upper) }

    public var key: String { definition.key }
    /// The CLI flag's name (without "--"): the key, in the CLI's spelling.
    public var flag: String { key.replacing("_", with: "-") }
    public var environmentVariable: String { definition.environmentVariable }
    var bpfOption: ka_bpf_option { definition.bpfOption }
    public var defaultValue: Int32 { definition.defaultValue }
    public var range: ClosedRange<Int64> { definition.range }
    public var unit: Unit { definition.unit }
    public var column: String { definition.column }
    var alwaysShown: Bool { definition.alwaysShown }
    public var meaning: String { definition.meaning }

    /// One line of help: meaning, accepted values and unit, default.
    public var help: String {
        "\(meaning) (0 = system default, or \(rangeText) \(unit.rawValue); default \(defaultValue))."
    }

    var rangeText: String {
        self == .userTimeout
            ? "\(KA_USER_TIMEOUT_DERIVED) to derive, or 1..\(range.upperBound)"
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
            "\(value) is out of range (0 for the system default, or \(option.rangeText) \(option.unit.rawValue))"
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
