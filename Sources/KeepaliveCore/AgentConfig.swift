// SPDX-License-Identifier: MIT
import Yams

/// The agent's policy file:
///
///     runtime:                                      # optional: where the container runtimes are
///       cri: unix:///run/containerd/containerd.sock
///       docker: unix:///run/podman/podman.sock
///     policies:
///       - cgroup: system.slice/postgresql.service   # relative to the cgroup2 mount, or absolute
///         keepidle: 30
///       - cgroup: "kubepods.slice/*"                # a glob, one path component per *
///       - unit: nginx.service                       # a systemd unit, resolved to its cgroup
///       - pods: { namespace: shop, labels: { tier: db } }   # Kubernetes pods, through CRI
///       - containers: { name: "redis-*" }           # containers, through the runtimes
///
/// Each entry: one target, and any option key (PolicyOption.key) with the
/// CLI's defaults and ranges. Where entries match the same cgroup, the last wins.
public struct AgentConfig: Equatable, Sendable {
    public var policies: [PolicySpec]
    /// Runtime endpoints the file names (`unix:///PATH`); nil: the agent's flags, environment, usual sockets.
    public var runtimeEndpoints: [RuntimeKind: RuntimeEndpoint]

    public init(policies: [PolicySpec], runtimeEndpoints: [RuntimeKind: RuntimeEndpoint] = [:]) {
        self.policies = policies
        self.runtimeEndpoints = runtimeEndpoints
    }

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
        var config = AgentConfig(policies: [])
        for (key, value) in top {
            switch key.string {
            case "policies":
                if case .scalar(let s) = value, s.string.isEmpty || s.string == "~" || s.string == "null" { continue }
                guard let list = value.sequence else {
                    throw ConfigError(file: file, node: value, message: "'policies' must be a list of mappings")
                }
                for item in list { config.policies.append(try PolicySpec(item, file: file)) }
            case "runtime":
                config.runtimeEndpoints = try runtimeEndpoints(value, file: file)
            default:
                throw ConfigError(
                    file: file,
                    node: key,
                    message: "unknown key '\(key.string ?? "?")' (expected 'policies' or 'runtime')"
                )
            }
        }
        return config
    }

    private static func runtimeEndpoints(
        _ node: Node,
        file: String
    ) throws(ConfigError) -> [RuntimeKind: RuntimeEndpoint] {
        guard let mapping = node.mapping else {
            throw ConfigError(
                file: file,
                node: node,
                message: "'runtime' must be a mapping of 'cri' and 'docker' endpoints"
            )
        }
        var endpoints: [RuntimeKind: RuntimeEndpoint] = [:]
        for (key, value) in mapping {
            guard let kind = RuntimeKind(rawValue: key.string ?? "") else {
                throw ConfigError(
                    file: file,
                    node: key,
                    message: "unknown runtime '\(key.string ?? "?")' (known: cri, docker)"
                )
            }
            let text = try string(value, key: "runtime.\(kind.rawValue)", file: file)
            do { endpoints[kind] = try RuntimeEndpoint(parsing: text) } catch {
                throw ConfigError(file: file, node: value, message: error.description)
            }
        }
        return endpoints
    }
}

/// A non-empty string without NUL (a C string would end there: "a\0b" is not "a").
func string(_ node: Node, key: String, file: String) throws(ConfigError) -> String {
    guard let text = node.scalar?.string, !text.isEmpty else {
        throw ConfigError(file: file, node: node, message: "'\(key)' must be a non-empty string")
    }
    guard !text.contains("\0") else {
        throw ConfigError(file: file, node: node, message: "'\(key)' must not contain a NUL character")
    }
    return text
}

