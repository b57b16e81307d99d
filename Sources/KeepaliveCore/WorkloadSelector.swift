// SPDX-License-Identifier: MIT
import Glibc

/// Kubernetes' label selector: every `matchLabels` pair, and every expression
/// (In, NotIn, Exists, DoesNotExist), as the API server evaluates them.
public struct LabelSelector: Equatable, Sendable {
    public var matchLabels: [String: String] = [:]
    public var expressions: [Requirement] = []

    public init(matchLabels: [String: String] = [:], expressions: [Requirement] = []) {
        self.matchLabels = matchLabels
        self.expressions = expressions
    }

    public struct Requirement: Equatable, Sendable {
        public enum Operator: String, CaseIterable, Sendable {
            case `in` = "In"
            case notIn = "NotIn"
            case exists = "Exists"
            case doesNotExist = "DoesNotExist"

            /// In and NotIn take a non-empty list of values; the others none.
            var takesValues: Bool { self == .in || self == .notIn }
        }

        public let key: String
        public let `operator`: Operator
        public let values: Set<String>

        public init(key: String, operator: Operator, values: Set<String> = []) {
            self.key = key
            self.operator = `operator`
            self.values = values
        }

        func matches(_ labels: [String: String]) -> Bool {
            switch `operator` {
            case .in: labels[key].map(values.contains) ?? false
            case .notIn: labels[key].map { !values.contains($0) } ?? true
            case .exists: labels[key] != nil
            case .doesNotExist: labels[key] == nil
            }
        }
    }

    public func matches(_ labels: [String: String]) -> Bool {
        matchLabels.allSatisfy { labels[$0.key] == $0.value } && expressions.allSatisfy { $0.matches(labels) }
    }
}

/// Which pods a policy file entry selects: a glob over the namespace, one over
/// the name, and a label selector; what is not given matches every pod.
public struct PodSelector: Equatable, Sendable {
    public var namespace: String?
    public var name: String?
    public var labels = LabelSelector()

    public init(namespace: String? = nil, name: String? = nil, labels: LabelSelector = LabelSelector()) {
        self.namespace = namespace
        self.name = name
        self.labels = labels
    }

    public func matches(
        namespace podNamespace: String,
        name podName: String,
        labels podLabels: [String: String]
    ) -> Bool {
        globMatches(namespace, podNamespace) && globMatches(name, podName) && labels.matches(podLabels)
    }
}

/// Which containers a policy file entry selects: a glob over the name and a
/// label selector.
public struct ContainerSelector: Equatable, Sendable {
    public var name: String?
    public var labels = LabelSelector()

    public init(name: String? = nil, labels: LabelSelector = LabelSelector()) {
        self.name = name
        self.labels = labels
    }

    public func matches(name containerName: String, labels containerLabels: [String: String]) -> Bool {
        globMatches(name, containerName) && labels.matches(containerLabels)
    }
}

/// fnmatch(3) without flags, as cgroup globs are matched; no pattern matches all.
func globMatches(_ pattern: String?, _ text: String) -> Bool {
    guard let pattern else { return true }
    return fnmatch(pattern, text, 0) == 0
}

/// Whether a pod may choose its own values through annotations.
public enum AnnotationMode: String, CaseIterable, Sendable {
    case allow, ignore
}

/// A pod's own choices, within what its policy file entry allows: each
/// `keepalive.dev/<option>` annotation replaces that option's value, and
/// `keepalive.dev/enabled: "false"` opts the pod out.
public enum PodAnnotations {
    public static let prefix = "keepalive.dev/"
    public static let enabled = prefix + "enabled"

    /// The annotation of an option: its key with '-' for '_' (user_timeout is user-timeout).
    public static func key(_ option: PolicyOption) -> String {
        prefix + option.key.replacing("_", with: "-")
    }

    public static var precedenceKey: String { prefix + Precedence.key }

    /// An annotation keepalive could not use: it is ignored, and said once.
    public struct Problem: Equatable, Hashable, Sendable, CustomStringConvertible {
        public let key: String
        public let value: String
        public let why: String

        public var description: String { "annotation \(key)=\"\(value)\" ignored: \(why)" }
    }

    /// The entry's policy with the pod's annotations applied; nil when the
    /// pod opts out. Problems are what was ignored.
    public static func apply(
        _ annotations: [String: String],
        to policy: Policy
    )
        -> (policy: Policy?, problems: [Problem])
    {
        var result = policy
        var problems: [Problem] = []
        for (key, value) in annotations.sorted(by: { $0.key < $1.key }) where key.hasPrefix(prefix) {
            if key == enabled {
                switch value {
                case "false": return (nil, problems)
                case "true": continue
                default: problems.append(Problem(key: key, value: value, why: "expected \"true\" or \"false\""))
                }
            } else if key == precedenceKey {
                do { result.precedence = try Precedence(parsing: value) } catch {
                    problems.append(Problem(key: key, value: value, why: error.problem))
                }
            } else if let option = PolicyOption.allCases.first(where: { Self.key($0) == key }) {
                do { result[option] = try option.parse(value) } catch {
                    problems.append(Problem(key: key, value: value, why: error.problem))
                }
            } else {
                problems.append(Problem(key: key, value: value, why: "not a keepalive annotation"))
            }
        }
        return (result, problems)
    }
}
