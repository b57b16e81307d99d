// SPDX-License-Identifier: MIT
import NIOCore
import NIOHTTP1
import NIOPosix

/// GET requests over a unix socket with swift-nio's HTTP/1.1 codec: what the
/// Docker-compatible API needs (one request per connection, a bounded reply).
struct UnixHTTPClient: Sendable {
    let socketPath: String
    /// Replies larger than this are refused: a runtime listing thousands of
    /// containers answers a few MiB; more is not an answer keepalive can use.
    static let maximumBody = 64 << 20

    struct Reply: Sendable {
        let status: HTTPResponseStatus
        let body: ByteBuffer
    }

    typealias Connection = NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>

    func get(_ target: String, timeout: Duration) async throws -> Reply {
        try await withDeadline(timeout) {
            let connection = try await ClientBootstrap(group: EventLoopTaskExecutor.runtimes.loop)
                .connectTimeout(.init(timeout))
                .connect(unixDomainSocketPath: socketPath) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        return try Connection(wrappingChannelSynchronously: channel)
                    }
                }
            return try await connection.executeThenClose { inbound, outbound in
                var headers = HTTPHeaders()
                headers.add(name: "Host", value: "localhost")  // required by HTTP/1.1; the API ignores it
                headers.add(name: "Connection", value: "close")
                try await outbound.write(
                    .head(
                        HTTPRequestHead(
                            version: .http1_1,
                            method: .GET,
                            uri: target,
                            headers: headers
                        )
                    )
                )
                try await outbound.write(.end(nil))
                var status: HTTPResponseStatus?
                var body = ByteBuffer()
                for try await part in inbound {
                    switch part {
                    case .head(let head): status = head.status
                    case .body(var chunk):
                        guard body.readableBytes + chunk.readableBytes <= Self.maximumBody else {
                            throw HTTPClientError.tooLarge
                        }
                        body.writeBuffer(&chunk)
                    case .end:
                        guard let status else { throw HTTPClientError.noHead }
                        return Reply(status: status, body: body)
                    }
                }
                throw HTTPClientError.closedEarly
            }
        }
    }
}

enum HTTPClientError: Error, CustomStringConvertible {
    case tooLarge, noHead, closedEarly, timedOut

    var description: String {
        switch self {
        case .tooLarge: "reply larger than \(UnixHTTPClient.maximumBody >> 20) MiB"
        case .noHead: "reply without a status line"
        case .closedEarly: "connection closed before the reply ended"
        case .timedOut: "no reply in time"
        }
    }
}

/// Runs `operation`, or throws HTTPClientError.timedOut once `timeout` has passed.
func withDeadline<T: Sendable>(
    _ timeout: Duration,
    _ operation: @escaping @Sendable () async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: T.self) { group in
        group.addTask { try await operation() }
        group.addTask {
            try await Task.sleep(for: timeout)
            throw HTTPClientError.timedOut
        }
        defer { group.cancelAll() }
        guard let first = try await group.next() else { throw HTTPClientError.timedOut }  // two tasks: never nil
        return first
    }
}

extension TimeAmount {
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self = .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}
