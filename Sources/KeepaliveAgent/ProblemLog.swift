// SPDX-License-Identifier: MIT
import KeepaliveCore
import Logging

import struct SystemPackage.FilePath

/// Something the agent could not do that it keeps trying, by what it is about.
enum Problem: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// An enforcement pass could not write the pinned state.
    case pass
    /// The pinned state could not be checked.
    case pinning
    /// Directories left unwatched by the inotify limit.
    case inotify
    /// A directory the file's selectors could not read.
    case unreadableSelection
    /// A workload parent whose children could not be listed.
    case unreadableParent(FilePath)
    /// A cgroup whose policy could not be put in force.
    case cgroup(FilePath)
    /// A new cgroup whose workload could not be identified.
    case identify(FilePath)
    /// A workload whose cgroup could not be found.
    case place(String)
    /// An entry (at "file:line", for a workload if named) that asks for what the kernel lacks.
    case unsupported(source: String, workload: String?)
    /// A pinned entry the state could not interpret, kept.
    case kept(String)
    /// The kernel's record of reaped connections could not be read.
    case reapedEvents

    var description: String {
        switch self {
        case .pass: "pass"
        case .pinning: "pinning"
        case .inotify: "inotify"
        case .unreadableSelection: "unreadable"
        case .unreadableParent(let path): "unreadable \(path.cgroupDisplay)"
        case .cgroup(let path): "cgroup \(path.cgroupDisplay)"
        case .identify(let path): "identify \(path.cgroupDisplay)"
        case .place(let name): "place \(name)"
        case .unsupported(let source, let workload): "unsupported \(source)\(workload.map { " for \($0)" } ?? "")"
        case .kept(let line): "kept \(line)"
        case .reapedEvents: "reaped events"
        }
    }

    /// Its kind, for the metric that counts problems.
    var kind: String {
        switch self {
        case .pass: "pass"
        case .pinning: "pinning"
        case .inotify: "inotify"
        case .unreadableSelection, .unreadableParent: "unreadable"
        case .cgroup: "cgroup"
        case .identify: "identify"
        case .place: "place"
        case .unsupported: "unsupported"
        case .kept: "kept"
        case .reapedEvents: "reaped_events"
        }
    }

    static func < (a: Problem, b: Problem) -> Bool { a.description < b.description }
}

/// The problems open now, each logged when it appears or changes and once
/// when it is gone: a problem that lasts is one line, not one a second.
struct ProblemLog {
    private(set) var open: [Problem: String] = [:]
    let logger: Logger

    init(logger: Logger) { self.logger = logger }

    /// Records `problem` as `message`, or as gone when nil; whether it was
    /// logged as new or changed.
    @discardableResult
    mutating func report(_ problem: Problem, _ message: String?) -> Bool {
        if let message {
            defer { open[problem] = message }
            guard open[problem] != message else { return false }
            logger.error("\(message)")
            return true
        }
        if open.removeValue(forKey: problem) != nil { logger.notice("resolved: \(problem)") }
        return false
    }

    /// Marks gone every open problem `matching` selects.
    mutating func resolve(where matching: (Problem) -> Bool) {
        for problem in open.keys where matching(problem) { report(problem, nil) }
    }

    func count(where matching: (Problem) -> Bool) -> Int { open.keys.filter(matching).count }

    /// The first open problem's message, in a stable order: what `agent --once` fails with.
    var first: String? { open.min { $0.key < $1.key }?.value }

    var isEmpty: Bool { open.isEmpty }
}

extension Problem {
    var isCgroup: Bool { if case .cgroup = self { true } else { false } }
    var isUnsupported: Bool { if case .unsupported = self { true } else { false } }
}
