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
            ],
            // Built by `make` from bpf/keepalive.bpf.c; the binary needs no file at run time.
            resources: [.embedInCode("Generated/keepalive.bpf.o")]
        ),
        .executableTarget(
            name: "keepalive",
            dependencies: [
                "KeepaliveCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(name: "KeepaliveCoreTests", dependencies: ["KeepaliveCore"]),
    ]
)
