import CLibBPF
import Glibc
import Logging
import Synchronization

/// libbpf's own messages go to a swift-log logger: warnings as warnings,
/// the rest at debug level.
public enum Libbpf {
    private static let destination = Mutex<Logger?>(nil)

    public static func route(to logger: Logger) {
        destination.withLock { $0 = logger }
        _ = libbpf_set_print { level, format, args in
            guard let format, let args else { return 0 }
            var buffer = [CChar](repeating: 0, count: 1024)
            let n = vsnprintf(&buffer, buffer.count, format, args)
            let text = String(cString: buffer).trimmingTrailingNewlines
            guard !text.isEmpty else { return n }
            Libbpf.destination.withLock { logger in
                logger?.log(level: level == LIBBPF_WARN ? .warning : .debug, "\(text)")
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
