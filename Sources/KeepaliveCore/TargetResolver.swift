import Glibc

/// A policy the agent wants in force on one existing cgroup.
public struct DesiredPolicy: Sendable {
    public let cgroup: Cgroup
    public let policy: Policy
    public let source: String
}

/// Turns policy-file targets (paths, globs, units) and CLI selectors (pids)
/// into existing cgroups, and tells which directories to watch for new matches.
public struct TargetResolver: Sendable {
    public let cgroups: CgroupFS

    public init(cgroups: CgroupFS) { self.cgroups = cgroups }

    public struct Resolution: Sendable {
        public var desired: [DesiredPolicy] = []
        /// Directories whose new or removed children can change the result.
        public var watch: Set<String> = []
    }

    /// Every spec against the cgroups that exist now; later specs win on the same cgroup.
    public func resolve(_ config: AgentConfig) -> Resolution {
        var resolution = Resolution()
        var byID: [UInt64: Int] = [:]
        for spec in config.policies {
            for cgroup in matches(spec.target, watch: &resolution.watch) {
                let want = DesiredPolicy(cgroup: cgroup, policy: spec.policy, source: spec.source)
                if let index = byID[cgroup.id] {
                    resolution.desired[index] = want
                } else {
                    byID[cgroup.id] = resolution.desired.count
                    resolution.desired.append(want)
                }
            }
        }
        return resolution
    }

    func matches(_ target: PolicySpec.Target, watch: inout Set<String>) -> [Cgroup] {
        switch target {
        case .cgroup(let pattern): glob(pattern, watch: &watch)
        case .unit(let name): unit(name, watch: &watch)
        }
    }

    /// Follows a path pattern one component at a time from the mount.
    func glob(_ pattern: String, watch: inout Set<String>) -> [Cgroup] {
        var relative = pattern
        if relative.hasPrefix(cgroups.mountPoint + "/") { relative.removeFirst(cgroups.mountPoint.count + 1) }
        guard var frontier = try? [cgroups.root] else { return [] }
        for component in relative.split(separator: "/").map(String.init) {
            var next: [Cgroup] = []
            for dir in frontier {
                watch.insert(dir.path)
                if component.contains(where: { "*?[".contains($0) }) {
                    cgroups.walk(below: dir) { child in
                        if fnmatch(component, child.name, 0) == 0 { next.append(child) }
                        return false
                    }
                } else if let child = cgroups.cgroup(atPath: dir.path + "/" + component) {
                    next.append(child)
                }
            }
            frontier = next
        }
        return frontier
    }

    /// systemd puts a unit's cgroup, named after the unit, inside a slice:
    /// the shallowest directory of that name. Slices are watched for it to appear.
    func unit(_ name: String, watch: inout Set<String>) -> [Cgroup] {
        guard let root = try? cgroups.root else { return [] }
        watch.insert(root.path)
        var level = [root]
        while !level.isEmpty {
            var next: [Cgroup] = []
            for dir in level {
                var found: Cgroup?
                cgroups.walk(below: dir) { child in
                    if child.name == name { found = child }
                    if child.name.hasSuffix(".slice") {
                        watch.insert(child.path)
                        next.append(child)
                    }
                    return false
                }
                if let found { return [found] }
            }
            level = next
        }
        return []
    }

    /// The cgroup v2 of a process, from /proc/PID/cgroup ("0::/path").
    public func cgroup(ofPID pid: Int32) throws -> Cgroup {
        guard let text = try? readTextFile("/proc/\(pid)/cgroup") else { throw CgroupError.noProcess(pid) }
        for line in text.split(separator: "\n") where line.hasPrefix("0::") {
            let path = String(line.dropFirst(3))
            return try cgroups.resolve(path == "/" ? cgroups.mountPoint : cgroups.mountPoint + path)
        }
        throw CgroupError.noProcess(pid)
    }

    /// The cgroup of a systemd unit that exists now.
    public func cgroup(ofUnit name: String) throws -> Cgroup {
        var ignored: Set<String> = []
        guard let found = unit(name, watch: &ignored).first else { throw CgroupError.noUnit(name) }
        return found
    }
}

extension Cgroup {
    public var name: String {
        relativePath == "/" ? "/" : String(relativePath.split(separator: "/").last ?? "")
    }
}
