// SPDX-License-Identifier: MIT
import BPF
import CLibBPF
import Glibc
import Synchronization

/// What the running kernel gives keepalive, found by asking it (a program or
/// helper load, a BTF type), never by its version: distribution kernels carry
/// backports. Enforcement (policies on new connections, nesting, the agent,
/// repair, upgrades) needs only the base; each feature needs more, and is off
/// alone where the kernel lacks it. docs/kernels.md has the same table, and
/// the kernel suite (Tests/kernels) checks this against it on real kernels.
public struct KernelFeatures: Sendable, Equatable {
    /// One thing a probe asks the kernel.
    public enum Requirement: String, CaseIterable, Sendable {
        case btf, skcToTCPSockInSockOps, loop, globalFunctionPointerArguments, currentTaskInSockopt,
            errorReportTracepoint, tcpIterator, setsockoptInTCPIterator, getsockoptInTCPIterator,
            windowClampInSetsockopt, maxsegInSetsockopt, readOnlyCast

        /// What the kernel lacks, as it reads after "this kernel has no".
        public var what: String {
            switch self {
            case .btf: "BTF (\(KernelBTF.path), CONFIG_DEBUG_INFO_BTF)"
            case .skcToTCPSockInSockOps: "bpf_skc_to_tcp_sock in sock_ops programs"
            case .loop: "bpf_loop"
            case .globalFunctionPointerArguments: "global BPF functions with pointer arguments"
            case .currentTaskInSockopt: "bpf_get_current_task_btf in cgroup sockopt programs"
            case .errorReportTracepoint: "tracepoint inet_sk_error_report"
            case .tcpIterator: "TCP iterator (iter/tcp)"
            case .setsockoptInTCPIterator: "bpf_setsockopt in TCP iterators"
            case .getsockoptInTCPIterator: "bpf_getsockopt in TCP iterators"
            case .windowClampInSetsockopt: "TCP_WINDOW_CLAMP in bpf_setsockopt"
            case .maxsegInSetsockopt: "TCP_MAXSEG in bpf_setsockopt"
            case .readOnlyCast: "bpf_rdonly_cast in sock_ops programs"
            }
        }

        /// The upstream release that brought it.
        public var since: String {
            switch self {
            case .btf: "5.4"
            case .skcToTCPSockInSockOps: "5.10"
            case .loop: "5.17"
            case .globalFunctionPointerArguments: "5.12"
            case .currentTaskInSockopt: "5.11"
            case .errorReportTracepoint: "5.14"
            case .tcpIterator: "5.9"
            case .setsockoptInTCPIterator, .getsockoptInTCPIterator: "5.15"
            case .windowClampInSetsockopt: "5.11"
            case .maxsegInSetsockopt: "6.0"
            case .readOnlyCast: "6.2"
            }
        }

        public var lacking: String { "this kernel has no \(what) (Linux \(since))" }

        /// What keepalive's programs need at all: without these nothing is enforced.
        static let base: [Requirement] = [.btf, .skcToTCPSockInSockOps]
    }

    /// What users ask for that not every kernel gives.
    public enum Feature: String, CaseIterable, Sendable {
        case unlimitedDepth = "unlimited_depth"
        case rules
        case precedence
        case reapedCounting = "reaped_counting"
        case existingSockets = "existing_sockets"
        case inspect
        case windowClamp = "window_clamp"
        case maxseg

        /// Its name in one line of `status`, the log and errors.
        public var name: String {
            switch self {
            case .unlimitedDepth: "sockets over \(KA_BOUNDED_DEPTH) cgroup levels below their policy"
            case .rules: "rules by destination"
            case .precedence: "precedence: policy"
            case .reapedCounting: "reaped-connection counting"
            case .existingSockets: "existing sockets"
            case .inspect: "inspect"
            case .windowClamp: "window_clamp"
            case .maxseg: "maxseg"
            }
        }

        /// The key in `status --json` and the metric's label.
        public var key: String { rawValue }

