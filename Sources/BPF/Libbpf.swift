import CLibBPF
import Glibc

/// libbpf's own messages: silent by default (errors reach the user through
/// BPFError), on stderr when verbose.
public enum Libbpf {
    public static func setVerbose(_ verbose: Bool) {
        if verbose {
            _ = libbpf_set_print { _, format, args in
                guard let format, let args else { return 0 }
                return vdprintf(STDERR_FILENO, format, args)
            }
        } else {
            _ = libbpf_set_print(nil)
        }
    }
}