/// One entry of the policy file.
public struct PolicySpec: Equatable, Sendable {
    public enum Target: Equatable, Sendable {
        /// A path relative to the cgroup2 mount (absolute ones are made relative when resolved);
        /// components may be globs (`*`, `?`, `[...]`), each matching one component.
        case cgroup(String)
        /// A systemd unit, e.g. nginx.service.
        case unit(String)
        /// Kubernetes pods on this node, found through CRI: the policy goes on each pod's cgroup.
        case pods(PodSelector)
        /// Containers, found through the Docker-compatible API and CRI: the policy goes on each one's cgroup.
        case containers(ContainerSelector)

        static let keys = ["cgroup", "unit", "pods", "containers"]

        var selectsPods: Bool {
            if case .pods = self { true } else { false }
        }
    }

    public var target: Target
    public var policy: Policy
    /// Whether the policy is also applied to the TCP sockets that already
    /// exist when it is put on a cgroup (as `attach --existing` does).
    public var existing: Bool
    /// Whether a selected pod's annotations may change its values (pods entries only).
    public var annotations: AnnotationMode
    /// "file:line", for the log.
    public var source: String

    static let existingKey = "existing"
    static let annotationsKey = "annotations"

    public init(
        target: Target,
        policy: Policy,
        existing: Bool = true,
        annotations: AnnotationMode = .allow,
        source: String
    ) {
        self.target = target
        self.policy = policy
        self.existing = existing
        self.annotations = annotations
        self.source = source
    }

