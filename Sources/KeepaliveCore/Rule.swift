// SPDX-License-Identifier: MIT
import CLibBPF

/// A rule by destination: the connections of a policy's subtree whose remote
/// address is in one of `remote` and whose ports are in the lists (an empty
/// list matches any) get the rule's values instead of the policy's. A
/// policy's rules are tried in order; the first that matches wins. The same
/// test runs on connect and on accept (bpf/keepalive_policy.h says why).
public struct Rule: Hashable, Sendable {
    public var name: String?
    public var remote: [CIDR] = []
    public var remotePorts: [UInt16] = []
    public var localPorts: [UInt16] = []
    /// keepalive: off: matching sockets get nothing.
    public var off = false
    /// The options the rule gives itself; the others are its policy's.
    public var options: [PolicyOption: Int32] = [:]

    public init(
        name: String? = nil,
        remote: [CIDR] = [],
        remotePorts: [UInt16] = [],
        localPorts: [UInt16] = [],
        off: Bool = false,
        options: [PolicyOption: Int32] = [:]
    ) {
        self.name = name
        self.remote = remote
        self.remotePorts = remotePorts
        self.localPorts = localPorts
        self.off = off
        self.options = options
    }

    public static let nameKey = KA_RULE_NAME_KEY
    public static let remoteKey = KA_RULE_REMOTE_KEY
    public static let remotePortsKey = KA_RULE_REMOTE_PORTS_KEY
    public static let localPortsKey = KA_RULE_LOCAL_PORTS_KEY
    public static let keepaliveKey = KA_RULE_KEEPALIVE_KEY
    public static let rulesKey = KA_RULES_KEY
    public static let maxRules = Int(KA_MAX_RULES)
    /// The keys that take a list.
    static let listKeys: Set<String> = [remoteKey, remotePortsKey, localPortsKey]

    /// The values a matching connection gets: the rule's own, else its
    /// policy's. A user timeout neither gives is derived as the policy's is,
    /// from the rule's own idle, interval and count.
    public func values(under policy: Policy) -> Policy {
        var values = policy
        values.rules = []
        for (option, value) in options { values[option] = value }
        return values
    }

    /// Whether a connection matches: its remote address (16 bytes, IPv4
    /// v4-mapped) and ports, as the BPF program tests them.
    public func matches(remote address: [UInt8], remotePort: UInt16, localPort: UInt16) -> Bool {
        (remote.isEmpty || remote.contains { $0.contains(address) })
            && (remotePorts.isEmpty || remotePorts.contains(remotePort))
            && (localPorts.isEmpty || localPorts.contains(localPort))
    }

    /// How a rule is named in output: its name, else its position (1-based).
    public static func label(_ rules: [Rule], _ index: Int) -> String {
        rules.indices.contains(index) ? rules[index].name ?? "\(index + 1)" : "\(index + 1)"
    }

    /// The command line's form, `key=value,...` (lists repeat their key), which `init(parsing:)` reads back.
    public var summary: String {
        var parts: [String] = []
        if let name { parts.append("\(Self.nameKey)=\(name)") }
        parts += remote.map { "\(Self.remoteKey)=\($0)" }
        parts += remotePorts.map { "\(Self.remotePortsKey)=\($0)" }
        parts += localPorts.map { "\(Self.localPortsKey)=\($0)" }
        if off { parts.append("\(Self.keepaliveKey)=off") }
        parts += PolicyOption.allCases.compactMap { option in options[option].map { "\(option.key)=\($0)" } }
        return parts.joined(separator: ",")
    }

