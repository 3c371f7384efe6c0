// swift-tools-version: 6.2
// libFuzzer target for the MQTT decoder. Its own package so that the root package never builds it.
// Sources/MQTTCodec is a link to ../../Sources/Common/MQTT: the fuzzer tests exactly the codec the binaries use.
// Build and run with ./run-fuzzer.sh (see its --help).
import PackageDescription

let package = Package(
    name: "TributaryFuzz",
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.81.0")
    ],
    targets: [
        .target(name: "MQTTCodec", dependencies: [.product(name: "NIOCore", package: "swift-nio")]),
        .target(name: "CFuzzerDriver"),
        .executableTarget(
            name: "MQTTDecoderFuzzer",
            dependencies: ["MQTTCodec", "CFuzzerDriver", .product(name: "NIOCore", package: "swift-nio")]
        ),
    ]
)
