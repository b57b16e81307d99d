// SPDX-License-Identifier: MIT
import BPF
import CLibBPF
import Glibc
import struct SystemPackage.FilePath

/// Which build of keepalive's programs: the version compiled into the object
/// (ka_program_version) and a hash of the object itself.
public struct ProgramIdentity: Equatable, Sendable, CustomStringConvertible {
    public let version: UInt32
    public let hash: UInt64

    public var description: String { "\(version) (\(String(hash, radix: 16).leftPadded(to: 16).prefix(12)))" }

    /// FNV-1a: identity, not security (the object comes from our own binary).
    static func hash(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        bytes.reduce(0xcbf2_9ce4_8422_2325) { ($0 ^ UInt64($1)) &* 0x100_0000_01b3 }
    }
}

/// keepalive.bpf.o (bpf/keepalive.bpf.c), opened through its generated
/// skeleton: the maps and programs are its fields, not names in strings.
/// KEEPALIVE_BPF_OBJECT names another build of the object to use instead of
/// the embedded one (development: try a program without rebuilding the binary).
final class MainObject {
    static let overrideVariable = "KEEPALIVE_BPF_OBJECT"

    let skeleton: UnsafeMutablePointer<keepalive_bpf>
    let identity: ProgramIdentity
    let maps: Maps
    let programs: Programs
    private let loader = BPFObject(name: "keepalive")
    private let override: [UInt8]?  // libbpf reads it until the load is done

    /// The skeleton's maps, unwrapped once (it fills every field when it opens).
    struct Maps {
        let policies, counters, errors, meta, events, eventsHead, rules, ruleCounters: OpaquePointer

        /// Every map, as libbpf pins them.
        var all: [OpaquePointer] { [policies, counters, errors, meta, events, eventsHead, rules, ruleCounters] }
    }

    /// The skeleton's programs, likewise.
    struct Programs {
        let sockops, setsockopt, reaped: OpaquePointer

        /// The program linked to cgroups for each kind.
        subscript(kind: Attachment) -> OpaquePointer {
            switch kind {
            case .sockops: sockops
            case .setsockopt: setsockopt
            }
        }

        var all: [OpaquePointer] { [sockops, setsockopt, reaped] }
    }

    init(pinRoot: String?) throws {
        let overridePath = getenv(Self.overrideVariable).map { String(cString: $0) }
        override = try overridePath.map { path throws(SyscallError) in try readFileBytes(FilePath(path)) }
        var embeddedSize = 0
        let embedded = keepalive_bpf__elf_bytes(&embeddedSize)
        let bytes = override.map { UnsafeRawBufferPointer(start: $0.withUnsafeBytes(\.baseAddress), count: $0.count) }
            ?? UnsafeRawBufferPointer(start: embedded, count: embeddedSize)
        skeleton = try loader.open(pinRoot: pinRoot) { opts in
            ka_open_keepalive(opts, overridePath == nil ? nil : bytes.baseAddress, bytes.count)
        }
        let (m, p) = (skeleton.pointee.maps, skeleton.pointee.progs)
        guard let policies = m.ka_policies_v3, let counters = m.ka_counters, let errors = m.ka_errors,
              let meta = m.ka_meta, let events = m.ka_events, let eventsHead = m.ka_events_head,
              let rules = m.ka_rules, let ruleCounters = m.ka_rule_counters,
              let sockops = p.keepalive_sockops, let setsockopt = p.keepalive_setsockopt, let reaped = p.keepalive_reaped
        else {
            keepalive_bpf__destroy(skeleton)
            throw SyscallError("open BPF object keepalive: its skeleton lacks a map or program", errno: EINVAL)
        }
        maps = Maps(policies: policies, counters: counters, errors: errors, meta: meta, events: events,
                    eventsHead: eventsHead, rules: rules, ruleCounters: ruleCounters)
        programs = Programs(sockops: sockops, setsockopt: setsockopt, reaped: reaped)
        identity = ProgramIdentity(version: skeleton.pointee.rodata.pointee.ka_program_version,
                                   hash: ProgramIdentity.hash(bytes))
    }

    deinit { keepalive_bpf__destroy(skeleton) }

    /// Where libbpf pins a map of this object (set when it was opened with a pin root).
    func pinPath(_ map: OpaquePointer) throws -> String {
        guard let path = BPFObject.pinPath(ofMap: map) else {
            throw SyscallError("pin path of map \(BPFObject.name(ofMap: map)): the object was opened without a pin root",
                               errno: EINVAL)
        }
        return path
    }

    /// Whether this kernel has the tracepoint the reaped-connection counter hooks.
    static var kernelReportsSocketErrors: Bool {
        FeatureProbe.kernelType("btf_trace_inet_sk_error_report", kind: Int32(BTF_KIND_TYPEDEF))
    }

    func load(countingReaped: Bool) throws(LoadError) {
        bpf_program__set_autoload(programs.reaped, countingReaped)
        skeleton.pointee.rodata.pointee.ka_hz = KernelClock.ticksPerSecond
        try loader.load(skeleton.pointee.obj, { keepalive_bpf__load(skeleton) }, probes: [
            .btf,
            .programType(BPF_PROG_TYPE_SOCK_OPS, "sock_ops programs (Linux 4.13)"),
            .programType(BPF_PROG_TYPE_CGROUP_SOCKOPT, "cgroup sockopt programs (Linux 5.3)"),
            .helper(BPF_FUNC_skc_to_tcp_sock, in: BPF_PROG_TYPE_SOCK_OPS, "bpf_skc_to_tcp_sock (Linux 5.9)"),
            .helper(BPF_FUNC_loop, in: BPF_PROG_TYPE_SOCK_OPS, "bpf_loop (Linux 5.17)"),
            .helper(BPF_FUNC_get_current_task_btf, in: BPF_PROG_TYPE_CGROUP_SOCKOPT,
                    "bpf_get_current_task_btf in sockopt programs (Linux 5.11)"),
        ])
    }
}

/// keepalive_iter.bpf.o: the TCP iterator behind `--existing` and `inspect`.
final class IteratorObject {
    let skeleton: UnsafeMutablePointer<keepalive_iter_bpf>
    private let loader = BPFObject(name: "keepalive_iter")

    /// With `pinRoot`, the iterator shares the state's pinned maps (libbpf
    /// reuses them by name); without, it gets empty ones of its own.
    init(pinRoot: String?) throws {
        skeleton = try loader.open(pinRoot: pinRoot) { keepalive_iter_bpf__open_opts($0) }
        if pinRoot == nil {
            let maps = skeleton.pointee.maps
            for map in [maps.ka_policies_v3, maps.ka_counters, maps.ka_errors, maps.ka_rules,
                        maps.ka_rule_counters].compactMap({ $0 }) {
                try BPFObject.unpinned(map)
            }
        }
    }

    deinit { keepalive_iter_bpf__destroy(skeleton) }

    func load() throws(LoadError) {
        try loader.load(skeleton.pointee.obj, { keepalive_iter_bpf__load(skeleton) }, probes: [
            .btf,
            .programType(BPF_PROG_TYPE_TRACING, "BPF tracing programs (Linux 5.5)"),
            .helper(BPF_FUNC_setsockopt, in: BPF_PROG_TYPE_TRACING, "bpf_setsockopt in TCP iterators (Linux 5.14)"),
            .helper(BPF_FUNC_loop, in: BPF_PROG_TYPE_TRACING, "bpf_loop (Linux 5.17)"),
        ])
    }
}
