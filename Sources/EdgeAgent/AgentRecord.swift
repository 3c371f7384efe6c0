import Common
import NIOCore

/// One device publish as stored in the disk buffer (the buffer's record body; the buffer adds length,
/// checksum and sequence around it).
///
///     version u8 = 1 | flags u8 (bits 0-1 QoS, bit 2 retain, bit 3 persistent device session)
///     | device packet id u16 (0 for QoS 0) | received-at u64 (ms since 1970, big-endian)
///     | client id length u16 | client id UTF-8 | topic length u16 | topic UTF-8 | payload (the rest)
///
/// The device packet id and session flag let start-up recovery rebuild device QoS 2 state that a crash
/// cut off between the append and the session file write (see `DeviceSessionStore`).
/// MQTT 5 properties of the device's PUBLISH are not stored (not forwarded) in version 1.
struct AgentRecord: Sendable, Equatable {
    static let version: UInt8 = 1

    var qos: MQTTQoS
    var retain: Bool
    var persistentSession: Bool = false
    var devicePacketId: UInt16 = 0
    var receivedAtMilliseconds: UInt64
    var deviceId: String
    var topic: String
    var payload: [UInt8]

    func encoded() -> [UInt8] {
        var bytes: [UInt8] = []
        let device = Array(deviceId.utf8)
        let topicBytes = Array(topic.utf8)
        bytes.reserveCapacity(16 + device.count + topicBytes.count + payload.count)
        bytes.append(Self.version)
        bytes.append(qos.rawValue | (retain ? 0x04 : 0) | (persistentSession ? 0x08 : 0))
        bytes.append(UInt8(devicePacketId >> 8))
        bytes.append(UInt8(devicePacketId & 0xFF))
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
    static func encode(_ publish: MQTTPublish, deviceId: String, persistentSession: Bool, receivedAtMilliseconds: UInt64) -> [UInt8] {
        AgentRecord(
            qos: publish.qos, retain: publish.retain, persistentSession: persistentSession,
            devicePacketId: publish.packetId ?? 0, receivedAtMilliseconds: receivedAtMilliseconds,
            deviceId: deviceId, topic: publish.topic,
            payload: publish.payload.getBytes(at: publish.payload.readerIndex, length: publish.payload.readableBytes) ?? []
        ).encoded()
    }

    /// nil if the body is not a version 1 record (damage the buffer's checksum did not catch, or a newer
    /// version): the caller skips and counts it.
    init?(decoding body: [UInt8]) {
        guard body.count >= 16, body[0] == Self.version, let qos = MQTTQoS(rawValue: body[1] & 0x03) else { return nil }
        self.qos = qos
        retain = body[1] & 0x04 != 0
        persistentSession = body[1] & 0x08 != 0
        devicePacketId = UInt16(body[2]) << 8 | UInt16(body[3])
        var time: UInt64 = 0
        for index in 4..<12 { time = time << 8 | UInt64(body[index]) }
        receivedAtMilliseconds = time
        var offset = 12
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

    init(
        qos: MQTTQoS, retain: Bool, persistentSession: Bool = false, devicePacketId: UInt16 = 0,
        receivedAtMilliseconds: UInt64, deviceId: String, topic: String, payload: [UInt8]
    ) {
        self.qos = qos
        self.retain = retain
        self.persistentSession = persistentSession
        self.devicePacketId = devicePacketId
        self.receivedAtMilliseconds = receivedAtMilliseconds
        self.deviceId = deviceId
        self.topic = topic
        self.payload = payload
    }
}
