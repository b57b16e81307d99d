// SPDX-License-Identifier: MIT
import BPF
import CLibBPF
import Glibc
import Logging
import Synchronization

/// keepalive's kernel state, pinned in bpffs so that it outlives every process:
///
///     <root>/ka_meta, ka_policies_v3, ka_rules,      maps, pinned by libbpf under
///            ka_counters_v4, ka_rule_counters_v4,    their names (bpf/*.bpf.c)
///            ka_errors, ka_events, ka_events_head,
///            ka_paths
///     <root>/keepalive_sockops, keepalive_setsockopt,
///            keepalive_reaped                        the programs
///     <root>/links/<cgroup id>                       sock_ops: one link per covered subtree
///     <root>/links-setsockopt/<cgroup id>            setsockopt: one per subtree with `precedence: policy`
///     <root>/link-reaped                             the reaped-connection tracepoint
///     <root>/agent-lock                              held by the one agent enforcing this state
///     <root>/ka_policies                             a guard against keepalive 0.1.0 (OlderLayouts)
///
/// (bpffs refuses dots in names.)
///
/// The CLI and the agent share it; every change happens in a transaction,
/// under an exclusive flock on <root>. Opening brings the state to this
/// binary's programs (PinnedState+Opening): a missing state is made, an older
/// one upgraded in place (bpf_link_update on every link: no socket goes
/// unconfigured), a newer one refused. Any step may be killed: the next
/// opening finds the kernel's truth and finishes or repairs it. A call that
/// fails is never taken for an answer: what cannot be read stops the command,
/// which says so, before it changes anything it could not account for.
public final class PinnedState: Sendable {
    public static let defaultRoot = BPFFS.defaultMount + "/keepalive"

    public let root: String
    public let cgroups: CgroupFS
    let logger: Logger
    /// What this process has open; the lock also excludes this process's
    /// threads from each other's transactions (flock excludes other processes).
    let opened = Mutex<Open?>(nil)

    /// What is open while the pinned state stays the same one.
    struct Open: Sendable {
        let kernel: PinnedKernel
        /// The root directory as checked and locked by the last full check.
        var rootFD: FileDescriptor?
    }

    /// A transaction's view of the state, kept by its caller for the next one
    /// (the agent's small passes): valid while nobody else changes the state.
    public struct CachedView {
        let transaction: Transaction
        let seq: UInt64
        let kernel: ObjectIdentifier
    }

    public init(root: String = defaultRoot, cgroups: CgroupFS, logger: Logger) {
        self.root = root
        self.cgroups = cgroups
        self.logger = logger
    }

    /// The running kernel's features; privileged work needs their base.
    public func kernelFeatures() throws -> KernelFeatures {
        let features = try KernelFeatures.probe()
        try features.requireBase()
        return features
    }

    static let reapedLinkName = "link-reaped"
    var reapedLinkPath: String { root + "/" + Self.reapedLinkName }
    var agentLockPath: String { root + "/" + Self.agentLock }
    static let agentLock = "agent-lock"

    /// A pin put beside `path` during an install, unique to the object `id`,
    /// that replaces `path` in one rename when the install is done.
    static func staged(_ path: String, id: UInt32) -> String { path + stagedMark + "\(id)" }
    static let stagedMark = "-next-"
    func linksDirectory(_ kind: Attachment) -> String { root + "/" + kind.linksDirectory }

    // MARK: transactions

    /// A transaction and what was found when it began.
    public struct Session {
        public let transaction: Transaction
        /// The opening check's findings (empty when a cached view was reused).
        public let report: Transaction.Report
        public let programs: ProgramIdentity
        public let countingReaped: Bool
        /// What the kernel the programs run on gives.
        public let features: KernelFeatures
        let kernel: PinnedKernel
        private let counterPass: PinnedKernel.CounterPass

        init(_ transaction: Transaction, report: Transaction.Report = Transaction.Report(), kernel: PinnedKernel) {
            self.transaction = transaction
            self.report = report
            programs = kernel.identity
            countingReaped = kernel.countingReaped
            features = kernel.features
            self.kernel = kernel
            counterPass = kernel.counterPass()
        }

