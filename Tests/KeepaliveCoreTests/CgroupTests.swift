// SPDX-License-Identifier: MIT
import Testing

import struct SystemPackage.FilePath

@testable import KeepaliveCore

@Suite struct CgroupTests {
    static let hybridMountinfo = """
        31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
        32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
        40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
        41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
        """

    @Test func findsHybridCgroup2Mount() {
        #expect(CgroupFS.cgroup2MountPoint(inMountinfo: Self.hybridMountinfo) == "/sys/fs/cgroup/unified")
    }

    @Test func findsUnifiedMountWithOptionalFields() {
        let text = "35 24 0:30 / /sys/fs/cgroup rw,nosuid shared:9 master:2 - cgroup2 cgroup2 rw,nsdelegate\n"
        #expect(CgroupFS.cgroup2MountPoint(inMountinfo: text) == "/sys/fs/cgroup")
    }

    @Test func unescapesMountPaths() {
        let text = "35 24 0:30 / /mnt/my\\040cgroups rw - cgroup2 none rw\n"
        #expect(CgroupFS.cgroup2MountPoint(inMountinfo: text) == "/mnt/my cgroups")
    }

    @Test func noCgroup2() {
        #expect(
            CgroupFS.cgroup2MountPoint(inMountinfo: "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw\n") == nil
        )
    }

    @Test func resolveRejectsPathsOutsideTheMount() {
        let fs = CgroupFS(mount: "/sys/fs/cgroup/unified")
        #expect(throws: CgroupError.notCgroup2("/tmp", mountPoint: "/sys/fs/cgroup/unified")) { try fs.resolve("/tmp") }
        #expect(throws: CgroupError.ambiguous("../../cpu")) { try fs.resolve("../../cpu") }
    }

    /// The root cgroup only when named: never from an empty or relative path.
    @Test(arguments: ["", ".", "./", "a/..", "a/./b"])
    func resolveRefusesPathsThatOnlyLookLikeTheRoot(argument: String) {
        #expect(throws: CgroupError.ambiguous(argument)) {
            try CgroupFS(mount: "/sys/fs/cgroup/unified").resolve(argument)
        }
    }

    @Test func displaysOddBytesEscaped() {
        let name = FilePath.Component(platformString: [CChar(bitPattern: 0xff), 0x61, 0x0a, 0])!
        #expect(FilePath("pods").appending(name).cgroupDisplay == "pods/\\xffa\\x0a")
        #expect(FilePath().cgroupDisplay == "/")
        #expect(FilePath("a/b/c").ancestors == ["a/b", "a", ""])
    }
}

@Suite struct PrivilegeTests {
    @Test func parsesEffectiveCapabilities() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n"
        #expect(Privileges.effectiveCapabilities(inStatus: status) == 0x1ff_ffff_ffff)
    }

    @Test func namesEachMissingCapability() {
        #expect(Privileges.missing(fromEffective: 0) == ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"])
        #expect(Privileges.missing(fromEffective: 1 << 39 | 1 << 12 | 1 << 38) == [])
        #expect(Privileges.missing(fromEffective: 1 << 21 | 1 << 12) == [])  // CAP_SYS_ADMIN covers BPF, PERFMON
        #expect(Privileges.missing(fromEffective: 1 << 39 | 1 << 38) == ["CAP_NET_ADMIN"])
    }
}
