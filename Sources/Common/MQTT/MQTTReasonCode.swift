/// An MQTT 5 reason code (MQTT 5.0 section 2.4), also used for MQTT 3.1.1 return codes through the mappings
/// below. A struct rather than an enum so that codes from a newer peer survive a round trip; the decoder
/// checks that each packet carries only the codes the specification lists for it.
public struct MQTTReasonCode: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public init(_ rawValue: UInt8) { self.rawValue = rawValue }

    public static let success = MQTTReasonCode(0x00)
    public static let normalDisconnection = MQTTReasonCode(0x00)
    public static let grantedQoS0 = MQTTReasonCode(0x00)
    public static let grantedQoS1 = MQTTReasonCode(0x01)
    public static let grantedQoS2 = MQTTReasonCode(0x02)
    public static let disconnectWithWillMessage = MQTTReasonCode(0x04)
    public static let noMatchingSubscribers = MQTTReasonCode(0x10)
    public static let noSubscriptionExisted = MQTTReasonCode(0x11)
    public static let continueAuthentication = MQTTReasonCode(0x18)
    public static let reAuthenticate = MQTTReasonCode(0x19)
    public static let unspecifiedError = MQTTReasonCode(0x80)
    public static let malformedPacket = MQTTReasonCode(0x81)
    public static let protocolError = MQTTReasonCode(0x82)
    public static let implementationSpecificError = MQTTReasonCode(0x83)
    public static let unsupportedProtocolVersion = MQTTReasonCode(0x84)
    public static let clientIdentifierNotValid = MQTTReasonCode(0x85)
    public static let badUserNameOrPassword = MQTTReasonCode(0x86)
    public static let notAuthorized = MQTTReasonCode(0x87)
    public static let serverUnavailable = MQTTReasonCode(0x88)
    public static let serverBusy = MQTTReasonCode(0x89)
    public static let banned = MQTTReasonCode(0x8A)
    public static let serverShuttingDown = MQTTReasonCode(0x8B)
    public static let badAuthenticationMethod = MQTTReasonCode(0x8C)
    public static let keepAliveTimeout = MQTTReasonCode(0x8D)
    public static let sessionTakenOver = MQTTReasonCode(0x8E)
    public static let topicFilterInvalid = MQTTReasonCode(0x8F)
    public static let topicNameInvalid = MQTTReasonCode(0x90)
    public static let packetIdentifierInUse = MQTTReasonCode(0x91)
    public static let packetIdentifierNotFound = MQTTReasonCode(0x92)
    public static let receiveMaximumExceeded = MQTTReasonCode(0x93)
    public static let topicAliasInvalid = MQTTReasonCode(0x94)
    public static let packetTooLarge = MQTTReasonCode(0x95)
    public static let messageRateTooHigh = MQTTReasonCode(0x96)
    public static let quotaExceeded = MQTTReasonCode(0x97)
    public static let administrativeAction = MQTTReasonCode(0x98)
    public static let payloadFormatInvalid = MQTTReasonCode(0x99)
    public static let retainNotSupported = MQTTReasonCode(0x9A)
    public static let qosNotSupported = MQTTReasonCode(0x9B)
    public static let useAnotherServer = MQTTReasonCode(0x9C)
    public static let serverMoved = MQTTReasonCode(0x9D)
    public static let sharedSubscriptionsNotSupported = MQTTReasonCode(0x9E)
    public static let connectionRateExceeded = MQTTReasonCode(0x9F)
    public static let maximumConnectTime = MQTTReasonCode(0xA0)
    public static let subscriptionIdentifiersNotSupported = MQTTReasonCode(0xA1)
    public static let wildcardSubscriptionsNotSupported = MQTTReasonCode(0xA2)

    /// Reason codes below 0x80 report success, from 0x80 on failure.
    public var isFailure: Bool { rawValue >= 0x80 }

    /// The granted QoS of a SUBACK success code, nil for a failure.
    public var grantedQoS: MQTTQoS? { rawValue <= 2 ? MQTTQoS(rawValue: rawValue) : nil }

    /// The SUBACK code granting `qos`.
    public static func granted(_ qos: MQTTQoS) -> MQTTReasonCode { MQTTReasonCode(qos.rawValue) }

    /// The MQTT 3.1.1 CONNACK return code for this reason code (MQTT 3.1.1 table 3.1), nil if 3.1.1 has none
    /// (then a 3.1.1 server closes the connection without CONNACK, MQTT 3.1.1 section 3.2.2.3).
    public var v311ConnectReturnCode: UInt8? {
        switch self {
        case .success: 0x00
        case .unsupportedProtocolVersion: 0x01
        case .clientIdentifierNotValid: 0x02
        case .serverUnavailable, .serverBusy: 0x03
        case .badUserNameOrPassword: 0x04
        case .notAuthorized, .banned: 0x05
        default: nil
        }
    }

    /// The reason code for an MQTT 3.1.1 CONNACK return code, nil for the reserved values 6...255.
    public init?(v311ConnectReturnCode code: UInt8) {
        switch code {
        case 0x00: self = .success
        case 0x01: self = .unsupportedProtocolVersion
        case 0x02: self = .clientIdentifierNotValid
        case 0x03: self = .serverUnavailable
        case 0x04: self = .badUserNameOrPassword
        case 0x05: self = .notAuthorized
        default: return nil
        }
    }

    /// The MQTT 3.1.1 SUBACK return code: the granted QoS, or 0x80 for any failure.
    public var v311SubAckReturnCode: UInt8 { isFailure ? 0x80 : rawValue }

    public var description: String {
        let name = MQTTReasonCode.names[rawValue] ?? "unknown"
        return "\(name)(0x\(String(rawValue, radix: 16, uppercase: true)))"
    }

    private static let names: [UInt8: String] = [
        0x00: "success", 0x01: "grantedQoS1", 0x02: "grantedQoS2", 0x04: "disconnectWithWillMessage",
        0x10: "noMatchingSubscribers", 0x11: "noSubscriptionExisted", 0x18: "continueAuthentication",
        0x19: "reAuthenticate", 0x80: "unspecifiedError", 0x81: "malformedPacket", 0x82: "protocolError",
        0x83: "implementationSpecificError", 0x84: "unsupportedProtocolVersion", 0x85: "clientIdentifierNotValid",
        0x86: "badUserNameOrPassword", 0x87: "notAuthorized", 0x88: "serverUnavailable", 0x89: "serverBusy",
        0x8A: "banned", 0x8B: "serverShuttingDown", 0x8C: "badAuthenticationMethod", 0x8D: "keepAliveTimeout",
        0x8E: "sessionTakenOver", 0x8F: "topicFilterInvalid", 0x90: "topicNameInvalid",
        0x91: "packetIdentifierInUse", 0x92: "packetIdentifierNotFound", 0x93: "receiveMaximumExceeded",
        0x94: "topicAliasInvalid", 0x95: "packetTooLarge", 0x96: "messageRateTooHigh", 0x97: "quotaExceeded",
        0x98: "administrativeAction", 0x99: "payloadFormatInvalid", 0x9A: "retainNotSupported",
        0x9B: "qosNotSupported", 0x9C: "useAnotherServer", 0x9D: "serverMoved",
        0x9E: "sharedSubscriptionsNotSupported", 0x9F: "connectionRateExceeded", 0xA0: "maximumConnectTime",
        0xA1: "subscriptionIdentifiersNotSupported", 0xA2: "wildcardSubscriptionsNotSupported",
    ]
}

