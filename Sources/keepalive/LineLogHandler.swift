// SPDX-License-Identifier: MIT
import Foundation
import Glibc
import KeepaliveCore
import Logging

/// swift-log as one line per message on stderr, in the form its reader wants:
/// a command's user ("keepalive: warning: ..."), a terminal or a file
/// (timestamped), or systemd's journal, which keeps its own timestamps and
/// reads the priority from a "<N>" prefix (sd-daemon(3)).
struct LineLogHandler: LogHandler {
    enum Style {
        case command, daemon, journal

        /// What stderr's reader wants: the journal when stderr is the stream
        /// systemd gave the service, else timestamped lines.
        static var onStderr: Style {
            guard let stream = getenv("JOURNAL_STREAM").map({ String(cString: $0) }) else { return .daemon }
            var st = stat()
            guard fstat(STDERR_FILENO, &st) == 0 else { return .daemon }
            return stream == "\(st.st_dev):\(st.st_ino)" ? .journal : .daemon
        }
    }

    let style: Style
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let text: String
        switch style {
        case .command: text = "keepalive: \(event.level): \(event.message)"
        case .journal: text = "<\(Self.syslogPriority(event.level))>\(event.message)"
        case .daemon: text = "\(Self.timestamp()) \(event.level) \(event.message)"
        }
        printError(text)
    }

    private static func syslogPriority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    /// UTC with milliseconds: a daemon's log is read against other clocks' events.
    private static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var parts = tm()
        gmtime_r(&now.tv_sec, &parts)
        var buffer = [UInt8](repeating: 0, count: 32)
        let length = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%S", &parts)
        let milliseconds = String(now.tv_nsec / 1_000_000).leftPadded(to: 3)
        return String(decoding: buffer[..<length], as: UTF8.self) + ".\(milliseconds)Z"
    }
}
