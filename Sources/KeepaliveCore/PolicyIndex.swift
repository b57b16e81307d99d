// SPDX-License-Identifier: MIT
import struct SystemPackage.FilePath

/// The policies' cgroups as a tree of path components: answers "which
/// policies are above this cgroup" and "which are topmost below it" in time
/// proportional to the answer, without walking the cgroup tree.
final class PolicyIndex {
    private final class Node {
        var children: [FilePath.Component: Node] = [:]
        var id: UInt64?
    }

    private let root = Node()

    func insert(_ path: FilePath, id: UInt64) {
        var node = root
        for component in path.components {
            if let next = node.children[component] {
                node = next
            } else {
                let next = Node()
                node.children[component] = next
                node = next
            }
        }
        node.id = id
    }

    func remove(_ path: FilePath) {
        var trail: [(Node, FilePath.Component)] = []
        var node = root
        for component in path.components {
            guard let next = node.children[component] else { return }
            trail.append((node, component))
            node = next
        }
        node.id = nil
        // Drop the nodes that no longer lead to a policy.
        while let (parent, component) = trail.popLast(), let child = parent.children[component],
            child.id == nil, child.children.isEmpty
        {
            parent.children[component] = nil
        }
    }

    /// Ids of the policies strictly above `path`, nearest last.
    func ancestors(of path: FilePath) -> [UInt64] {
        var found: [UInt64] = []
        var node = root
        for component in path.components {
            if let id = node.id { found.append(id) }
            guard let next = node.children[component] else { break }
            node = next
        }
        return found
    }

    /// Policies strictly below `path` for which `selected` holds, with none
    /// selected between them and `path` (all of them when `path` is nil: the
    /// root's own policy included).
    func topmost(below path: FilePath?, where selected: (UInt64) -> Bool) -> [UInt64] {
        var node = root
        if let path {
            for component in path.components {
                guard let next = node.children[component] else { return [] }
                node = next
            }
        } else if let id = root.id, selected(id) {
            return [id]
        }
        var found: [UInt64] = []
        var pending = Array(node.children.values)
        while let next = pending.popLast() {
            if let id = next.id, selected(id) {
                found.append(id)
            } else {
                pending.append(contentsOf: next.children.values)
            }
        }
        return found
    }
}