        public var requirements: [Requirement] {
            switch self {
            case .unlimitedDepth: [.loop]
            case .rules: [.globalFunctionPointerArguments]
            case .precedence: [.currentTaskInSockopt]
            case .reapedCounting: [.errorReportTracepoint]
            // One iterator program applies and reads back: both need it whole.
            case .existingSockets: [.tcpIterator, .setsockoptInTCPIterator, .getsockoptInTCPIterator]
            case .inspect: [.tcpIterator, .getsockoptInTCPIterator, .setsockoptInTCPIterator]
            case .windowClamp: [.windowClampInSetsockopt]
            case .maxseg: [.maxsegInSetsockopt]
            }
        }
    }

    /// The requirements the kernel met.
    public let present: Set<Requirement>

    public init(present: Set<Requirement>) {
        self.present = present
    }

    /// A kernel that has everything (tests against an in-memory kernel).
    public static let everything = KernelFeatures(present: Set(Requirement.allCases))

    /// The first requirement of `feature` this kernel lacks; nil when it is on.
    public func lacking(_ feature: Feature) -> Requirement? {
        feature.requirements.first { !present.contains($0) }
    }

    public func has(_ feature: Feature) -> Bool { lacking(feature) == nil }

    /// What `status` and the agent say of a feature that is off.
    public func offLine(_ feature: Feature) -> String? {
        lacking(feature).map { "\(feature.name): off: \($0.lacking)" }
    }

    /// Which build of the programs this kernel runs (enum ka_build in bpf/keepalive_common.bpf.h).
    public var build: ProgramBuild {
        guard has(.rules) else { return .basic }
        guard has(.unlimitedDepth) else { return .bounded }
        return present.contains(.readOnlyCast) ? .cast : .full
    }

    /// The base keepalive needs, or a one-line error naming what is missing.
    public func requireBase() throws(KernelLacks) {
        if let missing = Requirement.base.first(where: { !present.contains($0) }) {
            throw KernelLacks(feature: nil, requirement: missing)
        }
    }

    public func require(_ feature: Feature) throws(KernelLacks) {
        if let missing = lacking(feature) { throw KernelLacks(feature: feature, requirement: missing) }
    }

    /// What a policy asks for that this kernel does not give (the first such).
    public func unsupported(by policy: Policy) -> KernelLacks? {
        var wanted: [Feature] = []
        if !policy.rules.isEmpty { wanted.append(.rules) }
        if policy.precedence == .policy { wanted.append(.precedence) }
        // Deaths are seen at the reaped-connection tracepoint: without it a path would only ever survive.
        if policy.observation.observesPaths { wanted.append(.reapedCounting) }
        for (option, feature) in [(PolicyOption.windowClamp, Feature.windowClamp), (.maxseg, .maxseg)]
        where policy[option] != 0 || policy.rules.contains(where: { ($0.options[option] ?? 0) != 0 }) {
            wanted.append(feature)
        }
        for feature in wanted {
            if let missing = lacking(feature) { return KernelLacks(feature: feature, requirement: missing) }
        }
        return nil
    }

    // MARK: probing

    private static let probed = Mutex<KernelFeatures?>(nil)

    /// This kernel's features, probed once per process. A probe that could
    /// not run (no privilege, no memory) throws: that is no answer.
    public static func probe() throws -> KernelFeatures {
        try probed.withLock { cached throws -> KernelFeatures in
            if let cached { return cached }
            let prober = Prober()
            let found = try KernelFeatures(present: Set(Requirement.allCases.filter { try prober.holds($0) }))
            cached = found
            return found
        }
    }
}

/// The build of keepalive's programs a kernel runs: each program is compiled
/// in three (bpf/keepalive_common.bpf.h, enum ka_build), named by suffix, and
/// the sock_ops program in a fourth.
public enum ProgramBuild: String, Sendable, CaseIterable {
    /// The full build, its sock_ops program reading the socket through
    /// bpf_rdonly_cast, which costs no call on the connection's path.
    case cast
    /// bpf_loop walks: any depth; rules.
    case full
    /// A bounded walk (KA_BOUNDED_DEPTH levels); rules.
    case bounded
    /// The bounded walk, no rules.
    case basic
}

