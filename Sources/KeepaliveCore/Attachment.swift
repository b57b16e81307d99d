// SPDX-License-Identifier: MIT
import CLibBPF

/// The programs keepalive attaches to cgroups. Each is linked only at the
/// topmost cgroups whose policy wants it, so it runs once per socket (or call),
/// and costs nothing where no policy wants it.
public enum Attachment: CaseIterable, Sendable {
    /// Sets the options on connect, accept and listen: every policy.
    case sockops
    /// Rewrites the program's own keepalive setsockopt calls: only `precedence: policy`.
    case setsockopt

    /// Directory of this kind's links under the state's root, one pin per cgroup id.
    var linksDirectory: String {
        switch self {
        case .sockops: "links"
        case .setsockopt: "links-setsockopt"
        }
    }

    var attachType: bpf_attach_type {
        switch self {
        case .sockops: BPF_CGROUP_SOCK_OPS
        case .setsockopt: BPF_CGROUP_SETSOCKOPT
        }
    }

    func wants(_ record: PolicyRecord) -> Bool {
        switch self {
        case .sockops: true
        case .setsockopt: record.policy.precedence == .policy
        }
    }
}
