// SPDX-License-Identifier: MIT
import CLibBPF
import Glibc
import Testing

import struct SystemPackage.FilePath

@testable import KeepaliveCore

/// The Transaction against an in-memory kernel: the invariant (each kind's
/// program linked exactly at the topmost cgroups whose policy wants it), the
/// repairs of what a crash leaves, and pruning only on proof.
@Suite struct TransactionTests {
    let kernel = InMemoryKernel()

    func transaction() throws -> Transaction { try Transaction(kernel: kernel) }

    @Test func aPolicyIsLinkedAtItsCgroup() throws {
        let app = kernel.mkdir("app")
        #expect(try transaction().apply(Policy(), to: app) == .created)
        #expect(kernel.linked() == ["app"])
        #expect(kernel.linked(.setsockopt) == [])  // only `precedence: policy` wants that program
        #expect(kernel.zeroedSlots == [0] && kernel.policies[app.id]?.slot == 0)  // counters from zero
    }

    @Test func eachPolicyCountsInASlotOfItsOwnAndFreedSlotsAreReused() throws {
        let a = kernel.mkdir("a")
        let b = kernel.mkdir("b")
        let c = kernel.mkdir("c")
        let txn = try transaction()
        try txn.apply(Policy(), to: a)
        try txn.apply(Policy(), to: b)
        try txn.apply(Policy([.keepidle: 30]), to: a)  // an update keeps its slot and its counts
        #expect(kernel.policies[a.id]?.slot == 0 && kernel.policies[b.id]?.slot == 1)
        #expect(try txn.remove(a.id))
        try txn.apply(Policy(), to: c)
        #expect(kernel.policies[c.id]?.slot == 0 && kernel.zeroedSlots == [0, 1, 0])
    }

