import ArgumentParser
import Foundation
import KeepaliveCore

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List a cgroup subtree's TCP sockets with the keepalive values the kernel has in force."
    )

    @OptionGroup var target: TargetOptions

    @Flag(help: "Print a JSON array.")
    var json = false

    @OptionGroup var state: StateOptions

    func validate() throws {
        guard target.given == 1 else { throw ValidationError("give a cgroup, --unit or --pid") }
    }

    func run() throws {
        let cgroups = try state.cgroups()
        let pinned = try state.openExisting(cgroups)
        let cgroup = try target.resolve(cgroups)
        let sockets = try SocketIterator(state: pinned, cgroups: cgroups).run(cgroup, mode: .inspect).sockets
        if json {
            let data = try JSONSerialization.data(withJSONObject: sockets.map(\.json),
                                                  options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        let header = ["PID", "COMMAND", "STATE", "LOCAL", "REMOTE", "KEEPALIVE", "IDLE", "INTVL", "CNT", "USER_TIMEOUT",
                      "PRECEDENCE"]
        let rows = sockets.map { s -> [String] in
            [s.owners.first.map { "\($0.pid)" } ?? "-", s.owners.first?.command ?? "-", s.state, s.local, s.remote,
             s.keepalive ? "on" : "off", "\(s.keepidle)", "\(s.keepintvl)", "\(s.keepcnt)", "\(s.userTimeout)",
             s.precedence?.rawValue ?? "-"]
        }
        printTable(header: header, rows: rows)
    }
}

extension SocketReport {
    var json: [String: Any] {
        [
            "pid": owners.first.map { Int($0.pid) as Any } ?? NSNull(),
            "command": owners.first?.command as Any? ?? NSNull(),
            "pids": owners.map { Int($0.pid) },
            "state": state, "local": local, "remote": remote,
            "keepalive": keepalive, "keepidle": Int(keepidle), "keepintvl": Int(keepintvl),
            "keepcnt": Int(keepcnt), "user_timeout": Int(userTimeout),
            "cgroup_id": cgroupID, "inode": inode,
            "precedence": precedence?.rawValue as Any? ?? NSNull(),
        ]
    }
}
