// SPDX-License-Identifier: MIT
import NIOCore
import NIOPosix

/// A NIO event loop as a Swift task executor: a task that prefers it runs
/// its steps on the loop's thread, next to the channels it waits on, instead
/// of waking one of Swift's shared threads for each step and the loop's
/// thread again for each read and write.
public final class EventLoopTaskExecutor: TaskExecutor, Sendable {
    /// The thread that talks to the runtimes: their connections' loop, and
    /// the executor their calls' tasks prefer. A gRPC call is many small
    /// steps (grpc-swift's tasks, the HTTP/2 stream, the reply's decoding);
    /// spread over threads they cost the agent more under pod churn.
    public static let runtimes = EventLoopTaskExecutor(MultiThreadedEventLoopGroup.singleton.next())

    public let loop: any EventLoop

    public init(_ loop: any EventLoop) { self.loop = loop }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        loop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
