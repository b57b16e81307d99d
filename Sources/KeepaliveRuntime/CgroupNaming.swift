// SPDX-License-Identifier: MIT
import struct SystemPackage.FilePath

/// How kubelet and the container runtimes name cgroups, under both drivers:
///
///     cgroupfs   /kubepods/besteffort/pod<uid>/<id>      (/kubepods/pod<uid> for guaranteed)
///                /libpod_parent/libpod-<id>, /docker/<id>
///     systemd    kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice/
///                    cri-containerd-<id>.scope  (crio-<id>.scope)
///                machine.slice/libpod-<id>.scope, system.slice/docker-<id>.scope
///
/// A runtime's `cgroupsPath` is a path under cgroupfs and `slice:prefix:name`
/// under systemd (runc's convention).
public enum CgroupNaming {
    /// The cgroup a runtime's cgroupsPath (or a pod's cgroup_parent) names,
    /// below the hierarchy's root.
    public static func path(ofCgroupsPath text: String) throws(CgroupNamingError) -> FilePath {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        if parts.count == 3 {
            // systemd: "slice:prefix:name"; a name ending in .slice is the unit itself.
            let (slice, prefix, name) = (String(parts[0]), String(parts[1]), String(parts[2]))
            guard !name.isEmpty, !name.contains("/") else { throw .unknownForm(text) }
            let unit = name.hasSuffix(".slice") ? name : (prefix.isEmpty ? name : "\(prefix)-\(name)") + ".scope"
            guard let parent = slicePath(slice.isEmpty ? "system.slice" : slice) else { throw .unknownForm(text) }
            return parent.appending(unit)
        }
        guard parts.count == 1 else { throw .unknownForm(text) }
        if text.hasSuffix(".slice"), !text.contains("/") {
            // kubelet's cgroup_parent under the systemd driver: a slice's name alone.
            guard let path = slicePath(text) else { throw .unknownForm(text) }
            return path
        }
        let path = FilePath(text)
        guard path.isAbsolute, !path.components.isEmpty, path.components.allSatisfy({ $0.kind == .regular }) else {
            throw .unknownForm(text)
        }
        return FilePath(root: nil, path.components)
    }

    /// A systemd slice's cgroup: each dash adds a level
    /// ("a-b-c.slice" is a.slice/a-b.slice/a-b-c.slice); "-.slice" is the root.
    public static func slicePath(_ name: String) -> FilePath? {
        guard name.hasSuffix(".slice") else { return nil }
        let stem = name.dropLast(".slice".count)
        if stem == "-" { return FilePath() }
        let words = stem.split(separator: "-", omittingEmptySubsequences: false)
        guard !words.contains(where: \.isEmpty), !stem.contains("/") else { return nil }
        var path = FilePath()
        for end in 1...words.count { path.append(words[..<end].joined(separator: "-") + ".slice") }
        return path
    }

    /// What a cgroup directory's name says it holds.
    public enum Kind: Equatable, Sendable {
        /// A Kubernetes pod: its uid.
        case pod(uid: String)
        /// A container: its full id, and the runtime family the name comes from.
        case container(id: String, RuntimeFamily)
        case other
    }

    /// Who named a container's cgroup.
    public enum RuntimeFamily: Equatable, Sendable {
        /// containerd or CRI-O under kubelet (cri-containerd-, crio-), or a bare id (cgroupfs).
        case cri
        /// docker (docker-<id>.scope) or podman (libpod-<id>).
        case docker
        /// A bare id: cgroupfs under containerd, CRI-O or docker.
        case unknown
    }

    public static func kind(of name: String) -> Kind {
        var stem = Substring(name)
        if stem.hasSuffix(".slice") {
            // kubepods-burstable-pod<uid with _>.slice, kubepods-pod<uid_>.slice
            stem = stem.dropLast(".slice".count)
            guard let range = stem.range(of: "-pod", options: .backwards) else { return .other }
            let uid = String(stem[range.upperBound...].replacing("_", with: "-"))
            return isUID(uid[...]) ? .pod(uid: uid) : .other
        }
        if stem.hasPrefix("pod"), isUID(stem.dropFirst(3)) { return .pod(uid: String(stem.dropFirst(3))) }
        if isContainerID(stem) { return .container(id: String(stem), .unknown) }
        if stem.hasSuffix(".scope") { stem = stem.dropLast(".scope".count) }
        for (prefix, family) in containerPrefixes where stem.hasPrefix(prefix) {
            let id = stem.dropFirst(prefix.count)
            return isContainerID(id) ? .container(id: String(id), family) : .other
        }
        return .other
    }

    static let containerPrefixes: [(String, RuntimeFamily)] = [
        ("cri-containerd-", .cri), ("crio-", .cri), ("docker-", .docker), ("libpod-", .docker),
    ]

    /// 64 lowercase hex digits: what containerd, CRI-O, docker and podman use.
    static func isContainerID(_ text: Substring) -> Bool {
        text.utf8.count == 64 && text.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) }
    }

    /// A Kubernetes uid: a UUID in its textual form.
    static func isUID(_ text: Substring) -> Bool {
        let groups = text.split(separator: "-", omittingEmptySubsequences: false)
        return groups.map(\.utf8.count) == [8, 4, 4, 4, 12]
            && groups.allSatisfy { $0.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) } }
    }
}

public enum CgroupNamingError: Error, CustomStringConvertible, Equatable, Sendable {
    case unknownForm(String)

    public var description: String {
        switch self {
        case let .unknownForm(text): "cgroup path '\(text)' is neither a path nor systemd's slice:prefix:name"
        }
    }
}
