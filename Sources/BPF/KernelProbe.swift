// SPDX-License-Identifier: MIT
import CLibBPF
import Glibc

/// Questions to the running kernel, answered by what it accepts (a program
/// load, a BTF type), never by its version: distribution kernels carry
/// backports. A probe that could not run (EPERM, ENOMEM, ...) throws: that is
/// no answer.
public enum KernelProbe {
    /// Whether the kernel loads programs of this type (a tracing one at its attach point).
    public static func programType(_ type: bpf_prog_type, attach: AttachPoint = .none) throws(SyscallError) -> Bool {
        try answer("probe program type \(type.rawValue)", ka_probe_program_type(type, attach.type, attach.btfID))
    }

    /// Whether programs of this type may call `helper`.
    public static func helper(
        _ helper: bpf_func_id,
        in type: bpf_prog_type,
        attach: AttachPoint = .none
    ) throws(SyscallError) -> Bool {
        try answer(
            "probe helper \(helper.rawValue) in program type \(type.rawValue)",
            ka_probe_helper(type, attach.type, attach.btfID, helper)
        )
    }

    private static func answer(_ what: String, _ result: Int32) throws(SyscallError) -> Bool {
        guard result >= 0 else { throw SyscallError(what, errno: -result) }
        return result == 1
    }

    /// Where a tracing program attaches: its attach type and the kernel BTF id of its target.
    public struct AttachPoint: Sendable {
        public let type: bpf_attach_type
        public let btfID: UInt32

        public static let none = AttachPoint(type: bpf_attach_type(0), btfID: 0)

        public init(type: bpf_attach_type, btfID: UInt32) {
            self.type = type
            self.btfID = btfID
        }
    }
}

/// The running kernel's own BTF (/sys/kernel/btf/vmlinux), for questions about its types.
public final class KernelBTF {
    public static let path = "/sys/kernel/btf/vmlinux"
    private let btf: OpaquePointer

    /// nil when the kernel has no BTF (CONFIG_DEBUG_INFO_BTF); a BTF that is there but cannot be read throws.
    public init?() throws(SyscallError) {
        guard access(Self.path, F_OK) == 0 else {
            if errno == ENOENT { return nil }
            throw SyscallError("inspect \(Self.path)", errno: errno)
        }
        btf = try SyscallError.check("read the kernel's BTF at \(Self.path)", btf__load_vmlinux_btf())
    }

    deinit { btf__free(btf) }

    /// The id of the type of this name and kind; nil if there is none.
    public func typeID(_ name: String, kind: Int32) -> UInt32? {
        let id = btf__find_by_name_kind(btf, name, UInt32(kind))
        return id > 0 ? UInt32(id) : nil
    }

    public func hasFunction(_ name: String) -> Bool { typeID(name, kind: Self.function) != nil }
    public func hasTypedef(_ name: String) -> Bool { typeID(name, kind: Int32(BTF_KIND_TYPEDEF)) != nil }

    /// BTF_KIND_FUNC, which libbpf's btf.h defines again as a macro (ambiguous to Swift).
    public static let function: Int32 = 12
}
