// SPDX-License-Identifier: MIT
import Testing

@testable import KeepaliveCore

/// What a kernel's probed requirements make of keepalive: the build of the
/// programs it runs, the features it names off, and the policies refused on
/// it before anything changes (the probes themselves run on real kernels:
/// Tests/integration/test_kernel_features.py, in every guest).
@Suite struct KernelFeaturesTests {
    /// Debian 11's 5.10 as the guests probe it: the base and the TCP iterator without its helpers.
    static let linux510 = KernelFeatures(present: [.btf, .skcToTCPSockInSockOps, .tcpIterator])
    /// 5.15: all but bpf_loop.
    static let linux515 = KernelFeatures(present: Set(KernelFeatures.Requirement.allCases).subtracting([.loop]))

    @Test func theBuildIsTheFirstTheKernelRuns() {
        #expect(KernelFeatures.everything.build == .cast)
        // 6.1: everything but bpf_rdonly_cast.
        let linux61 = KernelFeatures(present: Set(KernelFeatures.Requirement.allCases).subtracting([.readOnlyCast]))
        #expect(linux61.build == .full)
        // The cast is the full build's: without bpf_loop, the bounded build whatever else.
        #expect(Self.linux515.build == .bounded)
        #expect(Self.linux510.build == .basic)
        // bpf_loop without pointer arguments (no upstream kernel): no rules, so the basic build.
        #expect(KernelFeatures(present: [.btf, .skcToTCPSockInSockOps, .loop]).build == .basic)
    }

    @Test func eachFeatureOffIsOneLineNamingWhatTheKernelLacks() {
        #expect(KernelFeatures.Feature.allCases.compactMap(KernelFeatures.everything.offLine) == [])
        #expect(
            Self.linux515.offLine(.unlimitedDepth)
                == "sockets over 32 cgroup levels below their policy: off: this kernel has no bpf_loop (Linux 5.17)"
        )
        // The first requirement missing is named: the iterator is there, its helpers are not.
        #expect(
            Self.linux510.offLine(.existingSockets)
                == "existing sockets: off: this kernel has no bpf_setsockopt in TCP iterators (Linux 5.15)"
        )
        #expect(
            Self.linux510.offLine(.inspect)
                == "inspect: off: this kernel has no bpf_getsockopt in TCP iterators (Linux 5.15)"
        )
        #expect(KernelFeatures.Feature.allCases.filter { !Self.linux510.has($0) } == KernelFeatures.Feature.allCases)
    }

    @Test func theBaseIsRequiredOfEveryPrivilegedCommand() throws {
        try KernelFeatures.everything.requireBase()
        #expect(throws: KernelLacks(feature: nil, requirement: .skcToTCPSockInSockOps)) {
            try KernelFeatures(present: [.btf]).requireBase()
        }
        #expect(
            "\(KernelLacks(feature: nil, requirement: .btf))"
                == "keepalive's BPF programs cannot run here: this kernel has no BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF) (Linux 5.4)"
        )
    }

    @Test func aPolicyAsksForWhatItUses() {
        let features = Self.linux510
        #expect(features.unsupported(by: Policy([.keepidle: 30])) == nil)
        #expect(features.unsupported(by: Policy([:], rules: [Rule(localPorts: [80])]))?.feature == .rules)
        var precedence = Policy()
        precedence.precedence = .policy
        #expect(features.unsupported(by: precedence)?.feature == .precedence)
        #expect(features.unsupported(by: Policy([.windowClamp: 20000]))?.feature == .windowClamp)
        #expect(features.unsupported(by: Policy([.maxseg: 1200]))?.feature == .maxseg)
        // A rule's own option counts too.
        let ruled = Policy([:], rules: [Rule(localPorts: [80], options: [.maxseg: 1200])])
        #expect(Self.linux515.unsupported(by: ruled) == nil)
        #expect(
            KernelFeatures(present: Self.linux515.present.subtracting([.maxsegInSetsockopt]))
                .unsupported(by: ruled)?.feature == .maxseg
        )
    }

    @Test func theTransactionRefusesSuchAPolicyBeforeChangingAnything() throws {
        let kernel = InMemoryKernel()
        kernel.features = Self.linux510
        let app = kernel.mkdir("app")
        let txn = try Transaction(kernel: kernel)
        try txn.apply(Policy([.keepidle: 30]), to: app)
        let before = kernel.operations
        #expect(throws: KernelLacks.self) {
            try txn.apply(Policy([.keepidle: 40], rules: [Rule(localPorts: [80])]), to: app)
        }
        #expect(kernel.operations == before && kernel.policies[app.id]?.policy.keepidle == 30)
        // The agent's passes: that cgroup's failure, the others enforced.
        let other = kernel.mkdir("other")
        let outcome = txn.enforce([
            Transaction.Desire(cgroup: app, policy: Policy([.windowClamp: 1000]), source: "f:1"),
            Transaction.Desire(cgroup: other, policy: Policy([.keepidle: 20]), source: "f:2"),
        ])
        #expect(outcome.failures.map(\.cgroup) == [app.path] && outcome.failures.first?.scope == .cgroup)
        #expect(kernel.policies[other.id]?.policy.keepidle == 20)
    }
}
