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
