import Common
import NIOCore

/// One device publish as stored in the disk buffer (the buffer's record body; the buffer adds length,
/// checksum and sequence around it).
///
///     version u8 (1 or 2) | flags u8 (bits 0-1 QoS, bit 2 retain, bit 3 persistent session,
///       bit 4 from the local broker source) | device packet id u16 (0 for QoS 0)
///     | received-at u64 (ms since 1970, big-endian) | client id length u16 | client id UTF-8
///     | topic length u16 | topic UTF-8
///     | version 2 only: properties length u32 | properties
///     | payload (the rest)
///
/// Version 1 is written when the publish has no forwardable MQTT 5 property (so a 3.1.1 device costs
/// nothing more), version 2 otherwise; both are read. The properties are the PUBLISH properties a broker
/// forwards (MQTT 5.0 section 3.3.2.3), each as its MQTT identifier byte followed by its value as MQTT encodes
/// it: 0x01 payload format indicator u8, 0x02 message expiry interval u32, 0x03 content type (u16 length +
/// UTF-8), 0x08 response topic, 0x09 correlation data (u16 length + bytes), 0x26 user property (two strings),
/// in that order, user properties in the order received. Topic alias and subscription identifiers are
/// per connection and never stored.
///
/// The device packet id and session flag let start-up recovery rebuild QoS 2 receive state that a crash
/// cut off between the append and the session file write (see `DeviceSessionStore`); for records from the
/// local broker source the session is the source's (`LocalBrokerSource.sessionKey`), not the publisher's.
struct AgentRecord: Sendable, Equatable {
    /// The MQTT 5 properties of the device's PUBLISH that go upstream with the record.
    struct Properties: Sendable, Equatable {
        var payloadFormatIndicator: UInt8?
        /// As received (seconds); the uplink sends what remains of it and drops the record once expired.
        var messageExpiryInterval: UInt32?
        var contentType: String?
        var responseTopic: String?
        var correlationData: [UInt8]?
        var userProperties: [MQTTUserProperty] = []

        var isEmpty: Bool {
            payloadFormatIndicator == nil && messageExpiryInterval == nil && contentType == nil && responseTopic == nil
                && correlationData == nil && userProperties.isEmpty
        }

        init(
            payloadFormatIndicator: UInt8? = nil, messageExpiryInterval: UInt32? = nil, contentType: String? = nil,
            responseTopic: String? = nil, correlationData: [UInt8]? = nil, userProperties: [MQTTUserProperty] = []
        ) {
            self.payloadFormatIndicator = payloadFormatIndicator
            self.messageExpiryInterval = messageExpiryInterval
            self.contentType = contentType
            self.responseTopic = responseTopic
            self.correlationData = correlationData
            self.userProperties = userProperties
        }

        /// The forwardable part of a received PUBLISH's properties.
        init(_ properties: MQTTProperties) {
            payloadFormatIndicator = properties.payloadFormatIndicator?.rawValue
            messageExpiryInterval = properties.messageExpiryInterval
            contentType = properties.contentType
            responseTopic = properties.responseTopic
            correlationData = properties.correlationData.map { Array($0.readableBytesView) }
            userProperties = properties.userProperties
        }
    }

    static let version: UInt8 = 1
    static let versionWithProperties: UInt8 = 2

    var qos: MQTTQoS
    var retain: Bool
    var persistentSession: Bool = false
    /// Received from the local broker the agent subscribes to (`LocalBrokerSource`), not a device connection.
    var fromLocalBroker: Bool = false
    var devicePacketId: UInt16 = 0
    var receivedAtMilliseconds: UInt64
    var deviceId: String
    var topic: String
    var properties = Properties()
    var payload: [UInt8]

    /// Whose QoS 2 receive session the record's packet id belongs to (`DeviceSessionStore`).
    var sessionKey: String { fromLocalBroker ? LocalBrokerSource.sessionKey : deviceId }

