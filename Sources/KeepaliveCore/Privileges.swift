/// Whether this process may load and attach BPF programs.
public enum Privileges {
    static let capNetAdmin = 12, capSysAdmin = 21, capBPF = 39

    /// The capabilities missing for the privileged mode, by name; empty if none.
    public static func missingForBPF(status path: String = "/proc/self/status") -> [String] {
        guard let text = try? readTextFile(path), let mask = effectiveCapabilities(inStatus: text) else {
            return ["CAP_BPF", "CAP_NET_ADMIN"]
        }
        var missing: [String] = []
        // CAP_SYS_ADMIN stands in for CAP_BPF, as on kernels before 5.8.
        if mask & (1 << capBPF) == 0 && mask & (1 << capSysAdmin) == 0 { missing.append("CAP_BPF") }
        if mask & (1 << capNetAdmin) == 0 { missing.append("CAP_NET_ADMIN") }
        return missing
    }

    static func effectiveCapabilities(inStatus text: String) -> UInt64? {
        for line in text.split(separator: "\n") where line.hasPrefix("CapEff:") {
            return UInt64(String(line.dropFirst("CapEff:".count).filter { !$0.isWhitespace }), radix: 16)
        }
        return nil
    }
}
