// SPDX-License-Identifier: MIT
import ArgumentParser
import KeepaliveCore

struct Prepare: ParsableCommand, StateCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make the pin directory (mounting bpffs if the host has none): run before a sandboxed agent.",
        discussion: """
            systemd runs it as ExecStartPre=+, in the host's mount namespace, so that the bpffs \
            and the directory exist for everyone and the agent's sandbox can stay read-only elsewhere.
            """
    )

    @OptionGroup var options: StateOptions

    func run() throws {
        let state = options.state(try options.cgroups())
        try state.prepare()
        print("\(state.root) is ready")
    }
}
