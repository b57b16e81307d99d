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
/// Each program is there in three builds, sock_ops in four (ProgramBuild);
/// the object loads the one the kernel runs, and only the programs whose
/// feature it has.
/// KEEPALIVE_BPF_OBJECT names another build of the object to use instead of
/// the embedded one (development: try a program without rebuilding the binary).
final class MainObject {
    static let overrideVariable = "KEEPALIVE_BPF_OBJECT"

    let skeleton: UnsafeMutablePointer<keepalive_bpf>
    let identity: ProgramIdentity
    let features: KernelFeatures
    let maps: Maps
    let programs: Programs
    private let loader = BPFObject(name: "keepalive")
    private let override: [UInt8]?  // libbpf reads it until the load is done

    /// The skeleton's maps, unwrapped once (it fills every field when it opens).
    struct Maps {
        let policies, counters, errors, meta, events, eventsHead, rules, ruleSets, ruleCounters, paths: OpaquePointer

        /// Every map, as libbpf pins them.
        var all: [OpaquePointer] {
            [policies, counters, errors, meta, events, eventsHead, rules, ruleSets, ruleCounters, paths]
        }
    }

    /// The programs of the kernel's build, each pinned under its role's name
    /// (the full build's) whichever build it is: a pin names what a program
    /// does, and the build follows the kernel.
    struct Programs {
        let sockops, setsockopt, reaped: OpaquePointer
        /// Whether the kernel runs them: the setsockopt hook needs `precedence`, reaped counting its tracepoint.
        let hasSetsockopt, hasReaped: Bool

        static let sockopsPin = "keepalive_sockops"
        static let setsockoptPin = "keepalive_setsockopt"
        static let reapedPin = "keepalive_reaped"

        /// The program linked to cgroups for each kind.
        subscript(kind: Attachment) -> OpaquePointer {
            switch kind {
            case .sockops: sockops
            case .setsockopt: setsockopt
            }
        }

        static func pin(_ kind: Attachment) -> String {
            switch kind {
            case .sockops: sockopsPin
            case .setsockopt: setsockoptPin
            }
        }

        static let pins = [sockopsPin, setsockoptPin, reapedPin]
    }

    init(pinRoot: String?, features: KernelFeatures) throws {
        let overridePath = getenv(Self.overrideVariable).map { String(cString: $0) }
        override = try overridePath.map { path throws(SyscallError) in try readFileBytes(FilePath(path)) }
        var embeddedSize = 0
        let embedded = keepalive_bpf__elf_bytes(&embeddedSize)
        let bytes =
            override.map { UnsafeRawBufferPointer(start: $0.withUnsafeBytes(\.baseAddress), count: $0.count) }
            ?? UnsafeRawBufferPointer(start: embedded, count: embeddedSize)
        skeleton = try loader.open(pinRoot: pinRoot) { opts in
            ka_open_keepalive(opts, overridePath == nil ? nil : bytes.baseAddress, bytes.count)
        }
        let (m, p) = (skeleton.pointee.maps, skeleton.pointee.progs)
        let chosen: (OpaquePointer?, OpaquePointer?, OpaquePointer?) =
            switch features.build {
            case .cast: (p.keepalive_sockops_cast, p.keepalive_setsockopt, p.keepalive_reaped)
            case .full: (p.keepalive_sockops, p.keepalive_setsockopt, p.keepalive_reaped)
            case .bounded: (p.keepalive_sockops_bounded, p.keepalive_setsockopt_bounded, p.keepalive_reaped_bounded)
            case .basic: (p.keepalive_sockops_basic, p.keepalive_setsockopt_basic, p.keepalive_reaped_basic)
            }
        guard let policies = m.ka_policies_v3, let counters = m.ka_counters_v4, let errors = m.ka_errors,
            let meta = m.ka_meta, let events = m.ka_events, let eventsHead = m.ka_events_head,
            let rules = m.ka_rules, let ruleSets = m.ka_rule_sets, let ruleCounters = m.ka_rule_counters_v4,
            let paths = m.ka_paths,
            let sockops = chosen.0, let setsockopt = chosen.1, let reaped = chosen.2
        else {
            keepalive_bpf__destroy(skeleton)
            throw SyscallError("open BPF object keepalive: its skeleton lacks a map or program", errno: EINVAL)
        }
        maps = Maps(
            policies: policies,
            counters: counters,
            errors: errors,
            meta: meta,
            events: events,
            eventsHead: eventsHead,
            rules: rules,
            ruleSets: ruleSets,
            ruleCounters: ruleCounters,
            paths: paths
        )
        programs = Programs(
            sockops: sockops,
            setsockopt: setsockopt,
            reaped: reaped,
            hasSetsockopt: features.has(.precedence),
            hasReaped: features.has(.reapedCounting)
        )
        self.features = features
        identity = ProgramIdentity(
            version: skeleton.pointee.rodata.pointee.ka_program_version,
            hash: ProgramIdentity.hash(bytes)
        )
    }

    deinit { keepalive_bpf__destroy(skeleton) }

    /// Where libbpf pins a map of this object (set when it was opened with a pin root).
    func pinPath(_ map: OpaquePointer) throws -> String {
        guard let path = BPFObject.pinPath(ofMap: map) else {
            throw SyscallError(
                "pin path of map \(BPFObject.name(ofMap: map)): the object was opened without a pin root",
                errno: EINVAL
            )
        }
        return path
    }

