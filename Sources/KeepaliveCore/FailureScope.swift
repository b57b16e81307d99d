// SPDX-License-Identifier: MIT
import BPF
import Glibc

/// Whose trouble a failure is, which decides what the agent does about it.
public enum FailureScope: Sendable, Equatable {
    /// The cgroup went away meanwhile: not a failure at all.
    case vanished
    /// This cgroup's own trouble (unreadable, path too long, map full): the others go on.
    case cgroup
    /// The pinned state cannot be written or loaded: enforcement stops.
    case state

    public init(of error: any Error) {
        switch error {
        case let failure as LinkFailure: self = failure.scope
        case let access as CgroupAccessError: self = access.errno == ENOENT ? .vanished : .cgroup
        case is PolicyError, is KernelLacks: self = .cgroup
        case StateError.full, StateError.rulesFull: self = .cgroup
        default: self = .state
        }
    }
}

/// A cgroup directory that could not be opened to attach a program to it.
public struct CgroupAccessError: Error, CustomStringConvertible, Sendable {
    public let path: String
    public let errno: Int32

    public var description: String {
        errno == ENOENT ? "cgroup \(path) no longer exists" : "cannot open cgroup \(path): \(errnoText(errno))"
    }
}
