import Common
import NIOCore

/// One device publish as stored in the disk buffer (the buffer's record body; the buffer adds length,
/// checksum and sequence around it).
///
///     version u8 = 1 | flags u8 (bits 0-1 QoS, bit 2 retain) | received-at u64 (ms since 1970, big-endian)
///     | client id length u16 | client id UTF-8 | topic length u16 | topic UTF-8 | payload (the rest)
///
/// MQTT 5 properties of the device's PUBLISH are not stored (not forwarded) in version 1.
struct AgentRecord: Sendable, Equatable {
    static let version: UInt8 = 1

    var qos: MQTTQoS
    var retain: Bool
    var receivedAtMilliseconds: UInt64
    var deviceId: String
    var topic: String
    var payload: [UInt8]

    func encoded() -> [UInt8] {
        var bytes: [UInt8] = []
        let device = Array(deviceId.utf8)
        let topicBytes = Array(topic.utf8)
        bytes.reserveCapacity(14 + device.count + topicBytes.count + payload.count)
        bytes.append(Self.version)
        bytes.append(qos.rawValue | (retain ? 0x04 : 0))
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: receivedAtMilliseconds >> UInt64(shift))) }
        bytes.append(UInt8(device.count >> 8))
        bytes.append(UInt8(device.count & 0xFF))
        bytes += device
        bytes.append(UInt8(topicBytes.count >> 8))
        bytes.append(UInt8(topicBytes.count & 0xFF))
        bytes += topicBytes
        bytes += payload
        return bytes
    }

    /// Encodes straight from a received PUBLISH (one copy of the payload).
    static func encode(_ publish: MQTTPublish, deviceId: String, receivedAtMilliseconds: UInt64) -> [UInt8] {
        AgentRecord(
            qos: publish.qos, retain: publish.retain, receivedAtMilliseconds: receivedAtMilliseconds,
            deviceId: deviceId, topic: publish.topic,
            payload: publish.payload.getBytes(at: publish.payload.readerIndex, length: publish.payload.readableBytes) ?? []
        ).encoded()
    }

    /// nil if the body is not a version 1 record (damage the buffer's checksum did not catch, or a newer
    /// version): the caller skips and counts it.
    init?(decoding body: [UInt8]) {
        guard body.count >= 14, body[0] == Self.version, let qos = MQTTQoS(rawValue: body[1] & 0x03) else { return nil }
        self.qos = qos
        retain = body[1] & 0x04 != 0
        var time: UInt64 = 0
        for index in 2..<10 { time = time << 8 | UInt64(body[index]) }
        receivedAtMilliseconds = time
        var offset = 10
        func string() -> String? {
            guard offset + 2 <= body.count else { return nil }
            let length = Int(body[offset]) << 8 | Int(body[offset + 1])
            offset += 2
            guard offset + length <= body.count else { return nil }
            defer { offset += length }
            return String(validating: body[offset..<offset + length], as: UTF8.self)
        }
        guard let device = string(), let topic = string() else { return nil }
        deviceId = device
        self.topic = topic
        payload = Array(body[offset...])
    }

    init(qos: MQTTQoS, retain: Bool, receivedAtMilliseconds: UInt64, deviceId: String, topic: String, payload: [UInt8]) {
        self.qos = qos
        self.retain = retain
        self.receivedAtMilliseconds = receivedAtMilliseconds
        self.deviceId = deviceId
        self.topic = topic
        self.payload = payload
    }
}
