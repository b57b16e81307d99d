// SPDX-License-Identifier: MIT
import Glibc

/// sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET, if
/// systemd started us with Type=notify (else nothing).
struct SystemdNotifier: Sendable {
    private let path: String?
    /// WatchdogSec= is set for this process: it must say WATCHDOG=1 regularly.
    let watchdog: Bool

    init(environment: [String: String]) {
        path = environment["NOTIFY_SOCKET"].flatMap { $0.isEmpty ? nil : $0 }
        watchdog =
            path != nil && (environment["WATCHDOG_USEC"].flatMap(UInt64.init) ?? 0) > 0
            && (environment["WATCHDOG_PID"].flatMap(Int32.init) ?? getpid()) == getpid()
    }

    func notify(_ state: String) {
        guard let path else { return }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        // An abstract socket is written "@name" in the variable, "\0name" on the wire.
        var bytes = Array(path.utf8)
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in bytes.enumerated() { raw[index] = byte }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
        _ = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sockaddr in
                state.withCString { text in
                    sendto(fd, text, strlen(text), Int32(MSG_NOSIGNAL), sockaddr, length)
                }
            }
        }
    }
}
