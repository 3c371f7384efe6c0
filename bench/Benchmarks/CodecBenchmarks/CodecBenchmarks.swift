// MQTT codec and subscription-tree micro-benchmarks (issue 3). Run from bench/:
//   swift package benchmark --target CodecBenchmarks
// Results with command, machine and date go in the "Codec" section of ../BENCHMARKS.md.
import Benchmark
import Common
import NIOCore

/// A 1 KiB QoS 2 MQTT 5 PUBLISH as the edge agent sends it upstream: topic, packet id, message expiry,
/// content type, and the agent id and sequence number as user properties.
let publishPacket: MQTTPacket = {
    var properties = MQTTProperties(userProperties: [
        MQTTUserProperty(name: "agent", value: "gw-0042"),
        MQTTUserProperty(name: "seq", value: "1234567890"),
    ])
    properties.payloadFormatIndicator = .unspecified
    properties.messageExpiryInterval = 3600
    properties.contentType = "application/cbor"
    return .publish(
        MQTTPublish(
            topic: "site/berlin/line-3/device-0042/telemetry",
            payload: ByteBuffer(repeating: 0xA5, count: 1024),
            qos: .exactlyOnce,
            packetId: 4711,
            properties: properties))
}()

let publishBytes: ByteBuffer = {
    var buffer = ByteBuffer()
    try? publishPacket.encode(into: &buffer, version: .v5)
    return buffer
}()

/// The same PUBLISH without the content type: only user properties and integers besides topic and payload.
let publishBytesWithoutContentType: ByteBuffer = {
    guard case .publish(var publish) = publishPacket else { return ByteBuffer() }
    publish.properties.contentType = nil
    var buffer = ByteBuffer()
    try? MQTTPacket.publish(publish).encode(into: &buffer, version: .v5)
    return buffer
}()

/// 100,000 filters as a broker holds them: one exact subscription per device (site/line/device/kind), plus a
/// share of `+` and `#` filters at every level.
let filterStrings: [String] = {
    var filters: [String] = []
    filters.reserveCapacity(100_000)
    var index = 0
    while filters.count < 100_000 {
        let site = "site-\(index % 20)"
        let line = "line-\(index / 20 % 50)"
        let device = "device-\(index)"
        switch index % 10 {
        case 0: filters.append("\(site)/\(line)/+/telemetry")
        case 1: filters.append("\(site)/+/\(device)/#")
        case 2: filters.append("\(site)/\(line)/\(device)/#")
        default: filters.append("\(site)/\(line)/\(device)/telemetry")
        }
        index += 1
    }
    return filters
}()

let subscriptionTree: SubscriptionTree<Int, Int> = {
    var tree = SubscriptionTree<Int, Int>()
    for (index, string) in filterStrings.enumerated() {
        if let filter = try? MQTTTopicFilter(string) { tree.insert(filter, key: index, value: index) }
    }
    return tree
}()

/// Topics that hit an exact filter, a `+` filter and a `#` filter each.
let matchTopics = (0..<64).map { index in
    let device = index * 1_511 % 100_000
    return "site-\(device % 20)/line-\(device / 20 % 50)/device-\(device)/telemetry"
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.throughput, .wallClock, .mallocCountTotal],
        scalingFactor: .kilo,
        maxDuration: .seconds(3),
        maxIterations: 1_000_000
    )

    Benchmark("MQTT decode+encode 1 KiB QoS 2 PUBLISH v5") { benchmark in
        var out = ByteBuffer()
        out.reserveCapacity(2048)
        for _ in benchmark.scaledIterations {
            var input = publishBytes
            guard let packet = try? MQTTPacket.decode(from: &input, version: .v5, maximumPacketSize: 1 << 20) else {
                return  // the input is ours; a decoding failure shows as a near-zero iteration count
            }
            out.clear()
            try? packet.encode(into: &out, version: .v5)
            blackHole(out.readableBytes)
        }
    }

    Benchmark("MQTT decode 1 KiB QoS 2 PUBLISH v5") { benchmark in
        for _ in benchmark.scaledIterations {
            var input = publishBytes
            blackHole(try? MQTTPacket.decode(from: &input, version: .v5, maximumPacketSize: 1 << 20))
        }
    }

    Benchmark("MQTT decode 1 KiB QoS 2 PUBLISH v5, no content type") { benchmark in
        for _ in benchmark.scaledIterations {
            var input = publishBytesWithoutContentType
            blackHole(try? MQTTPacket.decode(from: &input, version: .v5, maximumPacketSize: 1 << 20))
        }
    }

    Benchmark("MQTT encode 1 KiB QoS 2 PUBLISH v5") { benchmark in
        var out = ByteBuffer()
        out.reserveCapacity(2048)
        for _ in benchmark.scaledIterations {
            out.clear()
            try? publishPacket.encode(into: &out, version: .v5)
            blackHole(out.readableBytes)
        }
    }

    Benchmark("Topic tree match, 100k filters") { benchmark in
        let tree = subscriptionTree
        var topicIndex = 0
        for _ in benchmark.scaledIterations {
            var hits = 0
            tree.forEachMatch(matchTopics[topicIndex & 63]) { _, _, value in hits &+= value }
            topicIndex &+= 1
            blackHole(hits)
        }
    }
}
