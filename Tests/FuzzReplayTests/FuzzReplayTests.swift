// SPDX-License-Identifier: MIT
import Foundation
import FuzzTargets
import Testing

/// Every input in the fuzzers' corpus and every input that ever made one
/// fail (fuzz/corpus, fuzz/crashes), run again through its target.
@Suite struct FuzzReplayTests {
    static let fuzz = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("fuzz")

    static func inputs(_ target: String) -> [URL] {
        ["corpus", "crashes"].flatMap { kind in
            let directory = fuzz.appendingPathComponent(kind).appendingPathComponent(target)
            return
                ((try? FileManager.default.contentsOfDirectory(at: directory, includingPropertiesForKeys: nil)) ?? [])
                .filter { !$0.lastPathComponent.hasPrefix(".") }
        }
    }

    @Test(arguments: FuzzTargets.names)
    func corpusAndCrashesReplay(target: String) throws {
        let inputs = Self.inputs(target)
        #expect(inputs.count >= 5, "a corpus for \(target)")
        for input in inputs { FuzzTargets.run(target, Array(try Data(contentsOf: input))) }
    }
}