    func encoded() -> [UInt8] {
        var bytes: [UInt8] = []
        let device = Array(deviceId.utf8)
        let topicBytes = Array(topic.utf8)
        let propertyBytes = properties.isEmpty ? [] : Self.encode(properties)
        bytes.reserveCapacity(20 + device.count + topicBytes.count + propertyBytes.count + payload.count)
        bytes.append(properties.isEmpty ? Self.version : Self.versionWithProperties)
        bytes.append(qos.rawValue | (retain ? 0x04 : 0) | (persistentSession ? 0x08 : 0) | (fromLocalBroker ? 0x10 : 0))
        bytes.append(UInt8(devicePacketId >> 8))
        bytes.append(UInt8(devicePacketId & 0xFF))
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: receivedAtMilliseconds >> UInt64(shift))) }
        Self.put(device, into: &bytes)
        Self.put(topicBytes, into: &bytes)
        if !properties.isEmpty {
            for shift in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: propertyBytes.count >> shift)) }
            bytes += propertyBytes
        }
        bytes += payload
        return bytes
    }

    /// Encodes straight from a received PUBLISH.
    static func encode(
        _ publish: MQTTPublish, deviceId: String, persistentSession: Bool, fromLocalBroker: Bool = false,
        receivedAtMilliseconds: UInt64
    ) -> [UInt8] {
        AgentRecord(
            qos: publish.qos, retain: publish.retain, persistentSession: persistentSession, fromLocalBroker: fromLocalBroker,
            devicePacketId: publish.packetId ?? 0, receivedAtMilliseconds: receivedAtMilliseconds,
            deviceId: deviceId, topic: publish.topic, properties: Properties(publish.properties),
            payload: publish.payload.getBytes(at: publish.payload.readerIndex, length: publish.payload.readableBytes) ?? []
        ).encoded()
    }

    /// nil if the body is not a version 1 or 2 record (damage the buffer's checksum did not catch, or a newer
    /// version): the caller skips and counts it.
    init?(decoding body: [UInt8]) {
        guard body.count >= 16, body[0] == Self.version || body[0] == Self.versionWithProperties,
            let qos = MQTTQoS(rawValue: body[1] & 0x03)
        else { return nil }
        self.qos = qos
        retain = body[1] & 0x04 != 0
        persistentSession = body[1] & 0x08 != 0
        fromLocalBroker = body[1] & 0x10 != 0
        devicePacketId = UInt16(body[2]) << 8 | UInt16(body[3])
        var time: UInt64 = 0
        for index in 4..<12 { time = time << 8 | UInt64(body[index]) }
        receivedAtMilliseconds = time
        var reader = Reader(body: body, offset: 12)
        guard let device = reader.string(), let topic = reader.string() else { return nil }
        deviceId = device
        self.topic = topic
        if body[0] == Self.versionWithProperties {
            guard let length = reader.uint32(), let properties = Self.decodeProperties(&reader, length: Int(length)) else { return nil }
            self.properties = properties
        }
        payload = Array(body[reader.offset...])
    }

    init(
        qos: MQTTQoS, retain: Bool, persistentSession: Bool = false, fromLocalBroker: Bool = false, devicePacketId: UInt16 = 0,
        receivedAtMilliseconds: UInt64, deviceId: String, topic: String, properties: Properties = Properties(), payload: [UInt8]
    ) {
        self.qos = qos
        self.retain = retain
        self.persistentSession = persistentSession
        self.fromLocalBroker = fromLocalBroker
        self.devicePacketId = devicePacketId
        self.receivedAtMilliseconds = receivedAtMilliseconds
        self.deviceId = deviceId
        self.topic = topic
        self.properties = properties
        self.payload = payload
    }

    // MARK: properties

    private static func put(_ bytes: [UInt8], into output: inout [UInt8]) {
        output.append(UInt8(truncatingIfNeeded: bytes.count >> 8))
        output.append(UInt8(truncatingIfNeeded: bytes.count))
        output += bytes
    }

    static func encode(_ properties: Properties) -> [UInt8] {
        var bytes: [UInt8] = []
        if let format = properties.payloadFormatIndicator { bytes += [0x01, format] }
        if let expiry = properties.messageExpiryInterval {
            bytes.append(0x02)
            for shift in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: expiry >> UInt32(shift))) }
        }
        if let contentType = properties.contentType {
            bytes.append(0x03)
            put(Array(contentType.utf8), into: &bytes)
        }
        if let responseTopic = properties.responseTopic {
            bytes.append(0x08)
            put(Array(responseTopic.utf8), into: &bytes)
        }
        if let correlationData = properties.correlationData {
            bytes.append(0x09)
            put(correlationData, into: &bytes)
        }
        for property in properties.userProperties {
            bytes.append(0x26)
            put(Array(property.name.utf8), into: &bytes)
            put(Array(property.value.utf8), into: &bytes)
        }
        return bytes
    }

    private static func decodeProperties(_ reader: inout Reader, length: Int) -> Properties? {
        let end = reader.offset + length
        guard end <= reader.body.count else { return nil }
        var properties = Properties()
        while reader.offset < end {
            let identifier = reader.body[reader.offset]
            reader.offset += 1
            switch identifier {
            case 0x01:
                guard reader.offset < end else { return nil }
                properties.payloadFormatIndicator = reader.body[reader.offset]
                reader.offset += 1
            case 0x02:
                guard let value = reader.uint32() else { return nil }
                properties.messageExpiryInterval = value
            case 0x03:
                guard let value = reader.string() else { return nil }
                properties.contentType = value
            case 0x08:
                guard let value = reader.string() else { return nil }
                properties.responseTopic = value
            case 0x09:
                guard let value = reader.bytes() else { return nil }
                properties.correlationData = value
            case 0x26:
                guard let name = reader.string(), let value = reader.string() else { return nil }
                properties.userProperties.append(MQTTUserProperty(name: name, value: value))
            default:
                return nil
            }
        }
        return reader.offset == end ? properties : nil
    }

    private struct Reader {
        let body: [UInt8]
        var offset: Int

        mutating func bytes() -> [UInt8]? {
            guard offset + 2 <= body.count else { return nil }
            let length = Int(body[offset]) << 8 | Int(body[offset + 1])
            offset += 2
            guard offset + length <= body.count else { return nil }
            defer { offset += length }
            return Array(body[offset..<offset + length])
        }

        mutating func string() -> String? {
            guard offset + 2 <= body.count else { return nil }
            let length = Int(body[offset]) << 8 | Int(body[offset + 1])
            guard offset + 2 + length <= body.count else { return nil }
            offset += 2
            defer { offset += length }
            return String(validating: body[offset..<offset + length], as: UTF8.self)
        }

        mutating func uint32() -> UInt32? {
            guard offset + 4 <= body.count else { return nil }
            defer { offset += 4 }
            return body[offset..<offset + 4].reduce(0) { $0 << 8 | UInt32($1) }
        }
    }
}
