// SPDX-License-Identifier: MIT
import BPF
import Glibc

import struct SystemPackage.FilePath

/// Whether this process may load and attach BPF programs.
public enum Privileges {
    static let capNetAdmin = 12, capSysAdmin = 21, capPerfmon = 38, capBPF = 39

    /// The capabilities missing for the privileged mode, by name; empty if
    /// none. A status that cannot be read or understood is an error, not a verdict.
    public static func missingForBPF(status path: String = "/proc/self/status") throws -> [String] {
        guard let mask = effectiveCapabilities(inStatus: try readTextFile(FilePath(path))) else {
            throw SyscallError("find CapEff in \(path)", errno: EINVAL)
        }
        return missing(fromEffective: mask)
    }

    /// CAP_BPF loads programs, CAP_NET_ADMIN attaches them to cgroups, CAP_PERFMON
    /// lets the verifier accept the BTF reads of a socket's cgroup. CAP_SYS_ADMIN
    /// stands in for CAP_BPF and CAP_PERFMON, as on kernels before 5.8.
    static func missing(fromEffective mask: UInt64) -> [String] {
        let has = { (cap: Int) in mask & (1 << UInt64(cap)) != 0 }
        var missing: [String] = []
        if !has(capBPF) && !has(capSysAdmin) { missing.append("CAP_BPF") }
        if !has(capNetAdmin) { missing.append("CAP_NET_ADMIN") }
        if !has(capPerfmon) && !has(capSysAdmin) { missing.append("CAP_PERFMON") }
        return missing
    }

    static func effectiveCapabilities(inStatus text: String) -> UInt64? {
        for line in text.split(separator: "\n") where line.hasPrefix("CapEff:") {
            return UInt64(String(line.dropFirst("CapEff:".count).filter { !$0.isWhitespace }), radix: 16)
        }
        return nil
    }
}