/// A policy, command or entry that asks for what this kernel lacks.
public struct KernelLacks: Error, CustomStringConvertible, Sendable, Equatable {
    /// nil: the base every privileged command needs.
    public let feature: KernelFeatures.Feature?
    public let requirement: KernelFeatures.Requirement

    public var description: String {
        guard let feature else { return "keepalive's BPF programs cannot run here: \(requirement.lacking)" }
        return "\(feature.name): \(requirement.lacking)"
    }
}

/// The probes themselves, each asked of the running kernel; the kernel's BTF
/// read once for all of them.
private final class Prober {
    private var btfRead = false
    private var btf: KernelBTF?
    private var iterator: KernelProbe.AttachPoint??

    private func kernelBTF() throws -> KernelBTF? {
        if !btfRead {
            btf = try KernelBTF()
            btfRead = true
        }
        return btf
    }

    func holds(_ requirement: KernelFeatures.Requirement) throws -> Bool {
        switch requirement {
        case .btf:
            return try kernelBTF() != nil
        case .skcToTCPSockInSockOps:
            return try KernelProbe.helper(BPF_FUNC_skc_to_tcp_sock, in: BPF_PROG_TYPE_SOCK_OPS)
        case .loop:
            return try KernelProbe.helper(BPF_FUNC_loop, in: BPF_PROG_TYPE_SOCK_OPS)
        case .globalFunctionPointerArguments:
            return try ProbeObject.globalFunctionPointerArguments()
        case .readOnlyCast:  // a weak kfunc: libbpf resolves it only from the kernel's BTF
            return try kernelBTF()?.hasFunction("bpf_rdonly_cast") == true && ProbeObject.readOnlyCast()
        case .currentTaskInSockopt:
            let setsockopt = KernelProbe.AttachPoint(type: BPF_CGROUP_SETSOCKOPT, btfID: 0)
            return try KernelProbe.programType(BPF_PROG_TYPE_CGROUP_SOCKOPT, attach: setsockopt)
                && KernelProbe.helper(
                    BPF_FUNC_get_current_task_btf,
                    in: BPF_PROG_TYPE_CGROUP_SOCKOPT,
                    attach: setsockopt
                )
        case .errorReportTracepoint:
            return try kernelBTF()?.hasTypedef("btf_trace_inet_sk_error_report") ?? false
        case .tcpIterator:
            return try tcpIterator() != nil
        case .setsockoptInTCPIterator:
            return try tcpIterator().map {
                try KernelProbe.helper(BPF_FUNC_setsockopt, in: BPF_PROG_TYPE_TRACING, attach: $0)
            } ?? false
        case .getsockoptInTCPIterator:
            return try tcpIterator().map {
                try KernelProbe.helper(BPF_FUNC_getsockopt, in: BPF_PROG_TYPE_TRACING, attach: $0)
            } ?? false
        // Options bpf_setsockopt takes cannot be asked of the verifier, only of
        // a socket: these look for the kernel function the change that brought
        // each made for it (tests check the answer against a socket on every
        // kernel they boot).
        case .windowClampInSetsockopt:
            return try kernelBTF()?.hasFunction("tcp_set_window_clamp") ?? false
        case .maxsegInSetsockopt:  // bpf_setsockopt(SOL_TCP) through do_tcp_setsockopt(): every TCP option
            return try kernelBTF()?.hasFunction("sol_tcp_sockopt") ?? false
        }
    }

    /// Where a TCP iterator program attaches, when the kernel has the iterator and loads such a program.
    private func tcpIterator() throws -> KernelProbe.AttachPoint? {
        if let iterator { return iterator }
        var found: KernelProbe.AttachPoint?
        if let id = try kernelBTF()?.typeID("bpf_iter_tcp", kind: KernelBTF.function) {
            let point = KernelProbe.AttachPoint(type: BPF_TRACE_ITER, btfID: id)
            found = try KernelProbe.programType(BPF_PROG_TYPE_TRACING, attach: point) ? point : nil
        }
        iterator = .some(found)
        return found
    }
}

/// The running kernel's release (uname -r): said to people, never used to decide anything.
public enum KernelRelease {
    public static var current: String {
        var names = utsname()
        guard uname(&names) == 0 else { return "unknown" }
        return withUnsafeBytes(of: &names.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }
}
