// SPDX-License-Identifier: MIT
import Glibc

/// The container runtime APIs keepalive reads: Kubernetes' CRI (containerd,
/// CRI-O, k3s) and the Docker-compatible API (docker, podman).
public enum RuntimeKind: String, CaseIterable, Sendable {
    case cri, docker

    /// The usual places of its socket, in the order they are tried.
    public var usualSockets: [String] {
        switch self {
        case .cri: ["/run/containerd/containerd.sock", "/run/crio/crio.sock", "/run/k3s/containerd/containerd.sock"]
        case .docker: ["/run/docker.sock", "/run/podman/podman.sock"]
        }
    }

    /// The environment variables that name its endpoint, as its own tools read them.
    public var environmentVariables: [String] {
        switch self {
        case .cri: ["CONTAINER_RUNTIME_ENDPOINT"]  // crictl's
        case .docker: ["DOCKER_HOST", "CONTAINER_HOST"]  // docker's, then podman-remote's
        }
    }

    /// How people call it in messages.
    public var title: String {
        switch self {
        case .cri: "CRI"
        case .docker: "Docker-compatible API"
        }
    }
}

/// A runtime API's unix socket: `unix:///run/containerd/containerd.sock`, or
/// the bare path. Only local sockets: a runtime on another host could not
/// name this host's cgroups.
public struct RuntimeEndpoint: Hashable, Sendable, CustomStringConvertible {
    public let path: String

    public init(parsing text: String) throws(EndpointError) {
        let path: Substring
        if text.hasPrefix("unix://") {
            path = text.dropFirst("unix://".count)
        } else if text.hasPrefix("/") {
            path = Substring(text)
        } else {
            throw EndpointError(text: text)
        }
        guard path.hasPrefix("/"), path.count > 1, !path.contains("\0") else { throw EndpointError(text: text) }
        self.path = String(path)
    }

    public var description: String { "unix://" + path }

    public var exists: Bool { access(path, F_OK) == 0 }
}

/// Where to look for one runtime: the endpoint given (a flag, the policy
/// file), else its environment variable, else every usual socket that exists.
public struct EndpointChoice: Sendable, CustomStringConvertible {
    public let kind: RuntimeKind
    /// Given explicitly, or by the environment: the one to use, existing or not.
    public let chosen: RuntimeEndpoint?

    public init(_ kind: RuntimeKind, given: String?, environment: [String: String]) throws(EndpointError) {
        self.kind = kind
        if let given {
            chosen = try RuntimeEndpoint(parsing: given)
        } else if let (name, value) = kind.environmentVariables.lazy.compactMap({ name in
            environment[name].flatMap { $0.isEmpty ? nil : (name, $0) }
        }).first {
            do { chosen = try RuntimeEndpoint(parsing: value) } catch {
                throw EndpointError(text: value, variable: name)
            }
        } else {
            chosen = nil
        }
    }

    /// The endpoints to try now, in order (the usual sockets are looked for
    /// each time: a runtime may start after keepalive).
    public var candidates: [RuntimeEndpoint] {
        if let chosen { return [chosen] }
        // The usual sockets are absolute paths: they always parse.
        return kind.usualSockets.compactMap { try? RuntimeEndpoint(parsing: $0) }.filter(\.exists)
    }

    /// What was or would be looked at, for messages.
    public var description: String {
        if let chosen { return chosen.description }
        return kind.usualSockets.map { "unix://" + $0 }.joined(separator: ", ")
    }
}

/// A runtime endpoint that is not a local unix socket.
public struct EndpointError: Error, CustomStringConvertible, Equatable, Sendable {
    public let text: String
    public var variable: String?

    public var description: String {
        (variable.map { "\($0)='\(text)'" } ?? "runtime endpoint '\(text)'")
            + " is not a unix socket (unix:///PATH or /PATH)"
    }
}
