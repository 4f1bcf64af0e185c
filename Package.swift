// swift-tools-version:6.1
import PackageDescription

let strictSwift6: [SwiftSetting] = [.swiftLanguageMode(.v6)]

let package = Package(
    name: "Ringmaster",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "ringmaster", targets: ["ringmaster"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-protobuf.git", from: "1.39.0"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
    ],
    targets: [
        // MARK: - Libraries

        .target(
            name: "RingmasterWire",
            dependencies: [
                "JobModel",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            exclude: ["Generated/README.md"],
            swiftSettings: strictSwift6
        ),
        .target(
            name: "RingmasterSecurity",
            dependencies: [
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSwift6
        ),
        .target(
            name: "CReduction",
            path: "Sources/CReduction",
            // Optimised in debug builds too: the tests reduce millions of elements.
            cSettings: [.unsafeFlags(["-O2"])]
        ),
        .target(
            name: "CDoorbell",
            path: "Sources/CDoorbell"
        ),
        .target(
            name: "Collectives",
            dependencies: [
                "CReduction",
                "Verbs",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strictSwift6 + [.unsafeFlags(["-Ounchecked"], .when(configuration: .release))]
        ),
        .target(
            name: "CVerbs",
            path: "Sources/CVerbs",
            linkerSettings: [.linkedLibrary("ibverbs")]
        ),
        .target(
            name: "Verbs",
            dependencies: ["CVerbs"],
            swiftSettings: strictSwift6
        ),
        .systemLibrary(
            name: "CZlib",
            path: "Sources/CZlib",
            pkgConfig: "zlib",
            providers: [.apt(["zlib1g-dev"])]
        ),
        .target(
            name: "Workload",
            dependencies: ["CZlib", "JobModel", .product(name: "Yams", package: "Yams")],
            resources: [.copy("Resources/digits.csv.gz")],
            // Optimised in debug builds too: the tests train real models in real processes.
            swiftSettings: strictSwift6 + [
                .unsafeFlags(["-Ounchecked"], .when(configuration: .release)),
                .unsafeFlags(["-O"], .when(configuration: .debug)),
            ]
        ),
        .target(
            name: "Checkpointing",
            dependencies: [
                "JobModel",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strictSwift6
        ),
        .target(
            name: "JobModel",
            swiftSettings: strictSwift6
        ),
        .target(
            name: "AgentCore",
            dependencies: ["JobModel"],
            swiftSettings: strictSwift6
        ),
        .target(
            name: "CoordinatorCore",
            dependencies: ["JobModel"],
            swiftSettings: strictSwift6
        ),
        .target(
            name: "ControlPlane",
            dependencies: [
                "RingmasterWire",
                "RingmasterSecurity",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSwift6
        ),
        .target(
            name: "Etcd",
            dependencies: [
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: strictSwift6
        ),
        .target(
            name: "Coordinator",
            dependencies: [
                "Checkpointing",
                "Etcd",
                "CoordinatorCore",
                "JobModel",
                "Workload",
                "RingmasterWire",
                "RingmasterSecurity",
                "ControlPlane",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSwift6
        ),
        .target(
            name: "Agent",
            dependencies: [
                "AgentCore",
                "CDoorbell",
                "Checkpointing",
                "Collectives",
                "Verbs",
                "JobModel",
                "Workload",
                .product(name: "Yams", package: "Yams"),
                "RingmasterWire",
                "RingmasterSecurity",
                "ControlPlane",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSwift6
        ),

        .target(
            name: "LocalCluster",
            dependencies: [
                "ControlPlane",
                "Coordinator",
                "CoordinatorCore",
                "JobModel",
                "RingmasterSecurity",
                "RingmasterWire",
                "Workload",
                .product(name: "Yams", package: "Yams"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: strictSwift6
        ),

        .target(
            name: "RingmasterBench",
            dependencies: [
                "Agent",
                "AgentCore",
                "Checkpointing",
                "Collectives",
                "ControlPlane",
                "Coordinator",
                "CoordinatorCore",
                "JobModel",
                "LocalCluster",
                "RingmasterSecurity",
                "RingmasterWire",
                "Verbs",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            path: "bench/Sources/RingmasterBench",
            swiftSettings: strictSwift6
        ),

        // MARK: - Executable

        .executableTarget(
            name: "ringmaster",
            dependencies: [
                "Checkpointing",
                "RingmasterWire",
                "RingmasterSecurity",
                "ControlPlane",
                "Coordinator",
                "Etcd",
                "Agent",
                "LocalCluster",
                "RingmasterBench",
                "Collectives",
                "JobModel",
                "Verbs",
                "Workload",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: strictSwift6
        ),

        // MARK: - Tests

        .testTarget(
            name: "RingmasterWireTests",
            dependencies: [
                "RingmasterWire",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strictSwift6
        ),
        .testTarget(
            name: "RingmasterSecurityTests",
            dependencies: [
                "RingmasterSecurity",
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strictSwift6
        ),
        .testTarget(
            name: "CollectivesTests",
            dependencies: ["Collectives", "CReduction", "Verbs"],
            swiftSettings: strictSwift6
        ),
        .testTarget(
            name: "VerbsTests",
            dependencies: ["Verbs"],
            swiftSettings: strictSwift6
        ),
        .testTarget(
            name: "CheckpointingTests",
            dependencies: ["Checkpointing", "JobModel", "LocalCluster"],
            swiftSettings: strictSwift6
        ),
        .testTarget(
            name: "WorkloadTests",
            dependencies: ["Workload", "JobModel"],
            swiftSettings: strictSwift6
        ),
        .testTarget(
            name: "JobModelTests",
            dependencies: ["JobModel"],
            swiftSettings: strictSwift6
        ),
        .testTarget(
            name: "AgentCoreTests",
            dependencies: ["AgentCore", "JobModel"],
            swiftSettings: strictSwift6
        ),
        .testTarget(
            name: "AgentTests",
            dependencies: [
                "Agent", "AgentCore", "Collectives", "ControlPlane", "CoordinatorCore", "JobModel", "Workload",
            ],
            swiftSettings: strictSwift6
        ),
        .testTarget(
            name: "CoordinatorCoreTests",
            dependencies: ["CoordinatorCore", "JobModel"],
            swiftSettings: strictSwift6
        ),
        .testTarget(
            name: "CoordinatorTests",
            dependencies: [
                "Coordinator", "CoordinatorCore", "JobModel", "RingmasterWire", "RingmasterSecurity", "Workload",
                "ControlPlane", .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strictSwift6
        ),
        .testTarget(
            name: "EtcdTests",
            dependencies: ["Etcd", "RingmasterSecurity", .product(name: "NIOSSL", package: "swift-nio-ssl")],
            swiftSettings: strictSwift6
        ),
        .testTarget(
            name: "IntegrationTests",
            dependencies: [
                "Checkpointing",
                "RingmasterBench",
                "RingmasterWire",
                "RingmasterSecurity",
                "ControlPlane",
                "Coordinator",
                "CoordinatorCore",
                "Etcd",
                "JobModel",
                "Agent",
                "LocalCluster",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSwift6
        ),
    ]
)
