/// The one error type of the cloud broker: a code, what it concerns, and a diagnostic message.
///
/// Classification (`scope`): `.packet` errors reject one packet (the client gets a failure reason code),
/// `.connection` errors close one client connection, `.process` errors stop the node (start-up only:
/// configuration, topics the cluster refuses to create).
struct BrokerError: Error, Sendable, Equatable, CustomStringConvertible {
    enum Code: String, Sendable {
        case configuration
        case kafkaTopics
        case kafkaUnavailable
        case listener
        case deliveryFailed
        /// A record of `mqtt.sessions` that cannot be read (logged and skipped).
        case invalidSessionRecord
    }

    enum Scope: Sendable { case packet, connection, process }

    var code: Code
    var message: String

    init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    var scope: Scope {
        switch code {
        case .configuration, .kafkaTopics, .listener: .process
        case .kafkaUnavailable: .connection
        case .deliveryFailed, .invalidSessionRecord: .packet
        }
    }

    var description: String { "\(code.rawValue): \(message)" }
}
