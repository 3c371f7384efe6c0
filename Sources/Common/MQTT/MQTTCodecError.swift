/// The one error type of the MQTT codec: a value, never a crash.
///
/// `reasonCode` is the reason code a server (or client) must send before closing (MQTT 5: in CONNACK if no
/// CONNECT was accepted yet, else in DISCONNECT; MQTT 3.1.1: map with `MQTTReasonCode.v311ConnectReturnCode`
/// or just close). `closesConnection` says whether the spec requires the network connection to be closed;
/// decoder errors always close it, encoder errors concern only the one packet that could not be encoded.
public struct MQTTCodecError: Error, Sendable, Equatable, CustomStringConvertible {
    public var reasonCode: MQTTReasonCode
    public var closesConnection: Bool
    public var message: String

    public init(reasonCode: MQTTReasonCode, closesConnection: Bool = true, message: String) {
        self.reasonCode = reasonCode
        self.closesConnection = closesConnection
        self.message = message
    }

    public var description: String {
        "MQTTCodecError(\(reasonCode), closesConnection: \(closesConnection)): \(message)"
    }

    static func malformed(_ message: String) -> MQTTCodecError {
        MQTTCodecError(reasonCode: .malformedPacket, message: message)
    }

    static func protocolError(_ message: String) -> MQTTCodecError {
        MQTTCodecError(reasonCode: .protocolError, message: message)
    }

    /// An error of the encoder: the packet cannot be represented; the connection is not affected.
    static func unencodable(_ reasonCode: MQTTReasonCode = .implementationSpecificError, _ message: String) -> MQTTCodecError {
        MQTTCodecError(reasonCode: reasonCode, closesConnection: false, message: message)
    }
}