    /// Loads the programs this kernel runs, and no other.
    func load() throws {
        let wanted =
            [programs.sockops] + (programs.hasSetsockopt ? [programs.setsockopt] : [])
            + (programs.hasReaped ? [programs.reaped] : [])
        BPFObject.loadOnly(wanted, of: skeleton.pointee.obj)
        skeleton.pointee.rodata.pointee.ka_hz = KernelClock.ticksPerSecond
        let result = Result { () throws(LoadError) in
            try loader.load(skeleton.pointee.obj) { keepalive_bpf__load(skeleton) }
        }
        if case .failure(let error) = result, error.errno == EPERM { throw MemlockLimited.explaining(error) }
        try result.get()
    }
}

/// A load refused with EPERM while RLIMIT_MEMLOCK is finite: kernels before
/// 5.11 charge BPF maps to it, and libbpf raises it only with
/// CAP_SYS_RESOURCE (seen on Debian's 5.10 with four CPUs and systemd's 8 MB).
struct MemlockLimited: Error, CustomStringConvertible {
    let load: LoadError
    let limitKB: UInt64

    static func explaining(_ error: LoadError) -> any Error {
        var limit = rlimit()
        guard getrlimit(Int32(__RLIMIT_MEMLOCK.rawValue), &limit) == 0, limit.rlim_cur != rlim_t.max else {
            return error
        }  // RLIM_INFINITY
        return MemlockLimited(load: error, limitKB: UInt64(limit.rlim_cur) / 1024)
    }

    var description: String {
        "\(load); RLIMIT_MEMLOCK is \(limitKB) kB, and kernels before 5.11 charge BPF maps to it: raise it "
            + "(LimitMEMLOCK=infinity in a unit, ulimit -l unlimited) or give CAP_SYS_RESOURCE"
    }
}

/// keepalive_iter.bpf.o: the TCP iterator behind `--existing` and `inspect`,
/// in the kernel's build.
final class IteratorObject {
    let skeleton: UnsafeMutablePointer<keepalive_iter_bpf>
    let program: OpaquePointer
    private let loader = BPFObject(name: "keepalive_iter")

    /// With `pinRoot`, the iterator shares the state's pinned maps (libbpf
    /// reuses them by name); without, it gets empty ones of its own.
    init(pinRoot: String?, build: ProgramBuild) throws {
        skeleton = try loader.open(pinRoot: pinRoot) { keepalive_iter_bpf__open_opts($0) }
        let p = skeleton.pointee.progs
        let chosen =
            switch build {
            case .cast, .full: p.keepalive_iter
            case .bounded: p.keepalive_iter_bounded
            case .basic: p.keepalive_iter_basic
            }
        guard let chosen else {
            keepalive_iter_bpf__destroy(skeleton)
            throw SyscallError("open BPF object keepalive_iter: its skeleton lacks a program", errno: EINVAL)
        }
        program = chosen
        if pinRoot == nil {
            let maps = skeleton.pointee.maps
            for map in [
                maps.ka_policies_v3, maps.ka_counters_v4, maps.ka_errors, maps.ka_rules, maps.ka_rule_sets,
                maps.ka_rule_counters_v4,
            ].compactMap({ $0 }) {
                try BPFObject.unpinned(map)
            }
        }
    }

    deinit { keepalive_iter_bpf__destroy(skeleton) }

    func load() throws(LoadError) {
        BPFObject.loadOnly([program], of: skeleton.pointee.obj)
        try loader.load(skeleton.pointee.obj) { keepalive_iter_bpf__load(skeleton) }
    }
}

/// keepalive_probes.bpf.o: programs that only ask the kernel what it accepts
/// where a raw probe cannot (KernelFeatures).
enum ProbeObject {
    /// Whether the kernel verifies global functions with pointer arguments
    /// (rules' matching is two). Refused, the verifier says "Arg#0 type PTR
    /// in ...() is not supported yet"; any other refusal is no answer.
    static func globalFunctionPointerArguments() throws -> Bool {
        try loads(\.progs.probe_global_pointer_arguments) {
            $0.errno == EINVAL && $0.log.contains("Arg#0 type PTR in ")
        }
    }

    /// Whether a sock_ops program may call bpf_rdonly_cast, which the
    /// kernel's BTF has (the caller asks that first). Refused, the verifier
    /// names the function; any other refusal is no answer.
    static func readOnlyCast() throws -> Bool {
        try loads(\.progs.probe_readonly_cast) { $0.log.contains("bpf_rdonly_cast") }
    }

    /// Loads one program of the object, alone: whether the kernel takes it,
    /// false when its refusal is `refused`, else the error.
    private static func loads(
        _ program: KeyPath<keepalive_probes_bpf, OpaquePointer?>,
        refused: (LoadError) -> Bool
    ) throws -> Bool {
        let loader = BPFObject(name: "keepalive_probes")
        let skeleton = try loader.open(pinRoot: nil) { keepalive_probes_bpf__open_opts($0) }
        defer { keepalive_probes_bpf__destroy(skeleton) }
        guard let wanted = skeleton.pointee[keyPath: program] else {
            throw SyscallError("open BPF object keepalive_probes: its skeleton lacks a program", errno: EINVAL)
        }
        BPFObject.loadOnly([wanted], of: skeleton.pointee.obj)
        do {
            try loader.load(skeleton.pointee.obj) { keepalive_probes_bpf__load(skeleton) }
            return true
        } catch {
            if refused(error) { return false }
            throw error
        }
    }
}
