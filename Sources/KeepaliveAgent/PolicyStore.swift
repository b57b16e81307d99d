// SPDX-License-Identifier: MIT
import Glibc
import KeepaliveCore
import Logging

/// Where the enforcement loop puts the policies: the pinned state in the
/// kernel (PinnedPolicyStore), or a fake in unit tests. Each call is one
/// transaction; one that throws changed nothing it could not undo, and what
/// it throws stops the pass (the state cannot be opened or written).
protocol PolicyStore: AnyObject {
    /// The state's path, for messages.
    var root: String { get }
    func kernelFeatures() throws -> KernelFeatures
    /// Whether the state is still the one pinned. Cheap: called every second.
    func pinning() -> Pinning
    /// Whether another process changed the state since this store's last transaction.
    func changedByAnother() -> Bool
    /// Makes the state again after it vanished, and claims it for this agent.
    func remake() throws
    /// The state equal to `desired`, after checking and repairing it whole:
    /// what the check found, and what changed. `keeping` says which policies
    /// not desired to keep (not seeing a cgroup proves nothing).
    func reconcile(
        _ desired: [Transaction.Desire],
        keeping: (UInt64, PolicyRecord) -> Bool
    ) throws
        -> (Transaction.Report, Transaction.Outcome)
    /// These policies in force, the others as they are.
    func enforce(_ desired: [Transaction.Desire]) throws -> Transaction.Outcome
    /// These cgroups' policies removed.
    func withdraw(_ ids: [UInt64]) throws -> Transaction.Outcome
    /// The policy applied to the sockets a cgroup has already (nil: it has no process).
    func coverExistingSockets(of cgroup: Cgroup) throws -> SocketIterator.Result?
    /// The connections reaped since `after` (.max: none, only where the record is).
    func reapedEvents(after: UInt64) throws -> (events: [ReapedEvent], next: UInt64)
}

/// The kernel's pinned state, as the agent holds it: its claim, and the view
/// of the last transaction for the next small one.
final class PinnedPolicyStore: PolicyStore {
    let state: PinnedState
    private var claim: AgentClaim
    private var cache: PinnedState.CachedView?
    private var iterator: SocketIterator?

    init(state: PinnedState, claim: AgentClaim) {
        self.state = state
        self.claim = claim
    }

    var root: String { state.root }

    func kernelFeatures() throws -> KernelFeatures { try state.kernelFeatures() }

    func pinning() -> Pinning { state.pinning() }

    func changedByAnother() -> Bool { state.changed(since: cache) }

    func remake() throws {
        iterator = nil
        try state.prepare()
        claim = try state.claimForAgent(keeping: claim)
    }

    func reconcile(
        _ desired: [Transaction.Desire],
        keeping: (UInt64, PolicyRecord) -> Bool
    ) throws
        -> (Transaction.Report, Transaction.Outcome)
    {
        try transaction(fullCheck: true) { session in
            (session.report, session.transaction.reconcile(desired, keeping: keeping))
        }
    }

    func enforce(_ desired: [Transaction.Desire]) throws -> Transaction.Outcome {
        try transaction(fullCheck: false) { $0.transaction.enforce(desired) }
    }

    func withdraw(_ ids: [UInt64]) throws -> Transaction.Outcome {
        try transaction(fullCheck: false) { $0.transaction.withdraw(ids) }
    }

    func coverExistingSockets(of cgroup: Cgroup) throws -> SocketIterator.Result? {
        if iterator == nil {
            iterator = try SocketIterator(pinRoot: state.root, cgroups: state.cgroups, for: .existingSockets)
        }
        return try iterator?.runIfPopulated(cgroup)
    }

    func reapedEvents(after: UInt64) throws -> (events: [ReapedEvent], next: UInt64) {
        try state.reapedEvents(after: after)
    }

    private func transaction<T: Sendable>(fullCheck: Bool, _ body: (PinnedState.Session) throws -> T) throws -> T {
        guard let result = try state.transaction(create: true, fullCheck: fullCheck, cache: &cache, body) else {
            throw AgentError("no pinned state at \(state.root)")
        }
        return result
    }
}
