// SPDX-License-Identifier: MIT
import Foundation
import KeepaliveCore

import struct SystemPackage.FilePath

/// What keepalive reads in the runtimes' replies, apart from how they are
/// fetched: the runtime's own JSON in a CRI verbose status (containerd's and
/// CRI-O's keys), and the Docker-compatible API's containers (docker and
/// podman's, and podman's own inspect). Only what keepalive uses is read; a
/// shape it does not know is a ReplyError, for that workload, never an answer.
public enum RuntimeReplies {
    // MARK: CRI verbose info

    private struct Sandbox: Decodable {
        let config: Config?
        let runtimeSpec: Spec?
        struct Config: Decodable {
            let linux: Linux?
            struct Linux: Decodable { let cgroup_parent: String? }
        }
    }

    private struct Container: Decodable {
        let pid: Int32?
        let runtimeSpec: Spec?
    }

    private struct Spec: Decodable {
        let linux: Linux?
        struct Linux: Decodable { let cgroupsPath: String? }
    }

    /// A pod's cgroup from its sandbox's verbose status: its cgroup_parent,
    /// else its own container's parent; nil if it names neither.
    public static func podCgroup(verboseInfo json: String) throws(ReplyError) -> FilePath? {
        let info: Sandbox = try decode(Data(json.utf8), "PodSandboxStatus verbose info")
        if let parent = info.config?.linux?.cgroup_parent, !parent.isEmpty { return try path(parent) }
        if let own = info.runtimeSpec?.linux?.cgroupsPath, !own.isEmpty { return try path(own).removingLastComponent() }
        return nil
    }

    /// A container's cgroup and pid from its verbose status.
    public static func container(verboseInfo json: String) throws(ReplyError) -> (cgroup: FilePath?, pid: Int32?) {
        let info: Container = try decode(Data(json.utf8), "ContainerStatus verbose info")
        guard let cgroupsPath = info.runtimeSpec?.linux?.cgroupsPath, !cgroupsPath.isEmpty else {
            return (nil, info.pid)
        }
        return (try path(cgroupsPath), info.pid)
    }

    // MARK: the Docker-compatible API

    /// A container as GET /containers/json lists it.
    public struct Listed: Decodable, Sendable {
        public let id: String
        public let names: [String]?
        public let labels: [String: String]?

        enum CodingKeys: String, CodingKey {
            case id = "Id"
            case names = "Names"
            case labels = "Labels"
        }
    }

    /// A container as GET /containers/{id}/json tells it.
    public struct Inspected: Decodable, Sendable {
        public let id: String
        public let name: String
        public let pid: Int32?
        public let labels: [String: String]

        private enum CodingKeys: String, CodingKey {
            case id = "Id"
            case name = "Name"
            case state = "State"
            case config = "Config"
        }
        private enum StateKeys: String, CodingKey { case pid = "Pid" }
        private enum ConfigKeys: String, CodingKey { case labels = "Labels" }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            id = try container.decode(String.self, forKey: .id)
            name = try container.decode(String.self, forKey: .name)
            pid = try container.nestedContainer(keyedBy: StateKeys.self, forKey: .state).decodeIfPresent(
                Int32.self,
                forKey: .pid
            )
            if container.contains(.config), try !container.decodeNil(forKey: .config) {
                let config = try container.nestedContainer(keyedBy: ConfigKeys.self, forKey: .config)
                labels = try config.decodeIfPresent([String: String].self, forKey: .labels) ?? [:]
            } else {
                labels = [:]
            }
        }

        public func info(source: String) -> ContainerInfo {
            ContainerInfo(
                id: id,
                name: RuntimeReplies.containerName(name),
                labels: labels,
                podNamespace: nil,
                podName: nil,
                source: source
            )
        }
    }

    public static func containers(listed json: Data) throws(ReplyError) -> [Listed] {
        try decode(json, "the container list")
    }

    public static func container(inspected json: Data) throws(ReplyError) -> Inspected {
        try decode(json, "a container's inspect")
    }

    /// podman's own inspect: its State.CgroupPath, the container's cgroup; nil if it names none.
    public static func libpodCgroup(inspected json: Data) throws(ReplyError) -> FilePath? {
        struct Libpod: Decodable {
            let state: State
            struct State: Decodable {
                let cgroupPath: String?
                enum CodingKeys: String, CodingKey { case cgroupPath = "CgroupPath" }
            }
            enum CodingKeys: String, CodingKey { case state = "State" }
        }
        let libpod: Libpod = try decode(json, "podman's inspect")
        guard let text = libpod.state.cgroupPath, !text.isEmpty else { return nil }
        return try path(text)
    }

    /// Docker's names carry a leading slash ("/redis-1").
    public static func containerName(_ raw: String) -> String {
        raw.hasPrefix("/") ? String(raw.dropFirst()) : raw
    }

    // MARK: helpers

    private static func path(_ text: String) throws(ReplyError) -> FilePath {
        do {
            return try CgroupNaming.path(ofCgroupsPath: text)
        } catch {
            throw ReplyError(description: error.description)
        }
    }

    private static func decode<T: Decodable>(_ json: Data, _ what: String) throws(ReplyError) -> T {
        do {
            return try JSONDecoder().decode(T.self, from: json)
        } catch {
            throw ReplyError(description: "\(what): \(error)")
        }
    }
}

/// A reply of a shape keepalive does not know.
public struct ReplyError: Error, CustomStringConvertible, Sendable {
    public let description: String
}
