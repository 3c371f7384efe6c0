// swift-tools-version: 6.2
// Benchmarks for Tributary. A separate package so that `swift test` at the root never builds them.
// Run from bench/: `swift package benchmark --target CodecBenchmarks`, `swift run -c release buffer-bench`,
// or the scripts next to this file. Results with command, machine and date go in ../BENCHMARKS.md.
import PackageDescription

let package = Package(
    name: "TributaryBenchmarks",
    platforms: [.macOS(.v14)],
    dependencies: [
        .package(name: "Tributary", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.0", traits: ["MallocInterposer"]),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.0.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.81.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
    ],
    targets: [
        // MQTT codec and topic-tree micro-benchmarks (ordo-one/benchmark, counts allocations).
        .executableTarget(
            name: "CodecBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "Common", package: "Tributary"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            path: "Benchmarks/CodecBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        // Disk buffer vs SQLite (WAL, same durability) vs the raw disk rate, with concurrent appenders.
        .executableTarget(
            name: "buffer-bench",
            dependencies: [
                .product(name: "DiskBuffer", package: "Tributary"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/BufferBench"
        ),
    ]
)
