import NIOCore

/// Encodes MQTT packets for the wire with the connection's version (see `MQTTVersionBox`). A packet that
/// cannot be encoded fails its write promise with an `MQTTCodecError` (`closesConnection == false`).
public final class MQTTPacketEncoder: MessageToByteEncoder {
    public typealias OutboundIn = MQTTPacket

    public let versionBox: MQTTVersionBox
    /// The peer's Maximum Packet Size (MQTT 5 CONNECT / CONNACK property); larger packets are not sent.
    public var maximumPacketSize: Int

    public init(version: MQTTProtocolVersion? = nil, maximumPacketSize: Int = MQTTPacket.protocolMaximumPacketSize) {
        self.versionBox = MQTTVersionBox(version)
        self.maximumPacketSize = maximumPacketSize
    }

    public init(versionBox: MQTTVersionBox, maximumPacketSize: Int = MQTTPacket.protocolMaximumPacketSize) {
        self.versionBox = versionBox
        self.maximumPacketSize = maximumPacketSize
    }

    public var version: MQTTProtocolVersion? {
        get { versionBox.version }
        set { versionBox.version = newValue }
    }

    public func encode(data: MQTTPacket, out: inout ByteBuffer) throws {
        if case .connect(let connect) = data {
            versionBox.version = connect.protocolVersion
        }
        guard let version = versionBox.version else {
            throw MQTTCodecError.unencodable(.protocolError, "no protocol version before CONNECT")
        }
        try data.encode(into: &out, version: version, maximumPacketSize: maximumPacketSize)
    }
}

@available(*, unavailable)
extension MQTTPacketEncoder: Sendable {}

/// An outbound handler around `MQTTPacketEncoder` that fails only the write whose packet cannot be encoded
/// (e.g. larger than the peer's Maximum Packet Size, which MQTT 5 says to drop) and stays usable.
/// `MessageToByteHandler(MQTTPacketEncoder())` also works, but NIO puts it into a permanent error state on the
/// first encoding error.
public final class MQTTPacketEncoderHandler: ChannelOutboundHandler {
    public typealias OutboundIn = MQTTPacket
    public typealias OutboundOut = ByteBuffer

    public let encoder: MQTTPacketEncoder

    public init(encoder: MQTTPacketEncoder) {
        self.encoder = encoder
    }

    public convenience init(versionBox: MQTTVersionBox, maximumPacketSize: Int = MQTTPacket.protocolMaximumPacketSize) {
        self.init(encoder: MQTTPacketEncoder(versionBox: versionBox, maximumPacketSize: maximumPacketSize))
    }

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let packet = Self.unwrapOutboundIn(data)
        var out = context.channel.allocator.buffer(capacity: 64)
        do {
            try encoder.encode(data: packet, out: &out)
            context.write(Self.wrapOutboundOut(out), promise: promise)
        } catch {
            promise?.fail(error)
        }
    }
}

@available(*, unavailable)
extension MQTTPacketEncoderHandler: Sendable {}
