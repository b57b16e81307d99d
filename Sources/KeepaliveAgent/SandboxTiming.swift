// SPDX-License-Identifier: MIT

/// How long the runtime takes from a sandbox's own cgroup appearing to
/// listing the pod (containerd here: some 30 ms, starting the sandbox's
/// task and storing it), learnt from the latest pods. A hurried pod is
/// asked first a little before that, then every 5 ms, instead of every 5 ms
/// from the start: each CRI call costs about a millisecond of the agent's CPU.
struct SandboxTiming: Sendable {
    /// The latest delays, oldest first.
    private var recent: [Duration] = []
    static let kept = 16
    /// Asked this much before the quickest quarter of the latest pods was known.
    static let lead = Duration.milliseconds(5)

    /// How long after the sandbox's cgroup appeared to ask first: at once
    /// until a few pods were known.
    var firstAsk: Duration {
        guard recent.count >= 4 else { return .zero }
        return max(.zero, recent.sorted()[recent.count / 4] - Self.lead)
    }

    /// The runtime did not know a pod when asked `earlier` after its
    /// sandbox's cgroup appeared (zero: the appearance itself) and knew it
    /// when asked `later`: it came to know it in between, the middle is kept.
    /// (Keeping `later` would never learn that a runtime became quicker: an
    /// answer at the first ask would keep the first ask where it is.)
    mutating func known(between earlier: Duration, and later: Duration) {
        recent.append((earlier + later) / 2)
        if recent.count > Self.kept { recent.removeFirst() }
    }
}
