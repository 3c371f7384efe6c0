import NIOCore

/// The protocol version of one connection, shared by its `MQTTPacketDecoder` and `MQTTPacketEncoder` (both
/// live on the channel's event loop). nil until CONNECT: the decoder sets it from a received CONNECT
/// (server side), the encoder from a sent CONNECT (client side).
public final class MQTTVersionBox {
    public var version: MQTTProtocolVersion?
    public init(_ version: MQTTProtocolVersion? = nil) { self.version = version }
}

/// Decodes MQTT packets from a byte stream; incremental (works with any split, down to one byte at a time).
///
/// Buffers at most one packet, bounded by `maximumPacketSize`: a larger packet fails with `.packetTooLarge`
/// as soon as its fixed header has arrived. Errors are `MQTTCodecError` values passed to `errorCaught`; the
/// connection handler sends their reason code (CONNACK or DISCONNECT) and closes.
public final class MQTTPacketDecoder: ByteToMessageDecoder {
    public typealias InboundOut = MQTTPacket

    /// The largest packet accepted, fixed header included (our MQTT 5 Maximum Packet Size).
    public var maximumPacketSize: Int
    public let versionBox: MQTTVersionBox

    /// - Parameter version: nil on the server side (learnt from CONNECT); the client side sets the version it
    ///   connects with (or shares the encoder's box, which learns it from the CONNECT it sends).
    public init(maximumPacketSize: Int = MQTTPacket.protocolMaximumPacketSize, version: MQTTProtocolVersion? = nil) {
        self.maximumPacketSize = maximumPacketSize
        self.versionBox = MQTTVersionBox(version)
    }

    public init(maximumPacketSize: Int = MQTTPacket.protocolMaximumPacketSize, versionBox: MQTTVersionBox) {
        self.maximumPacketSize = maximumPacketSize
        self.versionBox = versionBox
    }

    public var version: MQTTProtocolVersion? {
        get { versionBox.version }
        set { versionBox.version = newValue }
    }

    public func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let packet = try decodePacket(from: &buffer) else { return .needMoreData }
        context.fireChannelRead(wrapInboundOut(packet))
        return .continue
    }

    public func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        // A partial packet at EOF is dropped with the connection; whole ones are still delivered.
        try decode(context: context, buffer: &buffer)
    }

    /// The decoding step without a channel, for tests and other pumps.
    public func decodePacket(from buffer: inout ByteBuffer) throws(MQTTCodecError) -> MQTTPacket? {
        let packet = try MQTTPacket.decode(from: &buffer, version: versionBox.version, maximumPacketSize: maximumPacketSize)
        if versionBox.version == nil, case .connect(let connect) = packet {
            versionBox.version = connect.protocolVersion
        }
        return packet
    }
}

@available(*, unavailable)
extension MQTTPacketDecoder: Sendable {}

@available(*, unavailable)
extension MQTTVersionBox: Sendable {}