        /// Sockets configured and connections reaped under a policy.
        public func counters(of record: PolicyRecord) throws -> PolicyCounters {
            try kernel.counters(of: record, in: counterPass)
        }
        /// Each of a policy's rules' counters, in the rules' order.
        public func ruleCounters(of record: PolicyRecord) throws -> [PolicyCounters] {
            try kernel.ruleCounters(of: record, in: counterPass)
        }
        /// Failed bpf_setsockopt calls since the state was made, by option key.
        public func setsockoptErrors() throws -> [(option: String, count: UInt64)] { try kernel.setsockoptErrors() }
        /// The kernel memory the state's maps take (bytes).
        public func kernelMemory() throws -> UInt64 {
            try kernel.kernelMemory(of: transaction.records.values, in: counterPass)
        }
        public func reapedEvents() throws -> [ReapedEvent] { try kernel.reapedEvents() }
        /// Every path the policies that observe paths have seen.
        public func observedPaths() throws -> [(key: PathKey, evidence: PathEvidence)] {
            try kernel.observedPaths()
        }
    }

    /// Runs `body` in a transaction, holding the state's lock. With `create` a
    /// missing state is made; without, nil is returned if there is none.
    public func transaction<T: Sendable>(create: Bool, _ body: (Session) throws -> T) throws -> T? {
        var none: CachedView?
        return try transaction(create: create, fullCheck: true, cache: &none, body)
    }

    /// The same, for a caller that keeps the view for its next transaction.
    /// With `fullCheck` false (the agent between its periodic checks) the
    /// state open since the last transaction is used as it is, without
    /// checking its path and pins again (the agent's heartbeat does, every
    /// second), and so is `cache` while nobody else changed the state: a small
    /// change costs a few system calls.
    public func transaction<T: Sendable>(
        create: Bool,
        fullCheck: Bool,
        cache: inout CachedView?,
        _ body: (Session) throws -> T
    ) throws -> T? {
        try opened.withLock { open throws -> T? in
            let state: Open
            if !fullCheck, let current = open, let fd = current.rootFD {
                guard flock(fd.raw, LOCK_EX) == 0 else { throw SyscallError("lock \(root)", errno: errno) }
                state = current
            } else {
                guard let fd = try lockedRoot(create: create) else {
                    open = nil
                    return nil
                }
                do {
                    state = Open(kernel: try currentKernel(open?.kernel), rootFD: fd)
                } catch {
                    flock(fd.raw, LOCK_UN)
                    throw error
                }
                open = state
            }
            // Chunks of counters opened are kept only while the lock is held:
            // another process may remove or replace one when it has it.
            state.kernel.forgetOpenedChunks()
            defer {
                state.kernel.forgetOpenedChunks()
                if let fd = state.rootFD { flock(fd.raw, LOCK_UN) }
            }
            let kernel = state.kernel
            let seq = try kernel.changeSequence()
            let session: Session
            if !fullCheck, let cached = cache, cached.seq == seq, cached.kernel == ObjectIdentifier(kernel) {
                session = Session(cached.transaction, kernel: kernel)
            } else {
                let transaction = try Transaction(kernel: kernel)
                var report = try transaction.repair()
                report.repaired += try RunCgroup.reapFinished(transaction, cgroups)
                try kernel.repairReapedLink()
                report.keptUnknown += try unknownPins(kernel).map {
                    "\(root)/\($0): belongs to no layout this keepalive knows; left alone"
                }
                session = Session(transaction, report: report, kernel: kernel)
            }
            do {
                let result = try body(session)
                // The work is done: a sequence that cannot be read only costs the next
                // transaction its shortcut (no cache: it reads everything afresh).
                cache = (try? kernel.changeSequence()).map {
                    CachedView(transaction: session.transaction, seq: $0, kernel: ObjectIdentifier(kernel))
                }
                return result
            } catch {
                cache = nil  // the view may be half-way: read it afresh next time
                throw error
            }
        }
    }

