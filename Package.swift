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
        .package(url: "https://github.com/apple/swift-async-algorithms", from: "1.1.4"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        // libbpf (Debian's libbpf-dev), the policy header shared with bpf/, and
        // the generated skeletons that embed the BPF objects (`make bpf`).
        .systemLibrary(name: "CLibBPF", path: "Sources/CLibBPF"),
        // Small typed wrappers over libbpf: object, program, map, link, bpffs.
        .target(
            name: "BPF",
            dependencies: ["CLibBPF", .product(name: "Logging", package: "swift-log")]
        ),
        // Policies, cgroups, pinned state: everything the CLI and agent share.
        .target(
            name: "KeepaliveCore",
            dependencies: [
                "BPF", "CLibBPF",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        // The daemon: watches cgroups, reloads on SIGHUP, serves /metrics, /readyz, /livez.
        .target(
            name: "KeepaliveAgent",
            dependencies: [
                "KeepaliveCore", "CLibBPF",
                .product(name: "AsyncAlgorithms", package: "swift-async-algorithms"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "SystemPackage", package: "swift-system"),
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
        .testTarget(
            name: "KeepaliveCoreTests",
            dependencies: ["KeepaliveCore", .product(name: "SystemPackage", package: "swift-system")]
        ),
        .testTarget(
            name: "KeepaliveAgentTests",
            dependencies: ["KeepaliveAgent", "KeepaliveCore", .product(name: "NIOCore", package: "swift-nio"),
                           .product(name: "SystemPackage", package: "swift-system")]
        ),
    ]
)
