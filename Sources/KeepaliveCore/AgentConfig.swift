import Yams

/// The agent's policy file:
///
///     policies:
///       - cgroup: system.slice/postgresql.service   # relative to the cgroup2 mount, or absolute
///         keepidle: 30
///       - cgroup: "kubepods.slice/*"                # a glob, one path component per *
///       - unit: nginx.service                       # a systemd unit, resolved to its cgroup
///
/// Each entry: `cgroup` or `unit`, and any option key (PolicyOption.key) with
/// the CLI's defaults and ranges. Where entries match the same cgroup, the last wins.
public struct AgentConfig: Equatable, Sendable {
    public var policies: [PolicySpec]

    public init(policies: [PolicySpec]) { self.policies = policies }

    /// Parses and checks a whole file; the first problem is thrown with its line.
    public static func parse(_ text: String, file: String) throws(ConfigError) -> AgentConfig {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw ConfigError(file: file, line: error.line, message: error.problem)
        } catch {
            throw ConfigError(file: file, line: nil, message: "\(error)")
        }
        guard let root else { return AgentConfig(policies: []) }  // an empty file: no policies
        guard let top = root.mapping else {
            throw ConfigError(file: file, node: root, message: "expected a mapping with the key 'policies'")
        }
        var policies: [PolicySpec] = []
        for (key, value) in top {
            guard key.string == "policies" else {
                throw ConfigError(file: file, node: key, message: "unknown key '\(key.string ?? "?")' (expected 'policies')")
            }
            if case .scalar(let s) = value, s.string.isEmpty || s.string == "~" || s.string == "null" { continue }
            guard let list = value.sequence else {
                throw ConfigError(file: file, node: value, message: "'policies' must be a list of mappings")
            }
            for item in list { policies.append(try PolicySpec(item, file: file)) }
        }
        return AgentConfig(policies: policies)
    }
}

/// One entry of the policy file.
public struct PolicySpec: Equatable, Sendable {
    public enum Target: Equatable, Sendable {
        /// A path relative to the cgroup2 mount (absolute ones are made relative when resolved);
        /// components may be globs (`*`, `?`, `[...]`), each matching one component.
        case cgroup(String)
        /// A systemd unit, e.g. nginx.service.
        case unit(String)
    }

    public var target: Target
    public var policy: Policy
    /// Whether the policy is also applied to the TCP sockets that already
    /// exist when it is put on a cgroup (as `attach --existing` does).
    public var existing: Bool
    /// "file:line", for the log.
    public var source: String

    static let existingKey = "existing"

    public init(target: Target, policy: Policy, existing: Bool = true, source: String) {
        self.target = target
        self.policy = policy
        self.existing = existing
        self.source = source
    }

    init(_ node: Node, file: String) throws(ConfigError) {
        guard let mapping = node.mapping else {
            throw ConfigError(file: file, node: node, message: "a policy must be a mapping (cgroup or unit, and options)")
        }
        var target: Target?
        var values: [PolicyOption: Int32] = [:]
        var precedence = Precedence.application
        var existing = true
        for (keyNode, value) in mapping {
            let key = keyNode.string ?? ""
            switch key {
            case "cgroup", "unit":
                guard target == nil else {
                    throw ConfigError(file: file, node: keyNode, message: "give either 'cgroup' or 'unit', once")
                }
                guard let text = value.scalar?.string, !text.isEmpty else {
                    throw ConfigError(file: file, node: value, message: "'\(key)' must be a non-empty string")
                }
                guard !text.contains("\0") else {  // a C path would end there: "a\0b" is not "a"
                    throw ConfigError(file: file, node: value, message: "'\(key)' must not contain a NUL character")
                }
                if key == "cgroup" {
                    guard !text.split(separator: "/").contains(where: { $0 == ".." || $0 == "." }) else {
                        throw ConfigError(file: file, node: value, message: "'cgroup' must not contain '..' or '.'")
                    }
                    target = .cgroup(text)
                } else {
                    guard !text.contains("/") else {
                        throw ConfigError(file: file, node: value, message: "'unit' is a unit name, not a path")
                    }
                    target = .unit(text)
                }
            case Precedence.key:
                do { precedence = try Precedence(parsing: value.scalar?.string ?? "") } catch {
                    throw ConfigError(file: file, node: value, message: error.description)
                }
            case Self.existingKey:
                guard let scalar = value.scalar, scalar.style == .plain, let flag = Bool(scalar.string) else {
                    throw ConfigError(file: file, node: value, message: "'\(key)' must be true or false")
                }
                existing = flag
            default:
                guard let option = PolicyOption.allCases.first(where: { $0.key == key }) else {
                    let known = (["cgroup", "unit"] + PolicyOption.allCases.map(\.key) + [Precedence.key, Self.existingKey])
                        .joined(separator: ", ")
                    throw ConfigError(file: file, node: keyNode, message: "unknown key '\(key)' (known: \(known))")
                }
                guard let scalar = value.scalar, scalar.style == .plain, let number = Int64(scalar.string) else {
                    throw ConfigError(file: file, node: value, message: "'\(key)' must be a whole number")
                }
                do { values[option] = try option.validate(number) } catch {
                    throw ConfigError(file: file, node: value, message: error.description)
                }
            }
        }
        guard let target else {
            throw ConfigError(file: file, node: node, message: "a policy needs 'cgroup' or 'unit'")
        }
        self.init(target: target, policy: Policy(values, precedence: precedence), existing: existing,
                  source: "\(file):\(node.mark?.line ?? 0)")
    }
}

/// A rejected policy file: where, and what is wrong, in one line.
public struct ConfigError: Error, CustomStringConvertible, Equatable {
    public let file: String
    public let line: Int?
    public let message: String

    public init(file: String, line: Int?, message: String) {
        self.file = file
        self.line = line
        self.message = message
    }

    init(file: String, node: Node, message: String) {
        self.init(file: file, line: node.mark?.line, message: message)
    }

    public var description: String {
        "\(file)\(line.map { ":\($0)" } ?? ""): \(message)"
    }
}

extension YamlError {
    /// Where the broken construct starts (an unclosed bracket's line, not the end of file).
    var line: Int? {
        switch self {
        case let .scanner(context, _, mark, _), let .parser(context, _, mark, _), let .composer(context, _, mark, _):
            context?.mark.line ?? mark.line
        case let .duplicatedKeysInMapping(_, context): context.mark.line
        default: nil
        }
    }

    var problem: String {
        switch self {
        case let .scanner(context, problem, _, _), let .parser(context, problem, _, _),
             let .composer(context, problem, _, _):
            (context.map { "\($0.text) " } ?? "") + problem
        case let .duplicatedKeysInMapping(duplicates, _):
            "duplicate keys: \(duplicates.joined(separator: ", "))"
        default:
            "\(self)".split(separator: "\n").first.map(String.init) ?? "invalid YAML"
        }
    }
}
