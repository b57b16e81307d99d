import ArgumentParser
import Foundation
import KeepaliveCore

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List every cgroup with a policy: values in force and sockets configured."
    )

    @Flag(help: "Print JSON.")
    var json = false

    @OptionGroup var state: StateOptions

    func run() throws {
        let entries = try state.openExisting(state.cgroups())?.entries() ?? []
        if json {
            let data = try JSONSerialization.data(withJSONObject: entries.map(\.json),
                                                  options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        guard !entries.isEmpty else {
            print("no policies")
            return
        }
        let header = ["CGROUP", "IDLE", "INTVL", "CNT", "USER_TIMEOUT", "SYNCNT", "MAXSEG", "CLAMP", "SOCKETS",
                      "PRECEDENCE", "ATTACHED", "BY"]
        let rows = entries.map { e -> [String] in
            let ut = "\(e.effectiveUserTimeout)" + (e.policy.userTimeout == -1 ? " (derived)" : "")
            return [e.path ?? "(removed, id \(e.cgroupID))", "\(e.policy.keepidle)", "\(e.policy.keepintvl)",
                    "\(e.policy.keepcnt)", ut, "\(e.policy.syncnt)", "\(e.policy.maxseg)",
                    "\(e.policy.windowClamp)", "\(e.socketsConfigured)", e.policy.precedence.rawValue,
                    e.attached ? "yes" : "inherited",
                    e.owner.rawValue]
        }
        printTable(header: header, rows: rows)
    }
}

extension Transaction.Entry {
    var json: [String: Any] {
        var object: [String: Any] = [
            "cgroup": path as Any? ?? NSNull(),
            "cgroup_id": cgroupID,
            "sockets_configured": socketsConfigured,
            "attached": attached,
            "user_timeout_derived": policy.userTimeout == -1,
            "owner": owner.rawValue,
            "precedence": policy.precedence.rawValue,
        ]
        for option in PolicyOption.allCases { object[option.key] = Int(policy[option]) }
        object[PolicyOption.userTimeout.key] = Int(effectiveUserTimeout)
        return object
    }
}
