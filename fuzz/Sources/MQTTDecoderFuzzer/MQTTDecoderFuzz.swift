// libFuzzer entry point: feeds arbitrary bytes to the MQTT decoder.
//
// The first input byte picks the decoder's state (before CONNECT, 3.1.1 or 5.0), the maximum packet size
// and how the rest arrives (whole, or in pieces of 1...8 bytes as from a socket). Every decoded packet
// must encode again and decode to an equal packet; any disagreement, crash or hang is a finding.
import MQTTCodec
import NIOCore

func mqttDecoderFuzzTest(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let input = UnsafeBufferPointer(start: start, count: count)
    guard let control = input.first else { return 0 }
    let version: MQTTProtocolVersion? = [nil, .v311, .v5][Int(control % 3)]
    let maximumPacketSize = control & 0x04 != 0 ? 64 : 1 << 16
    let pieceSize = control & 0x08 != 0 ? Int(control >> 4) % 8 + 1 : Int.max
    let stream = ByteBuffer(bytes: input.dropFirst())

    let decoder = MQTTPacketDecoder(maximumPacketSize: maximumPacketSize, version: version)
    var received = ByteBuffer()
    var offset = 0
    while offset < stream.readableBytes {
        let length = min(pieceSize, stream.readableBytes - offset)
        if let piece = stream.getSlice(at: stream.readerIndex + offset, length: length) {
            received.writeImmutableBuffer(piece)
        }
        offset += length
        do {
            while let packet = try decoder.decodePacket(from: &received) {
                checkRoundTrip(packet, version: decoder.version ?? .v5)
            }
        } catch {
            // A decoding error is a value: the connection would be closed with error.reasonCode.
            precondition(error.closesConnection, "decoder errors close the connection")
            return 0
        }
    }
    return 0
}

func checkRoundTrip(_ packet: MQTTPacket, version: MQTTProtocolVersion) {
    var encoded = ByteBuffer()
    do {
        try packet.encode(into: &encoded, version: version)
    } catch {
        preconditionFailure("a decoded packet does not encode: \(error) \(packet)")
    }
    let again: MQTTPacket?
    do {
        again = try MQTTPacket.decode(from: &encoded, version: version, maximumPacketSize: MQTTPacket.protocolMaximumPacketSize)
    } catch {
        preconditionFailure("a re-encoded packet does not decode: \(error) \(packet)")
    }
    precondition(again == packet, "round trip changed the packet: \(packet) became \(String(describing: again))")
    precondition(encoded.readableBytes == 0, "bytes left after the re-encoded packet")
}
