// SPDX-License-Identifier: MIT
import Foundation
import Testing

import struct SystemPackage.FilePath

@testable import KeepaliveCore

/// Glob and unit resolution over a directory tree shaped like a cgroup
/// hierarchy (the resolver only reads directories, so any tree will do).
@Suite final class TargetResolverTests {
    let root: URL
    let resolver: TargetResolver

    init() throws {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("ka-resolver-\(UUID().uuidString)")
        for path in [
            "kubepods.slice/pod-a", "kubepods.slice/pod-b/ctr", "system.slice/nginx.service",
            "system.slice/app.slice/db.service", "other",
        ] {
            try FileManager.default.createDirectory(
                at: root.appendingPathComponent(path),
                withIntermediateDirectories: true
            )
        }
        resolver = TargetResolver(cgroups: CgroupFS(mount: FilePath(root.path)))
    }

    /// Each test has its own tree in the temporary directory: removed when it ends.
    deinit { try? FileManager.default.removeItem(at: root) }

    func paths(_ resolution: TargetResolver.Resolution) -> Set<String> {
        Set(resolution.matches.values.map(\.cgroup.path.string))
    }

    func config(_ text: String) throws -> AgentConfig { try AgentConfig.parse(text, file: "t.yaml") }

    @Test func globsMatchOneComponentEach() throws {
        let resolution = resolver.resolve(try config("policies:\n  - cgroup: \"kubepods.slice/*\"\n"))
        #expect(paths(resolution) == ["kubepods.slice/pod-a", "kubepods.slice/pod-b"])
        #expect(resolution.watch == ["", "kubepods.slice"])
    }

    @Test func laterEntriesWinOnTheSameCgroup() throws {
        let resolution = resolver.resolve(
            try config(
                """
                policies:
                  - cgroup: "kubepods.slice/*"
                    keepidle: 1
                  - cgroup: kubepods.slice/pod-a
                    keepidle: 2
                """
            )
        )
        #expect(resolution.matches.values.first { $0.cgroup.path == "kubepods.slice/pod-a" }?.spec == 1)
    }

    @Test func unitsAreFoundInSlices() throws {
        let resolution = resolver.resolve(try config("policies:\n  - unit: db.service\n"))
        #expect(paths(resolution) == ["system.slice/app.slice/db.service"])
    }

    @Test func aNewDirectoryIsResolvedFromWhereItIs() throws {
        let file = try config(
            """
            policies:
              - cgroup: "kubepods.slice/*/ctr"
              - unit: late.service
            """
        )
        try FileManager.default.createDirectory(
            at: root.appendingPathComponent("kubepods.slice/pod-c/ctr"),
            withIntermediateDirectories: true
        )
        let cgroups = resolver.cgroups
        let pod = try #require(cgroups.cgroup(at: "kubepods.slice/pod-c"))
        let appeared = resolver.resolve(file, appeared: pod)
        #expect(paths(appeared) == ["kubepods.slice/pod-c/ctr"])
        #expect(appeared.watch == ["kubepods.slice/pod-c"])
        try FileManager.default.createDirectory(
            at: root.appendingPathComponent("system.slice/late.service"),
            withIntermediateDirectories: true
        )
        let unit = try #require(cgroups.cgroup(at: "system.slice/late.service"))
        #expect(paths(resolver.resolve(file, appeared: unit)) == ["system.slice/late.service"])
        let unrelated = try #require(cgroups.cgroup(at: "other"))
        #expect(resolver.resolve(file, appeared: unrelated).matches.isEmpty)
    }

    @Test func namesThatAreNotUTF8AreMatchedAsBytes() throws {
        let odd = FilePath.Component(platformString: [CChar(bitPattern: 0xff), 0x78, 0])!
        let path = FilePath(root.path).appending("kubepods.slice").appending(odd)
        _ = path.withPlatformString { mkdir($0, 0o755) }
        let resolution = resolver.resolve(try config("policies:\n  - cgroup: \"kubepods.slice/*\"\n"))
        #expect(resolution.matches.values.contains { $0.cgroup.path.lastComponent == odd })
    }
}
