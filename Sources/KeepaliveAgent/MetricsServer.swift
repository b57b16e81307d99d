// SPDX-License-Identifier: MIT
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle
import Synchronization

/// Serves GET /metrics (Prometheus text), /readyz and /livez. Each
/// connection is handled in a task of its own through NIOAsyncChannel, so
/// reading the kernel's maps for a scrape never runs on the event loop. A
/// bounded number of connections, each closed when idle, so a client holding
/// many open can never exhaust the agent's descriptors.
struct MetricsServer: Service {
    let host: String
    let port: Int
    /// Renders /metrics: it reads the kernel's maps (system calls), so it
    /// runs on NIO's blocking thread pool, never on a cooperative thread.
    let metrics: @Sendable () throws -> [UInt8]
    let health: Health
    let logger: Logger

    static let maximumConnections = 32
    static let idleTimeout = TimeAmount.seconds(5)

    /// "127.0.0.1:9464", "[::1]:9464" or ":9464" (all addresses).
    static func parseAddress(_ text: String) throws -> (host: String, port: Int) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
            (1...65535).contains(port)
        else {
            throw AgentError("metrics address '\(text)': expected HOST:PORT, e.g. 127.0.0.1:9464")
        }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return (host.isEmpty ? "::" : host, port)
    }

    typealias Connection = NIOAsyncChannel<HTTPServerRequestPart, HTTPPart<HTTPResponseHead, ByteBuffer>>

    func run() async throws {
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(IdleStateHandler(allTimeout: Self.idleTimeout))
                    try channel.pipeline.syncOperations.addHandler(CloseWhenIdle())
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(HTTPPartsToBuffers())
                    return try Connection(wrappingChannelSynchronously: channel)
                }
            }
        logger.info("serving metrics on http://\(host.contains(":") ? "[\(host)]" : host):\(port)/metrics")
        let open = ConnectionCount()
        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                try await server.executeThenClose { connections in
                    for try await connection in connections {
                        guard open.enter(below: Self.maximumConnections) else {
                            try? await connection.channel.close()  // refused: its close failing changes nothing
                            continue
                        }
                        group.addTask {
                            defer { open.leave() }
                            await serve(connection)
                        }
                    }
                }
            }
        } onGracefulShutdown: {
            server.channel.close(promise: nil)
        }
    }

    private func serve(_ connection: Connection) async {
        // A scraper that hangs up or sends garbage ends its own connection, nothing else.
        try? await connection.executeThenClose { inbound, outbound in
            for try await part in inbound {
                guard case .head(let head) = part else { continue }
                let (status, type, body) = await respond(to: head)
                var headers = HTTPHeaders()
                headers.add(name: "Content-Type", value: type)
                headers.add(name: "Content-Length", value: "\(body.count)")
                headers.add(name: "Connection", value: "close")
                try await outbound.write(
                    .head(HTTPResponseHead(version: head.version, status: status, headers: headers))
                )
                try await outbound.write(.body(ByteBuffer(bytes: body)))
                try await outbound.write(.end(nil))
                return
            }
        }
    }

    private func respond(to head: HTTPRequestHead) async -> (HTTPResponseStatus, String, [UInt8]) {
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        guard head.method == .GET else { return (.methodNotAllowed, "text/plain", Array("GET only\n".utf8)) }
        switch path {
        case "/metrics":
            do {
                let body = try await NIOThreadPool.singleton.runIfActive(metrics)
                return (.ok, "text/plain; version=0.0.4; charset=utf-8", body)
            } catch {
                // Figures that were not read are not shown: the scrape fails, with why.
                return (.internalServerError, "text/plain", Array("cannot read the pinned state: \(error)\n".utf8))
            }
        case "/readyz":
            return health.notReadyReason.map { (.serviceUnavailable, "text/plain", Array("not ready: \($0)\n".utf8)) }
                ?? (.ok, "text/plain", Array("ready\n".utf8))
        case "/livez":
            return health.notAliveReason.map { (.serviceUnavailable, "text/plain", Array("not alive: \($0)\n".utf8)) }
                ?? (.ok, "text/plain", Array("alive\n".utf8))
        default:
            return (.notFound, "text/plain", Array("not found: try /metrics, /readyz or /livez\n".utf8))
        }
    }
}

/// Connections being served, bounded.
final class ConnectionCount: Sendable {
    private let count = Mutex(0)

    func enter(below limit: Int) -> Bool {
        count.withLock { count in
            guard count < limit else { return false }
            count += 1
            return true
        }
    }

    func leave() { count.withLock { $0 -= 1 } }
}

/// Closes a connection that has been idle too long.
final class CloseWhenIdle: ChannelInboundHandler, Sendable {
    typealias InboundIn = NIOAny

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }
}

/// The server pipeline writes HTTPServerResponsePart (IOData bodies); the
/// async channel hands it ByteBuffer bodies.
final class HTTPPartsToBuffers: ChannelOutboundHandler, Sendable {
    typealias OutboundIn = HTTPPart<HTTPResponseHead, ByteBuffer>
    typealias OutboundOut = HTTPServerResponsePart

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let head): context.write(wrapOutboundOut(.head(head)), promise: promise)
        case .body(let buffer): context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: promise)
        case .end(let trailers): context.write(wrapOutboundOut(.end(trailers)), promise: promise)
        }
    }
}
