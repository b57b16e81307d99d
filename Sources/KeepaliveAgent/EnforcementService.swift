// SPDX-License-Identifier: MIT
import KeepaliveCore
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

/// The agent's enforcement as a service of its ServiceGroup: an Enforcer,
/// run on a thread of its own, over the kernel's pinned state.
struct EnforcementService: Service {
    let state: PinnedState
    let claim: AgentClaim
    let logger: Logger
    let metrics: AgentMetrics
    /// The policy file as first read.
    let config: AgentConfig
    /// The Enforcer's parts, once the store and the kernel's features are known.
    let parts: @Sendable (any PolicyStore, KernelFeatures) -> Enforcer.Parts

    func run() async throws {
        try await onItsOwnThread { try await $0.run() }
    }

    /// One full pass, then done: `agent --once`.
    func enforceOnce() async throws {
        try await onItsOwnThread { try await $0.enforceOnce() }
    }

    private func onItsOwnThread(_ body: (Enforcer) async throws -> Void) async throws {
        let thread = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        do {
            // Probed on this thread too: every bpf(2) call of the agent's is made on it.
            let features = try await thread.next().submit { try state.kernelFeatures() }.get()
            logFeatures(features)
            metrics.setKernelFeatures(features)
            let parts = parts(PinnedPolicyStore(state: state, claim: claim), features)
            try await body(try Enforcer(parts, config: config, on: thread.next()))
        } catch {
            try? await thread.shutdownGracefully()  // the error that stopped enforcement is the one to tell
            throw error
        }
        try await thread.shutdownGracefully()
    }

    /// What this kernel gives, said once at start: the build of the programs
    /// and one line per feature that is off.
    private func logFeatures(_ features: KernelFeatures) {
        let off = KernelFeatures.Feature.allCases.compactMap(features.offLine)
        logger.info(
            "kernel \(KernelRelease.current): the programs' \(features.build.rawValue) build\(off.isEmpty ? "; every feature on" : "")"
        )
        for line in off { logger.warning("\(line)") }
    }
}
