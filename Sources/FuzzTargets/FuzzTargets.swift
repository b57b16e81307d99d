// SPDX-License-Identifier: MIT
import Foundation
import KeepaliveCore
import KeepaliveRuntime

import struct SystemPackage.FilePath

/// The parsers of outside input, as coverage-guided fuzzers drive them
/// (`make fuzz`, fuzz/) and as `make test` replays their corpus
/// (Tests/FuzzReplayTests): each takes any bytes, and checks with
/// preconditions what must hold of whatever it accepts. A precondition that
/// fails, or any crash, is a finding.
public enum FuzzTargets {
    public static let names = ["policy-file", "runtime-replies"]

    public static func run(_ name: String, _ bytes: [UInt8]) {
        switch name {
        case "policy-file": policyFile(bytes)
        case "runtime-replies": runtimeReplies(bytes)
        default: preconditionFailure("no fuzz target \(name) (known: \(names.joined(separator: ", ")))")
        }
    }

    /// The agent's policy file: accepted or refused with a line, and what it
    /// accepts is within every range.
    static func policyFile(_ bytes: [UInt8]) {
        let config: AgentConfig
        do {
            config = try AgentConfig.parse(String(decoding: bytes, as: UTF8.self), file: "fuzz.yaml")
        } catch {
            precondition(!error.description.contains("\n"), "a refusal is one line")
            return
        }
        for spec in config.policies {
            checkInRange(spec.policy)
            precondition(spec.policy.rules.count <= Rule.maxRules, "at most 16 rules")
            for rule in spec.policy.rules {
                precondition(
                    !(rule.remote.isEmpty && rule.remotePorts.isEmpty && rule.localPorts.isEmpty),
                    "a rule matches something"
                )
                precondition(!rule.off || rule.options.isEmpty, "keepalive: off takes no values")
                checkInRange(rule.values(under: spec.policy))
            }
            if case .pods(let selector) = spec.target {
                for requirement in selector.labels.expressions where [.in, .notIn].contains(requirement.operator) {
                    precondition(!requirement.values.isEmpty, "In and NotIn take values")
                }
            }
        }
        for endpoint in config.runtimeEndpoints.values { precondition(endpoint.path.hasPrefix("/")) }
    }

    /// What the runtimes answer: the first byte says which reader gets the rest.
    static func runtimeReplies(_ bytes: [UInt8]) {
        guard let kind = bytes.first else { return }
        let rest = Array(bytes.dropFirst())
        let text = String(decoding: rest, as: UTF8.self)
        switch kind % 7 {
        case 0: checkCgroup(try? RuntimeReplies.podCgroup(verboseInfo: text) ?? nil)
        case 1: checkCgroup(try? RuntimeReplies.container(verboseInfo: text).cgroup)
        case 2: _ = try? RuntimeReplies.containers(listed: Data(rest))
        case 3: _ = (try? RuntimeReplies.container(inspected: Data(rest)))?.info(source: "fuzz")
        case 4: checkCgroup(try? RuntimeReplies.libpodCgroup(inspected: Data(rest)))
        case 5:
            switch CgroupNaming.kind(of: text) {
            case .pod(let uid): precondition(uid.utf8.count == 36, "a uid")
            case .container(let id, _): precondition(id.utf8.count == 64, "a container id")
            case .other: break
            }
            checkCgroup(try? CgroupNaming.path(ofCgroupsPath: text))
            if let endpoint = try? RuntimeEndpoint(parsing: text) { precondition(endpoint.path.hasPrefix("/")) }
        default:
            // Annotations, one key=value a line.
            var annotations: [String: String] = [:]
            for line in text.split(separator: "\n") {
                let parts = line.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                annotations[String(parts[0])] = parts.count > 1 ? String(parts[1]) : ""
            }
            if let policy = PodAnnotations.apply(annotations, to: Policy()).policy { checkInRange(policy) }
        }
    }

    private static func checkInRange(_ policy: Policy) {
        for option in PolicyOption.allCases {
            precondition(policy[option] == 0 || option.range.contains(Int64(policy[option])), "\(option.key) in range")
        }
    }

    /// A cgroup a runtime named: a path below the root, of plain components only.
    private static func checkCgroup(_ path: FilePath?) {
        guard let path else { return }
        precondition(!path.isAbsolute && path.components.allSatisfy { $0.kind == .regular }, "a plain relative path")
    }
}
