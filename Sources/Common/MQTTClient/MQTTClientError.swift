/// The one error type of the MQTT client: why a connection ended or an operation failed. A value, never a
/// crash. Every client error closes the connection it happened on (the session state survives for the next
/// connection); none of them ends the process.
public struct MQTTClientError: Error, Sendable, Hashable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        enum Base: String, Hashable, Sendable {
            case connectionRefused, protocolViolation, keepAliveTimeout, disconnectedByServer, connectionClosed
            case codec, notConnected
        }
        let base: Base
        /// The server answered CONNECT with a failure reason code (`reasonCode`).
        public static let connectionRefused = Code(base: .connectionRefused)
        /// The server sent something the protocol forbids (unknown packet id, packet out of order).
        public static let protocolViolation = Code(base: .protocolViolation)
        /// No PINGRESP (or any packet) within the keep-alive grace period: the link is dead.
        public static let keepAliveTimeout = Code(base: .keepAliveTimeout)
        /// The server sent DISCONNECT (`reasonCode`).
        public static let disconnectedByServer = Code(base: .disconnectedByServer)
        /// The TCP connection closed.
        public static let connectionClosed = Code(base: .connectionClosed)
        /// The decoder rejected a packet from the server (`reasonCode` is the codec's).
        public static let codec = Code(base: .codec)
        /// An operation needed a connection that is not there.
        public static let notConnected = Code(base: .notConnected)
        public var description: String { base.rawValue }
    }

    public var code: Code
    public var reasonCode: MQTTReasonCode?
    public var message: String

    public init(_ code: Code, reasonCode: MQTTReasonCode? = nil, _ message: String) {
        self.code = code
        self.reasonCode = reasonCode
        self.message = message
    }

    public var description: String {
        "MQTTClientError(\(code)\(reasonCode.map { ", \($0)" } ?? "")): \(message)"
    }
}
