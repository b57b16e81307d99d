// SPDX-License-Identifier: MIT
import ArgumentParser
import BPF
import KeepaliveAgent
import KeepaliveCore
import Logging

struct AgentCommand: AsyncParsableCommand, StateCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent",
        abstract: "Run as a daemon: enforce a policy file, cover cgroups as they appear, reload on SIGHUP.",
        discussion: """
            SIGTERM and SIGINT stop the agent with exit 0; its policies stay in force (pinned in bpffs). \
            `keepalive detach --all` removes everything. With --metrics-address it also serves /readyz \
            (ready after the first enforcement pass) and /livez (failing when the last pass failed).
            """
    )

    @Option(help: ArgumentHelp("YAML policy file.", valueName: "path"))
    var config: String

    @Option(
        help: ArgumentHelp(
            "Serve Prometheus metrics at http://HOST:PORT/metrics, and /readyz and /livez.",
            valueName: "host:port"
        )
    )
    var metricsAddress: String?

    @Option(
        help: ArgumentHelp(
            "CRI socket for pods: entries (the file's runtime.cri comes first; else $CONTAINER_RUNTIME_ENDPOINT, else the usual sockets).",
            valueName: "unix:///path"
        )
    )
    var runtimeEndpoint: String?

    @Option(
        help: ArgumentHelp(
            "Docker-compatible API socket for containers: entries (the file's runtime.docker comes first; else $DOCKER_HOST, $CONTAINER_HOST, the usual sockets).",
            valueName: "unix:///path"
        )
    )
    var dockerEndpoint: String?

    @Flag(help: "Check the policy file and exit (needs no privilege).")
    var check = false

    @Flag(help: "Make the policies in force match the file once, then exit (what a reload does).")
    var once = false

    @OptionGroup var options: StateOptions

    /// It runs until a signal stops it (neither --check nor --once).
    var runsAsDaemon: Bool { !check && !once }

    func run() async throws {
        if check {
            let parsed = try Agent.loadConfig(config)
            print("\(config): ok, \(parsed.policies.count) policy entries")
            return
        }
        let style = LineLogHandler.Style.onStderr
        let level: Logger.Level = options.verbose ? .debug : .info
        LoggingSystem.bootstrap { _ in LineLogHandler(style: style, logLevel: level) }
        let logger = Logger(label: "keepalive.agent")
        _ = try Agent.loadConfig(config)  // a bad file stops the start, before anything changes
        let cgroups = try options.cgroups()
        logger.info("starting keepalive \(KeepaliveVersion.string): policy file \(config), pin path \(options.pinPath)")
        Libbpf.route(to: logger)
        let endpoints = [RuntimeKind.cri: runtimeEndpoint, .docker: dockerEndpoint].compactMapValues { $0 }
        let agent = Agent(
            configPath: config,
            metricsAddress: once ? nil : metricsAddress,
            state: options.state(cgroups),
            logger: logger,
            endpoints: endpoints
        )
        try await agent.run(once: once)
    }
}