    @Test func aChunkOfCountersGoesWhenItsLastPolicyGoesNotBefore() throws {
        let cgroups = (0..<5).map { kernel.mkdir("c\($0)") }  // chunks of 4 slots here
        let txn = try transaction()
        for cgroup in cgroups { try txn.apply(Policy(), to: cgroup) }
        try txn.apply(Policy([.keepidle: 30]), to: cgroups[4])  // an update in a chunk of one keeps it
        #expect(try txn.remove(cgroups[0].id) && kernel.releasedChunks == [])
        #expect(try txn.remove(cgroups[4].id) && kernel.releasedChunks == ["slots 4..."])
        for cgroup in cgroups[1...3] { #expect(try txn.remove(cgroup.id)) }
        #expect(kernel.releasedChunks == ["slots 4...", "slots 0..."])
        try txn.apply(Policy([:], rules: [Self.dbRule]), to: cgroups[0])
        try txn.apply(Policy(), to: cgroups[0])  // its rules go, and their chunk
        #expect(kernel.releasedChunks.last == "rule slots 0...")
    }

    static let dbRule = Rule(name: "db", remote: [try! CIDR(parsing: "10.20.0.0/16")], options: [.keepidle: 5])

    @Test func rulesGoInBeforeTheirPolicyWithCountersOfTheirOwnAndLeaveWithIt() throws {
        let a = kernel.mkdir("a")
        let b = kernel.mkdir("b")
        let txn = try transaction()
        try txn.apply(Policy([.keepidle: 60], rules: [Self.dbRule]), to: a)
        try txn.apply(Policy([:], rules: [Self.dbRule]), to: b)
        #expect(kernel.ruleSets[a.id]?.slot == 0 && kernel.ruleSets[b.id]?.slot == 1)
        #expect(kernel.zeroedRuleSlots == [0, 1])
        #expect(kernel.operations.firstIndex(of: "rules a")! < kernel.operations.firstIndex(of: "write a")!)
        // Other values, the same rules: counting goes on.
        try txn.apply(Policy([.keepidle: 30], rules: [Self.dbRule]), to: a)
        #expect(kernel.ruleSets[a.id]?.slot == 0 && kernel.zeroedRuleSlots == [0, 1])
        try txn.apply(Policy([.keepidle: 30], rules: [Self.dbRule, Rule(localPorts: [8443], off: true)]), to: a)
        #expect(kernel.ruleSets[a.id]?.slot == 0 && kernel.ruleSets[a.id]?.rules.count == 2)
        #expect(kernel.zeroedRuleSlots == [0, 1, 0])  // other rules: their counters count from the change
        try txn.apply(Policy([.keepidle: 30]), to: a)  // no rules any more: the set goes, after the policy
        #expect(kernel.ruleSets[a.id] == nil)
        #expect(try txn.remove(b.id))
        #expect(kernel.ruleSets.isEmpty)
        try txn.apply(Policy([:], rules: [Self.dbRule]), to: b)  // a freed rule slot is used again, from zero
        #expect(kernel.ruleSets[b.id]?.slot == 0 && kernel.zeroedRuleSlots == [0, 1, 0, 0])
    }

    @Test func repairRemovesRulesNoPolicyHasAndAPolicyMissingItsRulesSaysSo() throws {
        let a = kernel.mkdir("a")
        let b = kernel.mkdir("b")
        kernel.ruleSets[a.id] = ([Self.dbRule], 3, true)  // a crash after the rules, before the policy
        kernel.ruleSetsAtSlots[3] = [Self.dbRule]
        kernel.policies[b.id] = PolicyRecord(
            policy: Policy([:], rules: [Self.dbRule]),
            owner: .cli,
            path: b.path,
            ruleSlot: 2
        )
        kernel.ruleSetsAtSlots[2] = [Self.dbRule]  // the programs' copy: ka_rules lost b's (an outside hand)
        let report = try transaction().repair()
        #expect(kernel.ruleSets.isEmpty && kernel.ruleSetsAtSlots.isEmpty)
        #expect(
            report.repaired.contains("removed the rules kept for cgroup id \(a.id), which no policy has"),
            "\(report.repaired)"
        )
        #expect(
            kernel.policies[b.id]?.policy.rules == []
                && report.repaired.contains { $0.contains("b") && $0.contains("rules") }
        )
    }

    @Test func aPolicyMissingItsRulesLeavesAnotherPolicysSetAtTheSameSlot() throws {
        let a = kernel.mkdir("a")
        let b = kernel.mkdir("b")
        try transaction().apply(Policy([:], rules: [Self.dbRule]), to: a)
        let slot = kernel.policies[a.id]!.ruleSlot
        kernel.policies[b.id] = PolicyRecord(
            policy: Policy([:], rules: [Self.dbRule]),
            owner: .cli,
            path: b.path,
            slot: 1,
            ruleSlot: slot
        )
        try transaction().repair()
        #expect(kernel.policies[b.id]?.policy.rules == [] && kernel.ruleSetsAtSlots[slot] == [Self.dbRule])
        #expect(!kernel.operations.contains("release rule slot \(slot)"))
    }

    @Test func theProgramsReadEachRuleSetAtItsSlotPutThereBeforeThePolicyAndReleasedAfterIt() throws {
        let a = kernel.mkdir("a")
        let b = kernel.mkdir("b")
        let txn = try transaction()
        try txn.apply(Policy([:], rules: [Self.dbRule]), to: a)
        try txn.apply(Policy([.keepidle: 30], rules: [Self.dbRule]), to: b)
        #expect(kernel.ruleSetsAtSlots == [0: [Self.dbRule], 1: [Self.dbRule]])
        let flags = try #require(try kernel.policies[b.id]?.encoded().flags)
        #expect(flags & KA_POLICY_RULES_AT_SLOT != 0 && flags >> KA_POLICY_RULE_SLOT_SHIFT == 1)
        let other = [Rule(localPorts: [8443], off: true)]
        try txn.apply(Policy([:], rules: other), to: a)  // other rules, at the same slot
        #expect(kernel.ruleSetsAtSlots[0] == other && !kernel.operations.contains("release rule slot 0"))
        try txn.apply(Policy(), to: a)  // no rules any more: the set at its slot goes after the policy
        #expect(kernel.ruleSetsAtSlots.keys.sorted() == [1])
        #expect(kernel.operations.suffix(3) == ["write a", "release rule slot 0", "delete rules \(a.id)"])
        #expect(try txn.remove(b.id) && kernel.ruleSetsAtSlots.isEmpty)
        let released = try #require(kernel.operations.lastIndex(of: "release rule slot 1"))
        #expect(
            kernel.operations[released...].prefix(3) == [
                "release rule slot 1", "delete rules \(b.id)", "delete \(b.id)",
            ]
        )
        #expect(kernel.ruleSets.isEmpty)
        #expect(try transaction().repair().repaired == [])
    }

    @Test func repairPutsRulesWhereTheProgramsReadThemWhenAWriteWasCutShort() throws {
        let a = kernel.mkdir("a")
        let b = kernel.mkdir("b")
        let c = kernel.mkdir("c")
        let txn = try transaction()
        for cgroup in [a, b, c] { try txn.apply(Policy([:], rules: [Self.dbRule]), to: cgroup) }
        // Killed between ka_rules and the slot: the mark says so, whatever the slot holds.
        kernel.ruleSets[a.id]!.writing = true
        kernel.ruleSetsAtSlots[0] = [Rule(localPorts: [22])]
        // An older binary's record: it does not point at the slot its rules have.
        kernel.policies[b.id]!.ruleSlot = 7
        let report = try transaction().repair()
        #expect(kernel.ruleSetsAtSlots == [0: [Self.dbRule], 1: [Self.dbRule], 2: [Self.dbRule]])
        #expect(kernel.ruleSets.values.allSatisfy { !$0.writing } && kernel.policies[b.id]?.ruleSlot == 1)
        #expect(
            report.repaired == [
                "put the rules of the policy on a where the programs read them (rule slot 0)",
                "put the rules of the policy on b where the programs read them (rule slot 1)",
            ],
            "\(report.repaired)"
        )
        #expect(try transaction().repair().repaired == [])
    }

    @Test func aRuleSlotTwoPoliciesSharedHoldsTheRulesOfTheOneLeftThere() throws {
        let a = kernel.mkdir("a")
        let b = kernel.mkdir("b")
        let txn = try transaction()
        try txn.apply(Policy([:], rules: [Self.dbRule]), to: a)
        let other = [Rule(localPorts: [22])]
        try txn.apply(Policy([:], rules: other), to: b)
        // An outside hand gives b a's rule slot, with b's rules in the set there.
        kernel.ruleSets[b.id]!.slot = 0
        kernel.policies[b.id]!.ruleSlot = 0
        kernel.ruleSetsAtSlots = [0: other]
        _ = try transaction().repair()
        let slots = (kernel.ruleSets[a.id]!.slot, kernel.ruleSets[b.id]!.slot)
        #expect(slots.0 != slots.1)
        #expect(kernel.ruleSetsAtSlots == [slots.0: [Self.dbRule], slots.1: other])
        #expect(try transaction().repair().repaired == [])
    }

    @Test func aFullRuleMapIsAnErrorAndChangesNothing() throws {
        kernel.ruleCapacity = 1
        let a = kernel.mkdir("a")
        let b = kernel.mkdir("b")
        let txn = try transaction()
        try txn.apply(Policy([:], rules: [Self.dbRule]), to: a)
        #expect(throws: StateError.self) { try txn.apply(Policy([:], rules: [Self.dbRule]), to: b) }
        #expect(kernel.policies[b.id] == nil && kernel.ruleSets.count == 1)
        try txn.apply(Policy(), to: b)  // without rules it still fits
    }

    @Test func repairGivesPoliciesThatShareASlotOneEach() throws {
        let a = kernel.mkdir("a")
        let b = kernel.mkdir("b")
        kernel.policies[a.id] = PolicyRecord(policy: Policy(), owner: .cli, path: a.path, slot: 4)
        kernel.policies[b.id] = PolicyRecord(policy: Policy(), owner: .cli, path: b.path, slot: 4)
        let report = try transaction().repair()
        #expect(Set([kernel.policies[a.id]!.slot, kernel.policies[b.id]!.slot]) == [4, 0])
        #expect(report.repaired.contains("gave the policy on b counters of its own (slot 4 was shared)"))
    }

    @Test func nestedPoliciesShareTheTopmostLink() throws {
        let parent = kernel.mkdir("p")
        let child = kernel.mkdir("p/c")
        let grandchild = kernel.mkdir("p/c/g")
        let txn = try transaction()
        try txn.apply(Policy(), to: child)
        try txn.apply(Policy(), to: grandchild)
        #expect(kernel.linked() == ["p/c"])
        try txn.apply(Policy(), to: parent)  // covers the child now: its link goes, after the parent's came
        #expect(kernel.linked() == ["p"])
        #expect(
            kernel.operations.firstIndex(of: "link sock_ops p")! < kernel.operations.firstIndex(
                of: "unlink sock_ops \(child.id)"
            )!
        )
        #expect(try txn.remove(parent.id))  // handed down to the child before the parent's link goes
        #expect(kernel.linked() == ["p/c"])
        #expect(
            kernel.operations.lastIndex(of: "link sock_ops p/c")! < kernel.operations.lastIndex(
                of: "unlink sock_ops \(parent.id)"
            )!
        )
        #expect(try txn.remove(child.id))
        #expect(kernel.linked() == ["p/c/g"])
    }

    @Test func precedenceMovesTheSetsockoptLinkOnly() throws {
        let parent = kernel.mkdir("p")
        let child = kernel.mkdir("p/c")
        let txn = try transaction()
        try txn.apply(Policy(), to: parent)
        try txn.apply(Policy([:], precedence: .policy), to: child)
        #expect(kernel.linked(.setsockopt) == ["p/c"] && kernel.linked() == ["p"])
        try txn.apply(Policy([:], precedence: .policy), to: parent)
        #expect(kernel.linked(.setsockopt) == ["p"])
        try txn.apply(Policy(), to: parent)
        #expect(kernel.linked(.setsockopt) == ["p/c"] && kernel.linked() == ["p"])
    }

    @Test func unchangedPoliciesAreNotWrittenAgain() throws {
        let app = kernel.mkdir("app")
        try transaction().apply(Policy([.keepidle: 30]), to: app)
        let writes = kernel.operations.count
        #expect(try transaction().apply(Policy([.keepidle: 30]), to: app) == .unchanged)
        #expect(kernel.operations.count == writes)
        #expect(try transaction().apply(Policy([.keepidle: 31]), to: app) == .updated)
    }

    @Test func aFailedLinkRestoresWhatWasInForce() throws {
        let app = kernel.mkdir("app")
        kernel.failingLinks[app.id] = EACCES
        #expect(throws: LinkFailure.self) { try transaction().apply(Policy(), to: app) }
        #expect(kernel.policies.isEmpty)
    }

    @Test func aFullMapIsAClearErrorAndChangesNothing() throws {
        kernel.capacity = 1
        let a = kernel.mkdir("a")
        let b = kernel.mkdir("b")
        try transaction().apply(Policy(), to: a)
        #expect(throws: StateError.full(capacity: 1)) { try transaction().apply(Policy(), to: b) }
        #expect(Set(kernel.policies.keys) == [a.id] && kernel.linked() == ["a"])
    }

    // MARK: reconcile

    @Test func reloadAtCapacityRemovesStalePoliciesFirst() throws {
        kernel.capacity = 3
        let old = (0..<3).map { kernel.mkdir("x/\($0)") }
        let new = (0..<3).map { kernel.mkdir("y/\($0)") }
        let desire = { (cgroups: [Cgroup]) in
            cgroups.map { Transaction.Desire(cgroup: $0, policy: Policy(), source: "f:1") }
        }
        #expect(try transaction().reconcile(desire(old)).failures.isEmpty)
        let outcome = try transaction().reconcile(desire(new))
        #expect(outcome.failures.isEmpty)
        #expect(Set(kernel.policies.keys) == Set(new.map(\.id)))
        #expect(outcome.changes.filter { $0.kind == .detached }.count == 3)
    }

    @Test func reconcileLeavesTheCLIsPoliciesAlone() throws {
        let mine = kernel.mkdir("mine")
        let theirs = kernel.mkdir("theirs")
        try transaction().apply(Policy(), to: theirs, owner: .cli)
        _ = try transaction().reconcile([Transaction.Desire(cgroup: mine, policy: Policy(), source: "f:1")])
        _ = try transaction().reconcile([])
        #expect(Set(kernel.policies.keys) == [theirs.id])
    }

    @Test func anIncompleteResolutionWithdrawsNothing() throws {
        let seen = kernel.mkdir("seen")
        let unseen = kernel.mkdir("unseen")
        let desire = { (cgroups: [Cgroup]) in
            cgroups.map { Transaction.Desire(cgroup: $0, policy: Policy(), source: "f:1") }
        }
        _ = try transaction().reconcile(desire([seen, unseen]))
        _ = try transaction().reconcile(desire([seen]), keeping: { _, _ in true })  // a directory could not be read
        #expect(Set(kernel.policies.keys) == [seen.id, unseen.id])
        _ = try transaction().reconcile(desire([seen]))
        #expect(Set(kernel.policies.keys) == [seen.id])
    }

    @Test func oneFailingCgroupDoesNotBlockTheOthers() throws {
        let bad = kernel.mkdir("bad")
        let good = kernel.mkdir("good")
        let gone = kernel.mkdir("gone")
        kernel.failingLinks[bad.id] = EACCES
        kernel.rmdir("gone")  // vanished between resolution and the pass
        let outcome = try transaction().reconcile(
            [bad, gone, good].map {
                Transaction.Desire(cgroup: $0, policy: Policy(), source: "f:1")
            }
        )
        #expect(kernel.linked() == ["good"])
        #expect(
            outcome.failures.map(\.scope) == [.cgroup, .vanished]
                || outcome.failures.map(\.scope) == [.vanished, .cgroup]
        )
        #expect(outcome.failures.first { $0.cgroup == gone.path }?.scope == .vanished)
    }

    // MARK: repair

    @Test func policiesAreDroppedOnlyWhenTheirCgroupIsProvenGone() throws {
        let gone = kernel.mkdir("gone")
        let locked = kernel.mkdir("locked")
        let busy = kernel.mkdir("busy")
        let replaced = kernel.mkdir("replaced")
        for cgroup in [gone, locked, busy, replaced] { try transaction().apply(Policy(), to: cgroup) }
        kernel.rmdir("gone")
        kernel.rmdir("replaced")
        kernel.mkdir("replaced")  // same path, another cgroup: the old one is gone
        kernel.unreadable[locked.path] = EACCES  // a delegated cgroup made 0700 by its owner
        kernel.unreadable[busy.path] = EMFILE  // out of descriptors
        let report = try transaction().repair()
        #expect(Set(kernel.policies.keys) == [locked.id, busy.id])
        #expect(report.dropped.sorted() == ["gone (cgroup removed)", "replaced (cgroup removed)"])
        #expect(report.keptUnknown.count == 2)
        #expect(kernel.links[.sockops]![String(gone.id)] == nil)  // its defunct link is removed too
    }

    @Test func repairRemovesALinkBelowACoveringLink() throws {
        // Killed while attaching a parent above a linked child: both linked.
        let parent = kernel.mkdir("p")
        let child = kernel.mkdir("p/c")
        try transaction().apply(Policy(), to: child)
        kernel.policies[parent.id] = PolicyRecord(policy: Policy(), owner: .cli, path: parent.path, slot: 1)
        kernel.links[.sockops]![String(parent.id)] = .current
        let report = try transaction().repair()
        #expect(kernel.linked() == ["p"])
        #expect(report.repaired == ["removed the sock_ops link at p/c, which a link above covers"])
    }

    @Test func repairLinksAPolicyNothingCovers() throws {
        // Killed after the policy was written, before its link was made.
        let app = kernel.mkdir("app")
        kernel.policies[app.id] = PolicyRecord(policy: Policy(), owner: .cli, path: app.path)
        #expect(try transaction().repair().repaired == ["linked the sock_ops program at app"])
        #expect(kernel.linked() == ["app"])
    }

    @Test func repairRemovesLinksWithoutAPolicy() throws {
        // Killed during detach --all, or between a delete and an unlink.
        let app = kernel.mkdir("app")
        kernel.links[.setsockopt]![String(app.id)] = .current
        let report = try transaction().repair()
        #expect(kernel.links[.setsockopt]!.isEmpty)
        #expect(report.repaired.count == 1)
    }

    @Test func repairUpdatesLinksStillRunningAnOlderProgram() throws {
        let app = kernel.mkdir("app")
        try transaction().apply(Policy(), to: app)
        kernel.links[.sockops]![String(app.id)] = .staleProgram  // an upgrade killed half-way
        #expect(try transaction().repair().repaired == ["updated the sock_ops link at app to the current program"])
        #expect(kernel.operations.last == "update sock_ops \(app.id)")
    }

    @Test func whatIsNotOursIsLeftAlone() throws {
        let app = kernel.mkdir("app")
        kernel.links[.sockops]!["notes"] = .foreign("not a BPF link")
        kernel.links[.sockops]![String(app.id)] = .foreign("runs program 7, not keepalive's")
        let report = try transaction().repair()
        #expect(report.keptUnknown.count == 2)
        #expect(kernel.links[.sockops]!.count == 2)
    }

    @Test func repairingTwiceChangesNothingMore() throws {
        let parent = kernel.mkdir("p")
        let child = kernel.mkdir("p/c")
        try transaction().apply(Policy(), to: child)
        kernel.policies[parent.id] = PolicyRecord(policy: Policy(), owner: .cli, path: parent.path)
        _ = try transaction().repair()
        let operations = kernel.operations.count
        let again = try transaction().repair()
        #expect(again.repaired.isEmpty && kernel.operations.count == operations)
    }

    @Test func everyChangeAnnouncesItselfOnce() throws {
        let a = kernel.mkdir("a")
        let b = kernel.mkdir("b")
        let txn = try transaction()
        try txn.apply(Policy(), to: a)
        try txn.apply(Policy(), to: b)
        #expect(kernel.changeSequence == 1)
        _ = try transaction().repair()
        #expect(kernel.changeSequence == 1)  // nothing to repair: nothing announced
    }

    @Test func statusReadsCoverageFromTheLinks() throws {
        let parent = kernel.mkdir("p")
        let child = kernel.mkdir("p/c")
        let lone = kernel.mkdir("lone")
        let txn = try transaction()
        try txn.apply(Policy(), to: parent)
        try txn.apply(Policy(), to: child)
        kernel.policies[lone.id] = PolicyRecord(policy: Policy(), owner: .cli, path: lone.path)
        let entries = try transaction().entries()
        #expect(
            entries.map { "\($0.record.path) \($0.linked) \($0.covered)" } == [
                "lone false false", "p true true", "p/c false true",
            ]
        )
    }
}

@Suite struct PolicyIndexTests {
    @Test func answersAboveAndTopmostBelow() {
        let index = PolicyIndex()
        index.insert("a", id: 1)
        index.insert("a/b/c", id: 2)
        index.insert("a/d", id: 3)
        index.insert("e/f", id: 4)
        #expect(index.ancestors(of: "a/b/c/x") == [1, 2])
        #expect(Set(index.topmost(below: "a") { _ in true }) == [2, 3])
        #expect(Set(index.topmost(below: nil) { _ in true }) == [1, 4])
        #expect(Set(index.topmost(below: nil) { $0 != 1 }) == [2, 3, 4])
        index.remove("a")
        #expect(index.ancestors(of: "a/b/c/x") == [2])
        index.remove("a/b/c")
        #expect(index.topmost(below: "a/b") { _ in true } == [])
    }
}