    /// Checks what a rule may hold, once its fields are read.
    func validated() throws(RuleError) -> Rule {
        if let name {
            guard !name.isEmpty, name.utf8.count < Int(KA_RULE_NAME_MAX), !name.contains("\0"),
                !name.contains(","), !name.contains("=")
            else {
                throw RuleError(
                    "\(Self.nameKey) '\(name)' must be 1..\(KA_RULE_NAME_MAX - 1) bytes, without ',', '=' or NUL"
                )
            }
            guard Int(name) == nil else {
                throw RuleError("\(Self.nameKey) '\(name)' must not be a number (rules are numbered)")
            }
        }
        guard !(remote.isEmpty && remotePorts.isEmpty && localPorts.isEmpty) else {
            throw RuleError("a rule needs \(Self.remoteKey), \(Self.remotePortsKey) or \(Self.localPortsKey)")
        }
        guard remote.count <= Int(KA_RULE_MAX_REMOTES) else {
            throw RuleError("\(Self.remoteKey): at most \(KA_RULE_MAX_REMOTES) CIDRs")
        }
        for (key, ports) in [(Self.remotePortsKey, remotePorts), (Self.localPortsKey, localPorts)]
        where ports.count > Int(KA_RULE_MAX_PORTS) {
            throw RuleError("\(key): at most \(KA_RULE_MAX_PORTS) ports")
        }
        guard !(off && !options.isEmpty) else {
            throw RuleError(
                "\(Self.keepaliveKey)=off takes no values (\(options.keys.map(\.key).sorted().joined(separator: ", ")))"
            )
        }
        return self
    }

    /// The rules of one policy: at most KA_MAX_RULES, names unique. `source`
    /// names where each came from in errors ("rule 2", "rule 2 (db)").
    public static func validate(_ rules: [Rule]) throws(RuleError) -> [Rule] {
        guard rules.count <= maxRules else {
            throw RuleError("\(rules.count) rules: a policy holds at most \(maxRules)")
        }
        var names: Set<String> = []
        for (index, rule) in rules.enumerated() {
            if let name = rule.name, !names.insert(name).inserted {
                throw RuleError("rule \(index + 1) (\(name)): the name is taken by an earlier rule")
            }
        }
        return rules
    }

    static func port(_ text: String, key: String) throws(RuleError) -> UInt16 {
        guard let port = UInt16(text), port != 0 else { throw RuleError("\(key): '\(text)' is not a port (1..65535)") }
        return port
    }
}

/// A rule that cannot be: the message names the problem; callers name the rule.
public struct RuleError: Error, CustomStringConvertible, Equatable {
    public let message: String

    public init(_ message: String) { self.message = message }

    public var description: String { message }

    /// The same problem, said of rule `index` (0-based) of a policy.
    public func of(rule index: Int, named name: String?) -> RuleError {
        message.hasPrefix("rule ") ? self : RuleError("rule \(index + 1)\(name.map { " (\($0))" } ?? ""): \(message)")
    }
}

extension Rule {
    /// `--rule 'remote=10.20.0.0/16,remote_ports=5432,keepidle=5'`: keys as in
    /// the policy file, lists by repeating their key.
    public init(parsing spec: String) throws(RuleError) {
        var rule = Rule()
        for field in spec.split(separator: ",", omittingEmptySubsequences: false) {
            let pair = field.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            guard pair.count == 2, !pair[0].isEmpty else {
                throw RuleError("'\(field)' is not key=value (in '\(spec)')")
            }
            try rule.set(pair[0], pair[1])
        }
        self = try rule.validated()
    }

    /// One field, from either form.
    mutating func set(_ key: String, _ value: String) throws(RuleError) {
        switch key {
        case Self.nameKey: name = value
        case Self.remoteKey: remote.append(try CIDR(parsing: value))
        case Self.remotePortsKey: remotePorts.append(try Self.port(value, key: key))
        case Self.localPortsKey: localPorts.append(try Self.port(value, key: key))
        case Self.keepaliveKey:
            guard value == "off" else { throw RuleError("\(key): only 'off' (a rule's values turn it on)") }
            off = true
        default:
            guard let option = PolicyOption.allCases.first(where: { $0.key == key }) else {
                throw RuleError("unknown key '\(key)' (known: \(Self.keys.joined(separator: ", ")))")
            }
            let parsed: Int32
            do { parsed = try option.parse(value) } catch { throw RuleError(error.description) }
            // An accepted socket holds its listener's (the policy's) values:
            // "the system default" cannot be put back, so a rule gives a value.
            guard parsed != 0 || option == .userTimeout else {
                throw RuleError(
                    "\(key): 0 is for policies; a rule gives a value (\(option.range.lowerBound)..\(option.range.upperBound)) or leaves the key out"
                )
            }
            options[option] = parsed
        }
    }

    static var keys: [String] {
        [nameKey, remoteKey, remotePortsKey, localPortsKey, keepaliveKey] + PolicyOption.allCases.map(\.key)
    }
}
