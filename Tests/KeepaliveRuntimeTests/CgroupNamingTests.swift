// SPDX-License-Identifier: MIT
import Testing

import struct SystemPackage.FilePath

@testable import KeepaliveRuntime

@Suite struct CgroupNamingTests {
    @Test func slicesExpandByDash() {
        #expect(
            CgroupNaming.slicePath("kubepods-besteffort-pod1.slice")
                == FilePath("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice")
        )
        #expect(CgroupNaming.slicePath("-.slice") == FilePath())
        #expect(CgroupNaming.slicePath("a--b.slice") == nil)
        #expect(CgroupNaming.slicePath("app.service") == nil)
    }

    static let id = String(repeating: "ab", count: 32)

    @Test(arguments: [
        // cgroupfs: paths, as kubelet's cgroup_parent and runc's cgroupsPath give them.
        ("/kubepods/besteffort/pod1", "kubepods/besteffort/pod1"),
        ("/kubepods/pod1/\(id)", "kubepods/pod1/\(id)"),
        ("/libpod_parent/libpod-\(id)", "libpod_parent/libpod-\(id)"),
        // systemd: a slice's name alone (kubelet), or runc's slice:prefix:name.
        ("kubepods-burstable-pod1_2.slice", "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1_2.slice"),
        ("kubepods-pod1.slice:cri-containerd:\(id)", "kubepods.slice/kubepods-pod1.slice/cri-containerd-\(id).scope"),
        (
            "kubepods-besteffort-pod1.slice:crio:\(id)",
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/crio-\(id).scope"
        ),
        ("system.slice:docker:\(id)", "system.slice/docker-\(id).scope"),
        ("machine.slice:libpod:\(id)", "machine.slice/libpod-\(id).scope"),
        (":docker:\(id)", "system.slice/docker-\(id).scope"),  // no slice: runc's default
    ])
    func cgroupsPathsInBothDriversForms(text: String, path: String) throws {
        #expect(try CgroupNaming.path(ofCgroupsPath: text) == FilePath(path))
    }

    @Test(arguments: ["relative/path", "/a/../b", "a:b", "x.slice:p:n/m", "bad-.slice", "/"])
    func unknownFormsAreErrorsNotGuesses(text: String) {
        #expect(throws: CgroupNamingError.self) { try CgroupNaming.path(ofCgroupsPath: text) }
    }

    @Test func directoryNamesSayWhatTheyHold() {
        let uid = "0b6a1b8e-7c1f-4f2a-9d1e-3c5b2a1f0e9d"
        let underscored = uid.replacing("-", with: "_")
        #expect(CgroupNaming.kind(of: "pod\(uid)") == .pod(uid: uid))
        #expect(CgroupNaming.kind(of: "kubepods-besteffort-pod\(underscored).slice") == .pod(uid: uid))
        #expect(CgroupNaming.kind(of: "kubepods-pod\(underscored).slice") == .pod(uid: uid))
        #expect(CgroupNaming.kind(of: Self.id) == .container(id: Self.id, .unknown))
        #expect(CgroupNaming.kind(of: "cri-containerd-\(Self.id).scope") == .container(id: Self.id, .cri))
        #expect(CgroupNaming.kind(of: "crio-\(Self.id).scope") == .container(id: Self.id, .cri))
        #expect(CgroupNaming.kind(of: "docker-\(Self.id).scope") == .container(id: Self.id, .docker))
        #expect(CgroupNaming.kind(of: "libpod-\(Self.id)") == .container(id: Self.id, .docker))
        for other in [
            "kubepods", "besteffort", "kubepods-besteffort.slice", "podnotauid", "docker-abc.scope",
            "system.slice", "nginx.service", "pod\(uid)x",
        ] {
            #expect(CgroupNaming.kind(of: other) == .other, "\(other)")
        }
    }
}