    /// Whether another process changed the state since `cache` was taken
    /// (the change sequence moved). One map lookup: for the agent's
    /// heartbeat. False when there is nothing to compare with; true when it
    /// cannot be read, so that a full pass finds out why.
    public func changed(since cache: CachedView?) -> Bool {
        guard let cache else { return false }
        return opened.withLock { open in
            guard let kernel = open?.kernel, ObjectIdentifier(kernel) == cache.kernel else { return true }
            guard let seq = try? kernel.changeSequence() else { return true }
            return seq != cache.seq
        }
    }

    /// Whether the state this process has open is still the one pinned (its
    /// root directory and its maps). Cheap: for the agent's heartbeat.
    public func pinning() -> Pinning {
        opened.withLock { $0?.kernel.pinning() ?? .replaced }
    }

    // MARK: reading without the lock

    /// What is in force, as pinned now.
    public struct Snapshot: Sendable {
        public var programs: ProgramIdentity?
        public var countingReaped = false
        public var policies: [(id: UInt64, record: PolicyRecord, counters: PolicyCounters)] = []
        /// Each policy's rules' counters, in the rules' order, by policy id.
        public var ruleCounters: [UInt64: [PolicyCounters]] = [:]
        public var setsockoptErrors: [(option: String, count: UInt64)] = []
        public var kernelMemory: UInt64 = 0
        /// The paths of the policies that observe them, each remote on its own.
        public var paths: [PathReport] = []
    }

    /// The policies in force and their counters, read from the maps pinned
    /// now without taking the lock (the kernel reads each entry atomically):
    /// what metrics report. Empty only when nothing is pinned; a read that
    /// fails throws, never stands for zero.
    public func snapshot() throws -> Snapshot {
        guard let kernel = try pinnedKernel() else { return Snapshot() }
        var snapshot = Snapshot(programs: kernel.identity, countingReaped: kernel.countingReaped)
        let pass = kernel.counterPass()
        snapshot.policies = try kernel.readPolicies().map {
            ($0.key, $0.value, try kernel.counters(of: $0.value, in: pass))
        }
        for (id, record, _) in snapshot.policies where !record.policy.rules.isEmpty {
            snapshot.ruleCounters[id] = try kernel.ruleCounters(of: record, in: pass)
        }
        snapshot.setsockoptErrors = try kernel.setsockoptErrors()
        snapshot.kernelMemory = try kernel.kernelMemory(of: snapshot.policies.map(\.record), in: pass)
        let observing = snapshot.policies.filter { $0.record.policy.observation.observesPaths }
        if !observing.isEmpty {
            snapshot.paths = PathReport.reports(
                try kernel.observedPaths(),
                policies: Dictionary(uniqueKeysWithValues: observing.map { ($0.id, $0.record.policy) }),
                systemKeepidle: PathReport.namespaceKeepidle()
            )
        }
        return snapshot
    }

    /// The reaped connections the kernel side keeps, from number `after` on,
    /// and the number the next one will get.
    public func reapedEvents(after: UInt64) throws -> (events: [ReapedEvent], next: UInt64) {
        guard let kernel = try pinnedKernel() else { return ([], 0) }
        let next = try kernel.reapedEventHead()
        return after >= next ? ([], next) : (try kernel.reapedEvents(after: after), next)
    }

    /// The kernel handles of the state pinned now: this process's own while
    /// they are still the pinned ones, else freshly opened from the pins; nil
    /// when there is no state (no root). A state with a pin missing is an
    /// error (any command repairs it), not an empty one.
    private func pinnedKernel() throws -> PinnedKernel? {
        if let kernel = opened.withLock({ $0?.kernel }), kernel.pinning() == .intact { return kernel }
        guard try BPFFS.isPresent(root) else { return nil }
        do {
            return try PinnedKernel(pinned: try MainObject(pinRoot: root, features: try kernelFeatures()), state: self)
        } catch let error as SyscallError where error.errno == ENOENT {
            throw StateError.incomplete(path: root, "\(error)")
        }
    }
}
