import NIOCore
import Testing

@testable import Common

/// ASCII bytes of `string`, for writing fixtures field by field.
func ascii(_ string: String) -> [UInt8] { Array(string.utf8) }

func buffer(_ string: String) -> ByteBuffer { ByteBuffer(string: string) }

/// Decodes `bytes` as exactly one packet and encodes `packet` back to exactly `bytes`.
func expectFixture(
    _ bytes: [UInt8],
    _ packet: MQTTPacket,
    version: MQTTProtocolVersion,
    sourceLocation: SourceLocation = #_sourceLocation
) throws {
    var input = ByteBuffer(bytes: bytes)
    let decodeVersion: MQTTProtocolVersion? = packet.type == .connect ? nil : version
    let decoded = try MQTTPacket.decode(from: &input, version: decodeVersion, maximumPacketSize: 1 << 20)
    #expect(decoded == packet, "decode", sourceLocation: sourceLocation)
    #expect(input.readableBytes == 0, "whole fixture consumed", sourceLocation: sourceLocation)
    let encoded = try packet.encoded(version: version)
    #expect(Array(encoded.readableBytesView) == bytes, "encode", sourceLocation: sourceLocation)
}

/// Decoding `bytes` fails with `reasonCode` and closes the connection.
func expectDecodeError(
    _ bytes: [UInt8],
    version: MQTTProtocolVersion?,
    maximumPacketSize: Int = 1 << 20,
    _ reasonCode: MQTTReasonCode,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    var input = ByteBuffer(bytes: bytes)
    do {
        let packet = try MQTTPacket.decode(from: &input, version: version, maximumPacketSize: maximumPacketSize)
        Issue.record("expected \(reasonCode), decoded \(String(describing: packet))", sourceLocation: sourceLocation)
    } catch {
        #expect(error.reasonCode == reasonCode, "\(error.message)", sourceLocation: sourceLocation)
        #expect(error.closesConnection, sourceLocation: sourceLocation)
    }
}

func filter(_ string: String) throws -> MQTTTopicFilter { try MQTTTopicFilter(string) }
