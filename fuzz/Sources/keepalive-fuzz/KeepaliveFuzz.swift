// SPDX-License-Identifier: MIT
// keepalive-fuzz [libFuzzer flags] [corpus directories], with
// KEEPALIVE_FUZZ_TARGET naming one of FuzzTargets: libFuzzer's own main runs
// the target (SwiftPM links libFuzzer's main into fuzzers).
import FuzzTargets
import Glibc

/// The target of this run, read once before libFuzzer calls back.
private let target: String = {
    guard let name = getenv("KEEPALIVE_FUZZ_TARGET").map({ String(cString: $0) }),
        FuzzTargets.names.contains(name)
    else {
        let usage =
            "keepalive-fuzz: KEEPALIVE_FUZZ_TARGET must be one of \(FuzzTargets.names.joined(separator: ", "))\n"
        _ = usage.utf8CString.withUnsafeBufferPointer { write(2, $0.baseAddress, $0.count - 1) }
        exit(2)
    }
    return name
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    FuzzTargets.run(target, Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}
