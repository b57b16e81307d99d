// swift-tools-version: 6.2
import PackageDescription

let package = Package(
    name: "keepalive",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "keepalive", targets: ["keepalive"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        // libbpf (Debian's libbpf-dev) and the policy header shared with bpf/.
        .systemLibrary(name: "CLibBPF", path: "Sources/CLibBPF"),
        // Small typed wrappers over libbpf: object, program, map, link, bpffs.
        .target(name: "BPF", dependencies: ["CLibBPF"]),
        // Policies, cgroups, pinned state: everything the CLI and agent share.
        .target(
            name: "KeepaliveCore",
            dependencies: [
                "BPF", "CLibBPF",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
            ],
            // Built by `make` from bpf/*.bpf.c; the binary needs no file at run time.
            resources: [
                .embedInCode("Generated/keepalive.bpf.o"),
                .embedInCode("Generated/keepalive_iter.bpf.o"),
            ]
        ),
        // The daemon: watches cgroups, reloads on SIGHUP, serves /metrics.
        .target(
            name: "KeepaliveAgent",
            dependencies: [
                "KeepaliveCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "keepalive",
            dependencies: [
                "KeepaliveCore", "KeepaliveAgent",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(name: "KeepaliveCoreTests", dependencies: ["KeepaliveCore"]),
    ]
)
