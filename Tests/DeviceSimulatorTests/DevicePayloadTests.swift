import NIOCore
import Testing

@testable import DeviceSimulator

@Suite struct DevicePayloadTests {
    @Test func roundTripsClientSequenceAndTimestamp() throws {
        let payload = DevicePayload(clientId: "sim-42", sequence: 9_876_543_210, sentAtNanoseconds: 1_764_236_400_123_456_789)
        let buffer = payload.encoded(size: 1024)
        #expect(buffer.readableBytes == 1024)
        let decoded = try #require(DevicePayload(decoding: buffer))
        #expect(decoded == payload)
    }

    @Test func layoutIsTheDocumentedOne() {
        let buffer = DevicePayload(clientId: "ab", sequence: 3, sentAtNanoseconds: 0x0102_0304_0506_0708).encoded(size: 27)
        let bytes = Array(buffer.readableBytesView)
        #expect(bytes == [
            0x54, 0x53, 0x49, 0x4D,  // magic "TSIM"
            1,  // format version
            1, 2, 3, 4, 5, 6, 7, 8,  // send time, ns since the epoch, big-endian
            0, 0, 0, 0, 0, 0, 0, 3,  // sequence number
            0, 2,  // client id length
            0x61, 0x62,  // "ab"
            0x2E, 0x2E,  // filler up to 27 bytes
        ])
    }

    /// Every fill keeps the header and the exact size; `json` is text made of the reading template with other
    /// digits each time, `random` differs from message to message.
    @Test func fillsKeepTheHeaderAndTheSize() throws {
        for fill in PayloadFill.allCases {
            for size in [0, 30, 1024, 1031] {
                let payload = DevicePayload(clientId: "sim-7", sequence: UInt64(size), sentAtNanoseconds: 99)
                let buffer = payload.encoded(size: size, fill: fill)
                #expect(buffer.readableBytes == max(size, payload.headerSize()), "\(fill) \(size)")
                #expect(DevicePayload(decoding: buffer) == payload, "\(fill) \(size)")
            }
        }
        let header = DevicePayload(clientId: "c", sequence: 1, sentAtNanoseconds: 2).headerSize()
        let json = Array(DevicePayload(clientId: "c", sequence: 1, sentAtNanoseconds: 2).encoded(size: 1024, fill: .json).readableBytesView.dropFirst(header))
        #expect(Array(json.prefix(11)) == Array(#"{"sensor":""#.utf8))
        #expect(json.allSatisfy { (0x20...0x7E).contains($0) })
        #expect(Set(json.filter { (0x30...0x39).contains($0) }).count > 5, "digits vary")
        let first = DevicePayload(clientId: "c", sequence: 1, sentAtNanoseconds: 2).encoded(size: 256, fill: .random)
        let second = DevicePayload(clientId: "c", sequence: 2, sentAtNanoseconds: 2).encoded(size: 256, fill: .random)
        #expect(first.getBytes(at: header, length: 64) != second.getBytes(at: header, length: 64))
    }

    @Test func sizeBelowTheHeaderGivesJustTheHeader() throws {
        let payload = DevicePayload(clientId: "device-with-a-long-name", sequence: 1, sentAtNanoseconds: 2)
        let buffer = payload.encoded(size: 10)
        #expect(buffer.readableBytes == payload.headerSize())
        #expect(DevicePayload(decoding: buffer) == payload)
    }

    @Test func rejectsForeignAndTruncatedPayloads() {
        #expect(DevicePayload(decoding: ByteBuffer(string: "{\"temp\": 21.5}")) == nil)
        var truncated = DevicePayload(clientId: "sim-1", sequence: 1, sentAtNanoseconds: 1).encoded(size: 0)
        truncated.moveWriterIndex(to: truncated.writerIndex - 2)
        #expect(DevicePayload(decoding: truncated) == nil)
        var wrongVersion = DevicePayload(clientId: "x", sequence: 1, sentAtNanoseconds: 1).encoded(size: 0)
        wrongVersion.setInteger(UInt8(9), at: 4)
        #expect(DevicePayload(decoding: wrongVersion) == nil)
    }
}
