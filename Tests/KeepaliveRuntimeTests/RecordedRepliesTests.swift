// SPDX-License-Identifier: MIT
import Foundation
import KeepaliveCore
import Testing

import struct SystemPackage.FilePath

@testable import KeepaliveRuntime

/// Replies recorded from containerd and podman (Recorded/README.md), decoded
/// as the runtimes gave them and with their cgroup paths in the systemd
/// driver's forms.
@Suite struct RecordedRepliesTests {
    static func recorded(_ name: String) throws -> String {
        let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Recorded")
        return try String(contentsOf: directory.appendingPathComponent(name), encoding: .utf8)
    }

    let sandbox: String
    let container: String
    /// The recorded pod's cgroup (cgroupfs) and uid.
    let podPath: String
    let uid: String

    init() throws {
        sandbox = try Self.recorded("containerd-1.6-PodSandboxStatus-info.json")
        container = try Self.recorded("containerd-1.6-ContainerStatus-info.json")
        let info = try JSONSerialization.jsonObject(with: Data(sandbox.utf8)) as! [String: Any]
        podPath = ((info["config"] as! [String: Any])["linux"] as! [String: Any])["cgroup_parent"] as! String
        uid = String(podPath.split(separator: "/").last!.dropFirst(3))
    }

    @Test func aPodsCgroupUnderCgroupfs() throws {
        #expect(try RuntimeReplies.podCgroup(verboseInfo: sandbox) == FilePath(String(podPath.dropFirst())))
        let (cgroup, pid) = try RuntimeReplies.container(verboseInfo: container)
        #expect(cgroup?.removingLastComponent() == FilePath(String(podPath.dropFirst())))
        #expect((pid ?? 0) > 0)
    }

    @Test func aPodsCgroupUnderTheSystemdDriver() throws {
        let slice = "kubepods-besteffort-pod\(uid.replacing("-", with: "_")).slice"
        let expected = FilePath("kubepods.slice/kubepods-besteffort.slice/\(slice)")
        // kubelet gives the pod's slice by name; runc's cgroupsPath is slice:prefix:id.
        let systemd = sandbox.replacing("\"\(podPath)\"", with: "\"\(slice)\"")
            .replacing(
                try Regex("\"\(podPath)/([0-9a-f]{64})\""),
                with: { "\"\(slice):cri-containerd:\($0.output[1].substring!)\"" }
            )
        #expect(systemd != sandbox)
        #expect(try RuntimeReplies.podCgroup(verboseInfo: systemd) == expected)
        // Without cgroup_parent, the sandbox's own cgroup's parent.
        let withoutParent = systemd.replacing("\"cgroup_parent\":\"\(slice)\"", with: "\"cgroup_parent\":\"\"")
        #expect(withoutParent != systemd)
        #expect(try RuntimeReplies.podCgroup(verboseInfo: withoutParent) == expected)
        let app = container.replacing(
            try Regex("\"\(podPath)/([0-9a-f]{64})\""),
            with: { "\"\(slice):cri-containerd:\($0.output[1].substring!)\"" }
        )
        let (cgroup, _) = try RuntimeReplies.container(verboseInfo: app)
        #expect(cgroup?.removingLastComponent() == expected)
        #expect(
            cgroup?.lastComponent.map { CgroupNaming.kind(of: $0.string) }
                .map { if case .container(_, .cri) = $0 { true } else { false } } == true
        )
        #expect(CgroupNaming.kind(of: slice) == .pod(uid: uid))
    }

    @Test func anUnexpectedShapeIsAnErrorNeverAnAnswer() throws {
        for reply in [
            "[]", "{\"config\": \"x\"}", "not json", "{\"config\":{\"linux\":{\"cgroup_parent\":\"relative\"}}}",
        ] {
            #expect(throws: ReplyError.self) { try RuntimeReplies.podCgroup(verboseInfo: reply) }
        }
        #expect(try RuntimeReplies.podCgroup(verboseInfo: "{}") == nil)  // says nothing: the next way is tried
    }

    @Test func podmansContainerReplies() throws {
        let listed = try RuntimeReplies.containers(
            listed: Data(try Self.recorded("podman-4.3-containers-json.json").utf8)
        )
        #expect(listed.map { $0.names?.first } == ["/redis-1"])
        let inspected = try RuntimeReplies.container(
            inspected: Data(try Self.recorded("podman-4.3-container-inspect.json").utf8)
        )
        let info = inspected.info(source: "test")
        #expect(info.name == "redis-1" && info.labels["com.example.team"] == "cache" && info.id == listed[0].id)
        #expect((inspected.pid ?? 0) > 0)
        let libpod = try RuntimeReplies.libpodCgroup(
            inspected: Data(try Self.recorded("podman-4.3-libpod-container-inspect.json").utf8)
        )
        #expect(libpod == FilePath("libpod_parent/libpod-\(info.id)"))
    }
}
