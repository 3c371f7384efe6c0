import NIOCore
import NIOEmbedded
import Testing

@testable import Common

/// The NIO decoder and encoder on an `EmbeddedChannel`: split buffers, one byte at a time, version learning,
/// errors as values.
@Suite("MQTT channel handlers")
struct MQTTChannelHandlerTests {
    static func stream(_ packets: [MQTTPacket], version: MQTTProtocolVersion) throws -> ByteBuffer {
        var stream = ByteBuffer()
        for packet in packets { try packet.encode(into: &stream, version: version) }
        return stream
    }

    static let session: [MQTTPacket] = {
        var properties = MQTTProperties(userProperties: [MQTTUserProperty(name: "seq", value: "1")])
        properties.messageExpiryInterval = 30
        return [
            .connect(MQTTConnect(protocolVersion: .v5, clientIdentifier: "agent-1", cleanStart: false)),
            .publish(MQTTPublish(topic: "s/1/t", payload: ByteBuffer(string: "21.5"), qos: .exactlyOnce, packetId: 7, properties: properties)),
            .pubrel(MQTTPublishAck(packetId: 7)),
            .pingreq,
            .disconnect(MQTTDisconnect()),
        ]
    }()

    func serverChannel(maximumPacketSize: Int = 1 << 20) throws -> (EmbeddedChannel, MQTTVersionBox) {
        let box = MQTTVersionBox()
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(
            ByteToMessageHandler(MQTTPacketDecoder(maximumPacketSize: maximumPacketSize, versionBox: box)))
        try channel.pipeline.syncOperations.addHandler(MQTTPacketEncoderHandler(versionBox: box))
        return (channel, box)
    }

    func readAll(_ channel: EmbeddedChannel) throws -> [MQTTPacket] {
        var packets: [MQTTPacket] = []
        while let packet = try channel.readInbound(as: MQTTPacket.self) { packets.append(packet) }
        return packets
    }

    @Test func dripFeedOneByteAtATime() throws {
        let (channel, box) = try serverChannel()
        var stream = try Self.stream(Self.session, version: .v5)
        var received: [MQTTPacket] = []
        while let byte = stream.readSlice(length: 1) {
            try channel.writeInbound(byte)
            received += try readAll(channel)
        }
        #expect(received == Self.session)
        #expect(box.version == .v5)
        _ = try channel.finish()
    }

    @Test func everySplitPoint() throws {
        let whole = try Self.stream(Self.session, version: .v5)
        for split in 0...whole.readableBytes {
            let (channel, _) = try serverChannel()
            try channel.writeInbound(whole.getSlice(at: 0, length: split)!)
            try channel.writeInbound(whole.getSlice(at: split, length: whole.readableBytes - split)!)
            #expect(try readAll(channel) == Self.session, "split at \(split)")
            _ = try channel.finish()
        }
    }

    @Test func allPacketsInOneBuffer() throws {
        let (channel, _) = try serverChannel()
        try channel.writeInbound(try Self.stream(Self.session, version: .v5))
        #expect(try readAll(channel) == Self.session)
        _ = try channel.finish()
    }

    @Test func serverLearnsVersionFromConnectAndEncodesWithIt() throws {
        let (channel, box) = try serverChannel()
        let connect = MQTTPacket.connect(MQTTConnect(protocolVersion: .v311, clientIdentifier: "d"))
        try channel.writeInbound(try connect.encoded(version: .v311))
        #expect(try readAll(channel) == [connect])
        #expect(box.version == .v311)
        try channel.writeOutbound(MQTTPacket.connack(MQTTConnAck()))
        let out = try channel.readOutbound(as: ByteBuffer.self)
        #expect(out.map { Array($0.readableBytesView) } == [0x20, 0x02, 0x00, 0x00])
        _ = try channel.finish()
    }

    @Test func clientEncoderSetsVersionForTheDecoder() throws {
        let box = MQTTVersionBox()
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(MQTTPacketDecoder(versionBox: box)))
        try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(MQTTPacketEncoder(versionBox: box)))
        try channel.writeOutbound(MQTTPacket.connect(MQTTConnect(protocolVersion: .v5, clientIdentifier: "c")))
        #expect(box.version == .v5)
        // A v5 CONNACK now decodes (before CONNECT it would be a protocol error).
        try channel.writeInbound(ByteBuffer(bytes: [0x20, 0x03, 0x00, 0x00, 0x00]))
        #expect(try readAll(channel) == [.connack(MQTTConnAck())])
        _ = try channel.finish()
    }

    @Test func malformedPacketIsAnErrorValue() throws {
        let (channel, _) = try serverChannel()
        try channel.writeInbound(try MQTTPacket.connect(MQTTConnect(protocolVersion: .v5, clientIdentifier: "c")).encoded(version: .v5))
        _ = try readAll(channel)
        #expect(throws: MQTTCodecError(reasonCode: .malformedPacket, message: "PUBLISH with QoS 3")) {
            try channel.writeInbound(ByteBuffer(bytes: [0x36, 0x06, 0x00, 0x01, 0x61, 0x00, 0x01, 0x00]))
        }
        _ = try? channel.finish()
    }

    @Test func oversizePacketRejectedBeforeItsBodyArrives() throws {
        // Bounded buffering: a 200 MB length is refused on its fixed header alone.
        let (channel, _) = try serverChannel(maximumPacketSize: 1024)
        try channel.writeInbound(try MQTTPacket.connect(MQTTConnect(protocolVersion: .v5, clientIdentifier: "c")).encoded(version: .v5))
        _ = try readAll(channel)
        let error = #expect(throws: MQTTCodecError.self) {
            try channel.writeInbound(ByteBuffer(bytes: [0x30, 0x80, 0x80, 0x80, 0x60]))
        }
        #expect(error?.reasonCode == .packetTooLarge)
        #expect(error?.closesConnection == true)
        _ = try? channel.finish()
    }

    @Test func firstPacketNotConnect() throws {
        let (channel, _) = try serverChannel()
        let error = #expect(throws: MQTTCodecError.self) {
            try channel.writeInbound(ByteBuffer(bytes: [0xC0, 0x00]))
        }
        #expect(error?.reasonCode == .protocolError)
        _ = try? channel.finish()
    }

    @Test func encoderFailsTheWriteNotTheConnection() throws {
        let (channel, box) = try serverChannel()
        box.version = .v311
        let failed = channel.write(MQTTPacket.auth(MQTTAuth()))
        channel.flush()
        #expect(throws: MQTTCodecError.self) { try failed.wait() }
        try channel.writeOutbound(MQTTPacket.pingresp)
        #expect(try channel.readOutbound(as: ByteBuffer.self).map { Array($0.readableBytesView) } == [0xD0, 0x00])
        _ = try channel.finish()
    }
}
