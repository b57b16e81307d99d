// SPDX-License-Identifier: MIT
import KeepaliveCore

/// A runtime could not answer, or answered something that names no single
/// workload: one line for the user, naming what was looked up where. Never a
/// reason to take anything out of force.
public enum RuntimeError: Error, CustomStringConvertible, Equatable, Sendable {
    /// No socket of that runtime exists where it was looked for.
    case noEndpoint(RuntimeKind, looked: String)
    /// The call failed (connection refused, timeout, an error status).
    case unreachable(RuntimeKind, endpoint: String, String)
    /// A reply of a shape keepalive does not know: an error for that workload.
    case unexpectedReply(RuntimeKind, endpoint: String, String)
    case noSuchPod(String, looked: String)
    case noSuchContainer(String, looked: String)
    case ambiguous(String, matches: [String])
    /// The workload is known but its cgroup could not be found.
    case noCgroup(String, String)

    public var description: String {
        switch self {
        case let .noEndpoint(kind, looked):
            "no \(kind.title) socket found (looked at \(looked))"
        case let .unreachable(kind, endpoint, why):
            "\(kind.title) at \(endpoint): \(why)"
        case let .unexpectedReply(kind, endpoint, why):
            "\(kind.title) at \(endpoint) answered unexpectedly: \(why)"
        case let .noSuchPod(name, looked):
            "no pod \(name) (looked in \(looked))"
        case let .noSuchContainer(name, looked):
            "no container '\(name)' (looked in \(looked))"
        case let .ambiguous(name, matches):
            "'\(name)' names \(matches.count) containers: \(matches.joined(separator: ", ")); give one id"
        case let .noCgroup(workload, why):
            "cannot find the cgroup of \(workload): \(why)"
        }
    }
}
