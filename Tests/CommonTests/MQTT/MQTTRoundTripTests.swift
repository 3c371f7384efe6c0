import NIOCore
import PropertyBased
import Testing

@testable import Common

/// Property-based: every generated packet encodes, decodes to itself and re-encodes to the same bytes, in
/// one piece and when the bytes arrive in random pieces.
@Suite("MQTT round trip")
struct MQTTRoundTripTests {
    @Test func encodeDecodeRoundTrip() async {
        await propertyCheck(count: 2000, input: packetsGenerator(count: 1...1)) { input in
            let (version, packets) = input
            for packet in packets {
                do {
                    var bytes = try packet.encoded(version: version)
                    let encoded = bytes
                    let decodeVersion: MQTTProtocolVersion? = packet.type == .connect ? nil : version
                    let decoded = try MQTTPacket.decode(from: &bytes, version: decodeVersion, maximumPacketSize: 1 << 20)
                    #expect(decoded == packet)
                    #expect(bytes.readableBytes == 0)
                    #expect(try decoded?.encoded(version: version) == encoded)
                } catch {
                    Issue.record("\(error) for \(packet)")
                }
            }
        }
    }

    @Test func streamInRandomPieces() async {
        await propertyCheck(count: 300, input: packetsGenerator(count: 1...8), Gen.int(in: 1...40)) { input, pieceSize in
            let (version, packets) = input
            var stream = ByteBuffer()
            for packet in packets {
                do { try packet.encode(into: &stream, version: version) } catch { Issue.record("\(error)") }
            }
            // Feed the stream `pieceSize` bytes at a time into an accumulating buffer, decoding as we go.
            var received = ByteBuffer()
            var decoded: [MQTTPacket] = []
            while stream.readableBytes > 0 || received.readableBytes > 0 {
                if let piece = stream.readSlice(length: min(pieceSize, stream.readableBytes)) {
                    received.writeImmutableBuffer(piece)
                }
                do {
                    while let packet = try MQTTPacket.decode(from: &received, version: version, maximumPacketSize: 1 << 20) {
                        decoded.append(packet)
                    }
                } catch {
                    Issue.record("\(error)")
                    return
                }
                if stream.readableBytes == 0 && received.readableBytes > 0 {
                    Issue.record("bytes left over")
                    return
                }
            }
            #expect(decoded == packets)
        }
    }
}
