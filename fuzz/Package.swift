// swift-tools-version: 6.2
// SPDX-License-Identifier: MIT
// The Swift fuzzers (`make fuzz`): keepalive's parsers of outside input
// (FuzzTargets) under libFuzzer, built with --sanitize fuzzer,address. A
// package of its own, so that the project's build never carries libFuzzer.
import PackageDescription

let package = Package(
    name: "keepalive-fuzz",
    platforms: [.macOS(.v15)],
    dependencies: [.package(name: "keepalive", path: "..")],
    targets: [
        .executableTarget(name: "keepalive-fuzz", dependencies: [.product(name: "FuzzTargets", package: "keepalive")])
    ]
)
