// SPDX-License-Identifier: MIT
import BPF
import Foundation
import Glibc

import struct SystemPackage.FilePath

/// The cgroup `keepalive run` makes for its command: a transient systemd
/// scope where systemd runs (systemd owns the tree there), else a directory
/// under `keepalive.run/` at the cgroup2 root. The calling process enters it,
/// starts the command there (so it is covered from its first instruction)
/// and goes back where it came from: the cgroup then holds the command and
/// its children only, and is empty exactly when they have all exited.
public struct RunCgroup: Sendable {
    public static let parentName = "keepalive.run"
    public static let scopePrefix = "keepalive-run-"

    public let cgroup: Cgroup
    /// Made by systemd (which removes it once empty), else by keepalive.
    public let isScope: Bool
    /// Where the caller came from, to go back to.
    let home: Cgroup
    let cgroups: CgroupFS

    /// Whether a cgroup path is one `keepalive run` made.
    public static func isRun(_ path: FilePath) -> Bool {
        guard let last = path.lastComponent?.string else { return false }
        return (last.hasPrefix(scopePrefix) && last.hasSuffix(".scope"))
            || path.removingLastComponent().lastComponent?.string == parentName
    }

    /// Makes the run's cgroup and moves the calling process into it.
    public static func enter(_ cgroups: CgroupFS, description: String) throws -> RunCgroup {
        let home = try TargetResolver(cgroups: cgroups).cgroup(ofPID: getpid())
        let name = "\(getpid())-\(String(UInt32.random(in: 0...UInt32.max), radix: 16))"
        if access("/run/systemd/system", F_OK) == 0 {
            let cgroup = try scope(named: "\(scopePrefix)\(name).scope", description: description, cgroups)
            return RunCgroup(cgroup: cgroup, isScope: true, home: home, cgroups: cgroups)
        }
        let path = FilePath(parentName).appending("run-\(name)")
        try makeDirectory(path, cgroups)
        guard let cgroup = cgroups.cgroup(at: path) else { throw CgroupError.notFound(path.string) }
        let run = RunCgroup(cgroup: cgroup, isScope: false, home: home, cgroups: cgroups)
        do { try run.move(getpid(), to: cgroup) } catch {
            run.remove()
            throw error
        }
        return run
    }

    /// keepalive.run/NAME, and the parent if missing. The last run to end
    /// removes the parent: one removed between the two mkdirs is made again.
    private static func makeDirectory(_ path: FilePath, _ cgroups: CgroupFS) throws {
        for _ in 0..<10 {
            let parent = cgroups.absolute(path.removingLastComponent()).string
            guard mkdir(parent, 0o755) == 0 || errno == EEXIST else {
                throw SyscallError("mkdir \(parent)", errno: errno)
            }
            if mkdir(cgroups.absolute(path).string, 0o755) == 0 { return }
            guard errno == ENOENT else { throw SyscallError("mkdir \(cgroups.absolute(path))", errno: errno) }
        }
        throw SyscallError("mkdir \(cgroups.absolute(path))", errno: ENOENT)
    }

    /// A run's directory, then its parent if no other run is there.
    private static func removeDirectory(_ path: FilePath, _ cgroups: CgroupFS) {
        rmdir(cgroups.absolute(path).string)
        rmdir(cgroups.absolute(path.removingLastComponent()).string)  // ENOTEMPTY while others run
    }

    /// A transient scope holding this process, through systemd's D-Bus API
    /// (busctl: systemd-run cannot adopt a running process); its cgroup once
    /// systemd has moved us there.
    private static func scope(named name: String, description: String, _ cgroups: CgroupFS) throws -> Cgroup {
        let call = Process()
        call.executableURL = URL(fileURLWithPath: "/usr/bin/busctl")
        call.arguments = [
            "call", "--quiet", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager", "StartTransientUnit", "ssa(sv)a(sa(sv))",
            name, "fail", "3", "PIDs", "au", "1", "\(getpid())", "Description", "s", description,
            "CollectMode", "s", "inactive-or-failed", "0",
        ]
        let errors = Pipe()
        call.standardError = errors
        try call.run()
        call.waitUntilExit()
        guard call.terminationStatus == 0 else {
            let said = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            throw RunError(
                "systemd did not make the scope \(name): \(said.split(separator: "\n").first ?? "busctl failed")"
            )
        }
        let resolver = TargetResolver(cgroups: cgroups)
        for _ in 0..<100 {  // the job moves us; it is done within milliseconds
            let now = try resolver.cgroup(ofPID: getpid())
            if now.path.lastComponent?.string == name { return now }
            usleep(20_000)
        }
        throw RunError("systemd made the scope \(name) but did not move keepalive into it")
    }

    /// Back where the caller came from: the run's cgroup keeps the command alone.
    public func leave() throws {
        try move(getpid(), to: home)
    }

    private func move(_ pid: pid_t, to cgroup: Cgroup) throws {
        let procs = cgroups.absolute(cgroup.path).appending("cgroup.procs").string
        let fd = open(procs, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SyscallError("open \(procs)", errno: errno) }
        defer { close(fd) }
        let text = "\(pid)\n"
        guard write(fd, text, text.utf8.count) == text.utf8.count else {
            throw SyscallError("move process \(pid) to \(cgroup.display)", errno: errno)
        }
    }

    /// Whether any process is left in it (false once systemd removed it).
    public var isPopulated: Bool { Self.populated(cgroups.absolute(cgroup.path)) ?? false }

    /// "populated" of a cgroup's cgroup.events; nil if it cannot be read.
    static func populated(_ directory: FilePath) -> Bool? {
        guard let text = try? readTextFile(directory.appending("cgroup.events")) else { return nil }
        return text.split(separator: "\n").first { $0.hasPrefix("populated ") }.map { $0.hasSuffix(" 1") }
    }

    /// Removes a directory keepalive made (systemd removes its scopes itself).
    public func remove() {
        if !isScope { Self.removeDirectory(cgroup.path, cgroups) }
    }

    /// The runs whose commands have all exited, though no `keepalive run`
    /// was left to clean up (it was killed): their policies go, and their
    /// directories. A cgroup whose state cannot be read is left alone.
    public static func reapFinished(_ transaction: Transaction, _ cgroups: CgroupFS) throws -> [String] {
        var reaped: [String] = []
        for (id, record) in transaction.records.sorted(by: { $0.key < $1.key }) where isRun(record.path) {
            let directory = cgroups.absolute(record.path)
            guard cgroups.cgroup(at: record.path)?.id == id, populated(directory) == false else { continue }
            _ = try transaction.remove(id)
            if record.path.removingLastComponent().lastComponent?.string == parentName {
                removeDirectory(record.path, cgroups)
            }
            reaped.append("removed the finished run \(record.path.cgroupDisplay) and its policy")
        }
        return reaped
    }
}

/// A run that cannot start: one line.
public struct RunError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
