// SPDX-License-Identifier: MIT
import CLibBPF
import Glibc
import Logging
import Synchronization

/// libbpf's own messages go to a swift-log logger, at debug level: every
/// failure libbpf reports also comes back as an error that keepalive reports
/// in one line (a load failure with the verifier's verdict), so its own
/// account (the whole verifier log, say) is for --verbose.
public enum Libbpf {
    private static let destination = Mutex<Logger?>(nil)
    /// libbpf's last warning: why a call failed when the kernel's errno alone does not say.
    private static let lastWarning = Mutex<String?>(nil)

    /// The last warning libbpf printed, once.
    static func takeLastWarning() -> String? {
        lastWarning.withLock { warning in
            defer { warning = nil }
            return warning
        }
    }

    public static func route(to logger: Logger) {
        destination.withLock { $0 = logger }
        _ = libbpf_set_print { level, format, args in
            guard let format, let args else { return 0 }
            var buffer = [CChar](repeating: 0, count: 1024)
            let n = vsnprintf(&buffer, buffer.count, format, args)
            let text = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                .trimmingTrailingNewlines
            guard !text.isEmpty else { return n }
            if level == LIBBPF_WARN { Libbpf.lastWarning.withLock { $0 = text } }
            Libbpf.destination.withLock { logger in
                logger?.debug("\(text)")
            }
            return n
        }
    }
}

extension String {
    var trimmingTrailingNewlines: String {
        var text = self
        while text.last == "\n" { text.removeLast() }
        return text
    }
}