    init(_ node: Node, file: String) throws(ConfigError) {
        guard let mapping = node.mapping else {
            throw ConfigError(file: file, node: node, message: "a policy must be a mapping (a target, and options)")
        }
        var target: Target?
        var values: [PolicyOption: Int32] = [:]
        var precedence = Precedence.application
        var existing = true
        var annotations: (mode: AnnotationMode, node: Node)?
        var rules: [Rule] = []
        var observe = (only: false, paths: false)
        for (keyNode, value) in mapping {
            let key = keyNode.string ?? ""
            if Target.keys.contains(key) {
                guard target == nil else {
                    throw ConfigError(file: file, node: keyNode, message: "give one of \(Self.targetList), once")
                }
                target = try Self.target(key, value, file: file)
                continue
            }
            switch key {
            case Precedence.key:
                do { precedence = try Precedence(parsing: value.scalar?.string ?? "") } catch {
                    throw ConfigError(file: file, node: value, message: error.description)
                }
            case Self.existingKey:
                existing = try Self.bool(key, value, file: file)
            case Policy.Observation.onlyKey:
                observe.only = try Self.bool(key, value, file: file)
            case Policy.Observation.pathsKey:
                observe.paths = try Self.bool(key, value, file: file)
            case Rule.rulesKey:
                rules = try Self.rules(value, file: file)
            case Self.annotationsKey:
                guard let mode = value.scalar.flatMap({ AnnotationMode(rawValue: $0.string) }) else {
                    throw ConfigError(file: file, node: value, message: "'\(key)' must be 'allow' or 'ignore'")
                }
                annotations = (mode, keyNode)
            default:
                guard let option = PolicyOption.allCases.first(where: { $0.key == key }) else {
                    let known =
                        (Target.keys + PolicyOption.allCases.map(\.key)
                        + [
                            Precedence.key, Rule.rulesKey, Self.existingKey, Self.annotationsKey,
                            Policy.Observation.onlyKey, Policy.Observation.pathsKey,
                        ]).joined(
                            separator: ", "
                        )
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
            throw ConfigError(file: file, node: node, message: "a policy needs one of \(Self.targetList)")
        }
        if let annotations, !target.selectsPods {
            throw ConfigError(
                file: file,
                node: annotations.node,
                message: "'annotations' applies to 'pods' entries only"
            )
        }
        self.init(
            target: target,
            policy: Policy(
                values,
                precedence: precedence,
                rules: rules,
                observation: Policy.Observation(only: observe.only, paths: observe.paths)
            ),
            existing: existing,
            annotations: annotations?.mode ?? .allow,
            source: "\(file):\(node.mark?.line ?? 0)"
        )
    }

    /// A plain true or false.
    private static func bool(_ key: String, _ value: Node, file: String) throws(ConfigError) -> Bool {
        guard let scalar = value.scalar, scalar.style == .plain, let flag = Bool(scalar.string) else {
            throw ConfigError(file: file, node: value, message: "'\(key)' must be true or false")
        }
        return flag
    }

    /// `rules:`, a list of mappings: each key as `--rule` takes it, lists
    /// (remote, remote_ports, local_ports) as YAML lists or one scalar.
    private static func rules(_ node: Node, file: String) throws(ConfigError) -> [Rule] {
        if case .scalar(let s) = node, s.string.isEmpty || s.string == "~" || s.string == "null" { return [] }
        guard let items = node.sequence else {
            throw ConfigError(file: file, node: node, message: "'\(Rule.rulesKey)' must be a list of rules")
        }
        var rules: [Rule] = []
        for (index, item) in items.enumerated() {
            let name = item.mapping?[Rule.nameKey]?.scalar?.string
            do throws(RuleError) {
                rules.append(try rule(item, file: file))
            } catch {
                throw ConfigError(file: file, node: item, message: error.of(rule: index, named: name).description)
            }
        }
        do { return try Rule.validate(rules) } catch {
            throw ConfigError(file: file, node: node, message: error.description)
        }
    }

    private static func rule(_ node: Node, file: String) throws(RuleError) -> Rule {
        guard let mapping = node.mapping else { throw RuleError("a rule must be a mapping (remote, ports, values)") }
        var rule = Rule()
        for (keyNode, value) in mapping {
            let key = keyNode.string ?? ""
            let scalars: [Node.Scalar]
            switch value {
            case .scalar(let scalar): scalars = [scalar]
            case .sequence(let sequence) where Rule.listKeys.contains(key):
                scalars = try sequence.map { (element: Node) throws(RuleError) -> Node.Scalar in
                    guard let scalar = element.scalar else { throw RuleError("'\(key)' must list plain values") }
                    return scalar
                }
            default:
                throw RuleError("'\(key)' must be \(Rule.listKeys.contains(key) ? "a value or a list" : "a value")")
            }
            for scalar in scalars { try rule.set(key, scalar.string) }
        }
        return try rule.validated()
    }

    private static let targetList = "'cgroup', 'unit', 'pods' or 'containers'"

    private static func target(_ key: String, _ value: Node, file: String) throws(ConfigError) -> Target {
        switch key {
        case "cgroup":
            let text = try string(value, key: key, file: file)
            guard !text.split(separator: "/").contains(where: { $0 == ".." || $0 == "." }) else {
                throw ConfigError(file: file, node: value, message: "'cgroup' must not contain '..' or '.'")
            }
            return .cgroup(text)
        case "unit":
            let text = try string(value, key: key, file: file)
            guard !text.contains("/") else {
                throw ConfigError(file: file, node: value, message: "'unit' is a unit name, not a path")
            }
            return .unit(text)
        case "pods":
            var selector = PodSelector()
            try SelectorParser(file: file, key: key, allowed: ["namespace", "name", "labels", "expressions"])
                .parse(value) { field, node, parser throws(ConfigError) in
                    switch field {
                    case "namespace": selector.namespace = try parser.glob(node, field)
                    case "name": selector.name = try parser.glob(node, field)
                    default: try parser.labels(field, node, into: &selector.labels)
                    }
                }
            return .pods(selector)
        default:
            var selector = ContainerSelector()
            try SelectorParser(file: file, key: key, allowed: ["name", "labels", "expressions"])
                .parse(value) { field, node, parser throws(ConfigError) in
                    if field == "name" {
                        selector.name = try parser.glob(node, field)
                    } else {
                        try parser.labels(field, node, into: &selector.labels)
                    }
                }
            return .containers(selector)
        }
    }
}

/// The fields of a `pods:` or `containers:` selector.
private struct SelectorParser {
    let file: String
    let key: String
    let allowed: [String]

    /// Calls `field` for each field of the selector's mapping (an empty selector selects everything).
    func parse(_ node: Node, _ field: (String, Node, SelectorParser) throws(ConfigError) -> Void) throws(ConfigError) {
        if case .scalar(let s) = node, s.string.isEmpty || s.string == "~" || s.string == "null" { return }
        guard let mapping = node.mapping else {
            throw ConfigError(
                file: file,
                node: node,
                message: "'\(key)' must be a mapping of \(allowed.joined(separator: ", "))"
            )
        }
        for (name, value) in mapping {
            guard let text = name.string, allowed.contains(text) else {
                throw ConfigError(
                    file: file,
                    node: name,
                    message:
                        "unknown key '\(name.string ?? "?")' in '\(key)' (known: \(allowed.joined(separator: ", ")))"
                )
            }
            try field(text, value, self)
        }
    }

    func glob(_ node: Node, _ field: String) throws(ConfigError) -> String {
        try string(node, key: "\(key).\(field)", file: file)
    }

    func labels(_ field: String, _ node: Node, into selector: inout LabelSelector) throws(ConfigError) {
        if field == "labels" {
            guard let mapping = node.mapping else {
                throw ConfigError(file: file, node: node, message: "'\(key).labels' must be a mapping of label: value")
            }
            for (name, value) in mapping {
                selector.matchLabels[try string(name, key: "\(key).labels", file: file)] = try labelValue(value)
            }
            return
        }
        guard let list = node.sequence else {
            throw ConfigError(
                file: file,
                node: node,
                message: "'\(key).expressions' must be a list of { key, operator, values }"
            )
        }
        for item in list { selector.expressions.append(try requirement(item)) }
    }

    /// A label's value: a string (Kubernetes' are at most 63 bytes, possibly empty).
    private func labelValue(_ node: Node) throws(ConfigError) -> String {
        guard let scalar = node.scalar, !scalar.string.contains("\0") else {
            throw ConfigError(file: file, node: node, message: "a label value must be a string")
        }
        return scalar.string
    }

    private func requirement(_ node: Node) throws(ConfigError) -> LabelSelector.Requirement {
        guard let mapping = node.mapping else {
            throw ConfigError(
                file: file,
                node: node,
                message: "an expression must be a mapping of key, operator, values"
            )
        }
        var key: String?
        var op: LabelSelector.Requirement.Operator?
        var values: Set<String>?
        for (name, value) in mapping {
            switch name.string {
            case "key": key = try string(value, key: "key", file: file)
            case "operator":
                guard let parsed = value.scalar.flatMap({ LabelSelector.Requirement.Operator(rawValue: $0.string) })
                else {
                    let known = LabelSelector.Requirement.Operator.allCases.map(\.rawValue).joined(separator: ", ")
                    throw ConfigError(file: file, node: value, message: "'operator' must be one of \(known)")
                }
                op = parsed
            case "values":
                guard let list = value.sequence else {
                    throw ConfigError(file: file, node: value, message: "'values' must be a list of strings")
                }
                var set: Set<String> = []
                for item in list { set.insert(try labelValue(item)) }
                values = set
            default:
                throw ConfigError(
                    file: file,
                    node: name,
                    message: "unknown key '\(name.string ?? "?")' in an expression (known: key, operator, values)"
                )
            }
        }
        guard let key, let op else {
            throw ConfigError(file: file, node: node, message: "an expression needs 'key' and 'operator'")
        }
        if op.takesValues && (values ?? []).isEmpty {
            throw ConfigError(
                file: file,
                node: node,
                message: "operator \(op.rawValue) needs a non-empty 'values' list"
            )
        }
        if !op.takesValues && values != nil {
            throw ConfigError(file: file, node: node, message: "operator \(op.rawValue) takes no 'values'")
        }
        return LabelSelector.Requirement(key: key, operator: op, values: values ?? [])
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