extension MQTTReasonCode {
    /// The reason codes MQTT 5 allows in each packet type (MQTT 5.0 section 2.4 and each packet's reason code
    /// table). Stored as a 256-bit set per packet type.
    struct AllowedSet: Sendable {
        var words: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        init(_ codes: [UInt8]) {
            for code in codes {
                let bit = UInt64(1) << UInt64(code & 63)
                switch code >> 6 {
                case 0: words.0 |= bit
                case 1: words.1 |= bit
                case 2: words.2 |= bit
                default: words.3 |= bit
                }
            }
        }
        func contains(_ code: MQTTReasonCode) -> Bool {
            let bit = UInt64(1) << UInt64(code.rawValue & 63)
            switch code.rawValue >> 6 {
            case 0: return words.0 & bit != 0
            case 1: return words.1 & bit != 0
            case 2: return words.2 & bit != 0
            default: return words.3 & bit != 0
            }
        }
    }

    static let allowedInConnAck = AllowedSet([
        0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97, 0x99,
        0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
    ])
    static let allowedInPubAckPubRec = AllowedSet([0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99])
    static let allowedInPubRelPubComp = AllowedSet([0x00, 0x92])
    static let allowedInSubAck = AllowedSet([0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2])
    static let allowedInUnsubAck = AllowedSet([0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91])
    static let allowedInDisconnect = AllowedSet([
        0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95, 0x96,
        0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
    ])
    static let allowedInAuth = AllowedSet([0x00, 0x18, 0x19])
}
