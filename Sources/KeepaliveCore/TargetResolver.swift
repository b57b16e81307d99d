// SPDX-License-Identifier: MIT
import Glibc

import struct SystemPackage.FilePath

/// Turns policy-file targets (paths, globs, units) and CLI selectors (pids,
/// units) into existing cgroups, and tells which directories to watch for
/// new matches. A whole resolution walks only the directories a target can
/// reach; a new directory is resolved from where it is, alone.
public struct TargetResolver: Sendable {
    public let cgroups: CgroupFS

    public init(cgroups: CgroupFS) { self.cgroups = cgroups }

    /// A cgroup one of the file's entries selects; the later entry wins.
    public struct Match: Sendable {
        public let cgroup: Cgroup
        public let spec: Int
    }

    public struct Resolution: Sendable {
        public var matches: [UInt64: Match] = [:]
        /// Directories whose new children can change the result.
        public var watch: Set<FilePath> = []
        /// Directories that could not be read (retried on the next rescan).
        public var unreadable: [String] = []

        mutating func add(_ cgroup: Cgroup, spec: Int) {
            if let existing = matches[cgroup.id], existing.spec > spec { return }
            matches[cgroup.id] = Match(cgroup: cgroup, spec: spec)
        }

        public mutating func merge(_ other: Resolution) {
            for match in other.matches.values { add(match.cgroup, spec: match.spec) }
            watch.formUnion(other.watch)
            unreadable += other.unreadable
        }
    }

    /// Every entry against the cgroups that exist now.
    public func resolve(_ config: AgentConfig) -> Resolution {
        var resolution = Resolution()
        for (index, spec) in config.policies.enumerated() {
            switch spec.target {
            case .cgroup(let pattern):
                expand(pattern: components(of: pattern), from: [(FilePath(), 0)], spec: index, into: &resolution)
            case .unit(let name):
                searchUnit(name, from: [FilePath()], spec: index, into: &resolution)
            case .pods, .containers:
                continue  // through the runtimes (WorkloadResolver)
            }
        }
        return resolution
    }

    /// What a directory that just appeared adds: the entries it matches, and
    /// what to watch and match below it (usually nothing yet).
    public func resolve(_ config: AgentConfig, appeared directory: Cgroup) -> Resolution {
        var resolution = Resolution()
        let path = directory.path.components.map { $0 }
        for (index, spec) in config.policies.enumerated() {
            switch spec.target {
            case .cgroup(let text):
                let pattern = components(of: text)
                guard path.count <= pattern.count,
                    zip(pattern, path).allSatisfy({ matches($0, $1) })
                else { continue }
                expand(pattern: pattern, from: [(directory.path, path.count)], spec: index, into: &resolution)
            case .unit(let name):
                guard path.dropLast().allSatisfy(isSlice) else { continue }
                if directory.path.lastComponent.map({ $0.string == name }) == true {
                    resolution.add(directory, spec: index)
                } else if path.last.map(isSlice) == true {
                    searchUnit(name, from: [directory.path], spec: index, into: &resolution)
                }
            case .pods, .containers:
                continue  // through the runtimes (WorkloadResolver)
            }
        }
        return resolution
    }

    /// The components of a policy file's path, made relative to the mount.
    private func components(of pattern: String) -> [String] {
        var relative = FilePath(pattern)
        if relative.isAbsolute { _ = relative.removePrefix(cgroups.mount) }
        return relative.components.map(\.string)
    }

    private func matches(_ pattern: String, _ name: FilePath.Component) -> Bool {
        guard pattern.contains(where: { "*?[".contains($0) }) else { return FilePath.Component(pattern) == name }
        return name.withPlatformString { fnmatch(pattern, $0, 0) == 0 }
    }

    private func isSlice(_ name: FilePath.Component) -> Bool { name.string.hasSuffix(".slice") }

    /// Follows a pattern one component at a time from `frontier` (directory,
    /// index of the component its children must match).
    private func expand(
        pattern: [String],
        from frontier: [(FilePath, Int)],
        spec: Int,
        into resolution: inout Resolution
    ) {
        var frontier = frontier
        while let (directory, index) = frontier.popLast() {
            guard index < pattern.count else {
                if let cgroup = cgroups.cgroup(at: directory) { resolution.add(cgroup, spec: spec) }
                continue
            }
            resolution.watch.insert(directory)
            do {
                for child in try cgroups.children(of: directory) {
                    guard let name = child.path.lastComponent, matches(pattern[index], name) else { continue }
                    if index + 1 == pattern.count {
                        resolution.add(child, spec: spec)
                    } else {
                        frontier.append((child.path, index + 1))
                    }
                }
            } catch {
                resolution.unreadable.append("\(error)")
            }
        }
    }

    /// systemd puts a unit's cgroup, named after the unit, inside a slice:
    /// the shallowest directory of that name. Slices are watched for it to appear.
    private func searchUnit(_ name: String, from level: [FilePath], spec: Int, into resolution: inout Resolution) {
        var level = level
        while !level.isEmpty {
            var next: [FilePath] = []
            for directory in level {
                resolution.watch.insert(directory)
                do {
                    for child in try cgroups.children(of: directory) {
                        guard let childName = child.path.lastComponent else { continue }
                        if childName.string == name {
                            resolution.add(child, spec: spec)
                            return
                        }
                        if isSlice(childName) { next.append(child.path) }
                    }
                } catch {
                    resolution.unreadable.append("\(error)")
                }
            }
            level = next
        }
    }

    /// The cgroup v2 of a process, from /proc/PID/cgroup ("0::/path").
    public func cgroup(ofPID pid: Int32) throws -> Cgroup {
        let text: String
        do {
            text = try readTextFile(FilePath("/proc/\(pid)/cgroup"))
        } catch {
            throw error.errno == ENOENT || error.errno == ESRCH ? CgroupError.noProcess(pid) : error
        }
        for line in text.split(separator: "\n") where line.hasPrefix("0::") {
            let path = line.dropFirst(3)  // below the hierarchy's root: "/" is the root itself
            return try cgroups.resolve(path == "/" ? "/" : String(path.dropFirst()))
        }
        throw CgroupError.noProcess(pid)
    }

    /// The cgroup of a systemd unit that exists now.
    public func cgroup(ofUnit name: String) throws -> Cgroup {
        var resolution = Resolution()
        searchUnit(name, from: [FilePath()], spec: 0, into: &resolution)
        guard let found = resolution.matches.values.first?.cgroup else { throw CgroupError.noUnit(name) }
        return found
    }
}
