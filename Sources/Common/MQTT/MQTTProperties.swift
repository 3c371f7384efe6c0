import NIOCore

/// A User Property (MQTT 5.0 section 3.1.2.11.8): a name/value pair; order is kept and names may repeat.
public struct MQTTUserProperty: Sendable, Hashable {
    public var name: String
    public var value: String
    public init(name: String, value: String) {
        self.name = name
        self.value = value
    }
}

/// The Payload Format Indicator property.
public enum MQTTPayloadFormatIndicator: UInt8, Sendable, Hashable {
    case unspecified = 0
    case utf8 = 1
}

/// All MQTT 5 properties (MQTT 5.0 section 2.2.2.2), each as a typed optional field; which of them a packet
/// may carry is checked by the decoder and the encoder. Empty for MQTT 3.1.1.
///
/// User properties of a decoded packet stay in the received bytes until first read, so decoding a PUBLISH
/// with user properties allocates nothing for them.
public struct MQTTProperties: Sendable, Equatable {
    public var payloadFormatIndicator: MQTTPayloadFormatIndicator?
    public var messageExpiryInterval: UInt32?
    public var contentType: String?
    public var responseTopic: String?
    public var correlationData: ByteBuffer?
    /// In PUBLISH from a server, one per matching subscription; at most one in SUBSCRIBE. Values 1...268,435,455.
    public var subscriptionIdentifiers: [UInt32] = []
    public var reasonString: String?
    public var topicAlias: UInt16?
    var userPropertyStorage: UserPropertyStorage = .array([])
    /// The properties of CONNECT, CONNACK, DISCONNECT, AUTH and wills, boxed so that a PUBLISH or an
    /// acknowledgement (which never carry them) stays small to copy; nil while all of them are nil.
    var connection: ConnectionProperties?

    public init() {}

    public var sessionExpiryInterval: UInt32? {
        get { connection?.sessionExpiryInterval }
        set { setConnectionField(newValue) { $0.sessionExpiryInterval = newValue } }
    }
    public var assignedClientIdentifier: String? {
        get { connection?.assignedClientIdentifier }
        set { setConnectionField(newValue) { $0.assignedClientIdentifier = newValue } }
    }
    public var serverKeepAlive: UInt16? {
        get { connection?.serverKeepAlive }
        set { setConnectionField(newValue) { $0.serverKeepAlive = newValue } }
    }
    public var authenticationMethod: String? {
        get { connection?.authenticationMethod }
        set { setConnectionField(newValue) { $0.authenticationMethod = newValue } }
    }
    public var authenticationData: ByteBuffer? {
        get { connection?.authenticationData }
        set { setConnectionField(newValue) { $0.authenticationData = newValue } }
    }
    public var requestProblemInformation: Bool? {
        get { connection?.requestProblemInformation }
        set { setConnectionField(newValue) { $0.requestProblemInformation = newValue } }
    }
    public var willDelayInterval: UInt32? {
        get { connection?.willDelayInterval }
        set { setConnectionField(newValue) { $0.willDelayInterval = newValue } }
    }
    public var requestResponseInformation: Bool? {
        get { connection?.requestResponseInformation }
        set { setConnectionField(newValue) { $0.requestResponseInformation = newValue } }
    }
    public var responseInformation: String? {
        get { connection?.responseInformation }
        set { setConnectionField(newValue) { $0.responseInformation = newValue } }
    }
    public var serverReference: String? {
        get { connection?.serverReference }
        set { setConnectionField(newValue) { $0.serverReference = newValue } }
    }
    public var receiveMaximum: UInt16? {
        get { connection?.receiveMaximum }
        set { setConnectionField(newValue) { $0.receiveMaximum = newValue } }
    }
    public var topicAliasMaximum: UInt16? {
        get { connection?.topicAliasMaximum }
        set { setConnectionField(newValue) { $0.topicAliasMaximum = newValue } }
    }
    /// Only `.atMostOnce` and `.atLeastOnce` can be sent; absence means QoS 2 is supported.
    public var maximumQoS: MQTTQoS? {
        get { connection?.maximumQoS }
        set { setConnectionField(newValue) { $0.maximumQoS = newValue } }
    }
    public var retainAvailable: Bool? {
        get { connection?.retainAvailable }
        set { setConnectionField(newValue) { $0.retainAvailable = newValue } }
    }
    public var maximumPacketSize: UInt32? {
        get { connection?.maximumPacketSize }
        set { setConnectionField(newValue) { $0.maximumPacketSize = newValue } }
    }
    public var wildcardSubscriptionAvailable: Bool? {
        get { connection?.wildcardSubscriptionAvailable }
        set { setConnectionField(newValue) { $0.wildcardSubscriptionAvailable = newValue } }
    }
    public var subscriptionIdentifiersAvailable: Bool? {
        get { connection?.subscriptionIdentifiersAvailable }
        set { setConnectionField(newValue) { $0.subscriptionIdentifiersAvailable = newValue } }
    }
    public var sharedSubscriptionAvailable: Bool? {
        get { connection?.sharedSubscriptionAvailable }
        set { setConnectionField(newValue) { $0.sharedSubscriptionAvailable = newValue } }
    }

    /// Copy-on-write for the boxed properties; setting nil where there is no box allocates nothing.
    private mutating func setConnectionField<T>(_ newValue: T?, _ set: (ConnectionProperties) -> Void) {
        if connection == nil {
            guard newValue != nil else { return }
            connection = ConnectionProperties()
        } else if !isKnownUniquelyReferenced(&connection) {
            connection = connection?.copy()
        }
        if let connection { set(connection) }
    }

    final class ConnectionProperties: @unchecked Sendable {
        // Mutated only through `setConnectionField`, after making the box unique: value semantics.
        var sessionExpiryInterval: UInt32?
        var assignedClientIdentifier: String?
        var serverKeepAlive: UInt16?
        var authenticationMethod: String?
        var authenticationData: ByteBuffer?
        var requestProblemInformation: Bool?
        var willDelayInterval: UInt32?
        var requestResponseInformation: Bool?
        var responseInformation: String?
        var serverReference: String?
        var receiveMaximum: UInt16?
        var topicAliasMaximum: UInt16?
        var maximumQoS: MQTTQoS?
        var retainAvailable: Bool?
        var maximumPacketSize: UInt32?
        var wildcardSubscriptionAvailable: Bool?
        var subscriptionIdentifiersAvailable: Bool?
        var sharedSubscriptionAvailable: Bool?

        func copy() -> ConnectionProperties {
            let copy = ConnectionProperties()
        copy.sessionExpiryInterval = sessionExpiryInterval
        copy.assignedClientIdentifier = assignedClientIdentifier
        copy.serverKeepAlive = serverKeepAlive
        copy.authenticationMethod = authenticationMethod
        copy.authenticationData = authenticationData
        copy.requestProblemInformation = requestProblemInformation
        copy.willDelayInterval = willDelayInterval
        copy.requestResponseInformation = requestResponseInformation
        copy.responseInformation = responseInformation
        copy.serverReference = serverReference
        copy.receiveMaximum = receiveMaximum
        copy.topicAliasMaximum = topicAliasMaximum
        copy.maximumQoS = maximumQoS
        copy.retainAvailable = retainAvailable
        copy.maximumPacketSize = maximumPacketSize
        copy.wildcardSubscriptionAvailable = wildcardSubscriptionAvailable
        copy.subscriptionIdentifiersAvailable = subscriptionIdentifiersAvailable
        copy.sharedSubscriptionAvailable = sharedSubscriptionAvailable
            return copy
        }
    }

    public init(userProperties: [MQTTUserProperty]) {
        self.userPropertyStorage = .array(userProperties)
    }

    /// User properties in the order they were received or added.
    public var userProperties: [MQTTUserProperty] {
        get {
            switch userPropertyStorage {
            case .array(let array): return array
            case .wire(let bytes): return UserPropertyStorage.materialize(bytes)
            }
        }
        set { userPropertyStorage = .array(newValue) }
    }

    /// The value of the first user property called `name`, without materialising the others.
    public func firstUserProperty(named name: String) -> String? {
        switch userPropertyStorage {
        case .array(let array):
            return array.first(where: { $0.name == name })?.value
        case .wire(var bytes):
            while bytes.readableBytes > 0 {
                bytes.moveReaderIndex(forwardBy: 1)  // identifier 0x26
                guard let nameLength = bytes.readInteger(as: UInt16.self),
                    let candidate = bytes.readSlice(length: Int(nameLength)),
                    let valueLength = bytes.readInteger(as: UInt16.self)
                else { return nil }
                if candidate.readableBytesView.elementsEqual(name.utf8) {
                    return bytes.readString(length: Int(valueLength))
                }
                bytes.moveReaderIndex(forwardBy: Int(valueLength))
            }
            return nil
        }
    }

    public var isEmpty: Bool {
        payloadFormatIndicator == nil && messageExpiryInterval == nil && contentType == nil && responseTopic == nil
            && correlationData == nil && subscriptionIdentifiers.isEmpty && sessionExpiryInterval == nil
            && assignedClientIdentifier == nil && serverKeepAlive == nil && authenticationMethod == nil
            && authenticationData == nil && requestProblemInformation == nil && willDelayInterval == nil
            && requestResponseInformation == nil && responseInformation == nil && serverReference == nil
            && reasonString == nil && receiveMaximum == nil && topicAliasMaximum == nil && topicAlias == nil
            && maximumQoS == nil && retainAvailable == nil && maximumPacketSize == nil
            && wildcardSubscriptionAvailable == nil && subscriptionIdentifiersAvailable == nil
            && sharedSubscriptionAvailable == nil && userPropertyStorage.isEmpty
    }

    public static func == (lhs: MQTTProperties, rhs: MQTTProperties) -> Bool {
        lhs.payloadFormatIndicator == rhs.payloadFormatIndicator
            && lhs.messageExpiryInterval == rhs.messageExpiryInterval && lhs.contentType == rhs.contentType
            && lhs.responseTopic == rhs.responseTopic && lhs.correlationData == rhs.correlationData
            && lhs.subscriptionIdentifiers == rhs.subscriptionIdentifiers
            && lhs.sessionExpiryInterval == rhs.sessionExpiryInterval
            && lhs.assignedClientIdentifier == rhs.assignedClientIdentifier
            && lhs.serverKeepAlive == rhs.serverKeepAlive && lhs.authenticationMethod == rhs.authenticationMethod
            && lhs.authenticationData == rhs.authenticationData
            && lhs.requestProblemInformation == rhs.requestProblemInformation
            && lhs.willDelayInterval == rhs.willDelayInterval
            && lhs.requestResponseInformation == rhs.requestResponseInformation
            && lhs.responseInformation == rhs.responseInformation && lhs.serverReference == rhs.serverReference
            && lhs.reasonString == rhs.reasonString && lhs.receiveMaximum == rhs.receiveMaximum
            && lhs.topicAliasMaximum == rhs.topicAliasMaximum && lhs.topicAlias == rhs.topicAlias
            && lhs.maximumQoS == rhs.maximumQoS && lhs.retainAvailable == rhs.retainAvailable
            && lhs.maximumPacketSize == rhs.maximumPacketSize
            && lhs.wildcardSubscriptionAvailable == rhs.wildcardSubscriptionAvailable
            && lhs.subscriptionIdentifiersAvailable == rhs.subscriptionIdentifiersAvailable
            && lhs.sharedSubscriptionAvailable == rhs.sharedSubscriptionAvailable
            && lhs.userPropertyStorage.equals(rhs.userPropertyStorage)
    }
}

/// User properties either as values or as the validated wire bytes they were decoded from
/// (`0x26 name value` repeated, contiguous in the received property block).
enum UserPropertyStorage: Sendable {
    case array([MQTTUserProperty])
    case wire(ByteBuffer)

    var isEmpty: Bool {
        switch self {
        case .array(let array): array.isEmpty
        case .wire(let bytes): bytes.readableBytes == 0
        }
    }

    var encodedLength: Int {
        switch self {
        case .array(let array): array.reduce(0) { $0 + 5 + $1.name.utf8.count + $1.value.utf8.count }
        case .wire(let bytes): bytes.readableBytes
        }
    }

    func equals(_ other: UserPropertyStorage) -> Bool {
        if case .wire(let lhs) = self, case .wire(let rhs) = other, lhs == rhs { return true }
        return UserPropertyStorage.values(self) == UserPropertyStorage.values(other)
    }

    static func values(_ storage: UserPropertyStorage) -> [MQTTUserProperty] {
        switch storage {
        case .array(let array): array
        case .wire(let bytes): materialize(bytes)
        }
    }

    /// Decodes wire bytes that the decoder already validated.
    static func materialize(_ wire: ByteBuffer) -> [MQTTUserProperty] {
        var bytes = wire
        var result: [MQTTUserProperty] = []
        while bytes.readableBytes > 0 {
            bytes.moveReaderIndex(forwardBy: 1)
            guard let nameLength = bytes.readInteger(as: UInt16.self),
                let name = bytes.readString(length: Int(nameLength)),
                let valueLength = bytes.readInteger(as: UInt16.self),
                let value = bytes.readString(length: Int(valueLength))
            else { break }
            result.append(MQTTUserProperty(name: name, value: value))
        }
        return result
    }
}

extension MQTTProperties {
    /// Where a property block stands; each property is allowed in some of these (MQTT 5.0 table 2-4).
    enum Context: UInt8, Sendable {
        case connect, connack, publish, will, puback, pubrec, pubrel, pubcomp
        case subscribe, suback, unsubscribe, unsuback, disconnect, auth

        var bit: UInt16 { 1 << UInt16(rawValue) }
    }

    enum Identifier {
        static let payloadFormatIndicator: UInt8 = 0x01
        static let messageExpiryInterval: UInt8 = 0x02
        static let contentType: UInt8 = 0x03
        static let responseTopic: UInt8 = 0x08
        static let correlationData: UInt8 = 0x09
        static let subscriptionIdentifier: UInt8 = 0x0B
        static let sessionExpiryInterval: UInt8 = 0x11
        static let assignedClientIdentifier: UInt8 = 0x12
        static let serverKeepAlive: UInt8 = 0x13
        static let authenticationMethod: UInt8 = 0x15
        static let authenticationData: UInt8 = 0x16
        static let requestProblemInformation: UInt8 = 0x17
        static let willDelayInterval: UInt8 = 0x18
        static let requestResponseInformation: UInt8 = 0x19
        static let responseInformation: UInt8 = 0x1A
        static let serverReference: UInt8 = 0x1C
        static let reasonString: UInt8 = 0x1F
        static let receiveMaximum: UInt8 = 0x21
        static let topicAliasMaximum: UInt8 = 0x22
        static let topicAlias: UInt8 = 0x23
        static let maximumQoS: UInt8 = 0x24
        static let retainAvailable: UInt8 = 0x25
        static let userProperty: UInt8 = 0x26
        static let maximumPacketSize: UInt8 = 0x27
        static let wildcardSubscriptionAvailable: UInt8 = 0x28
        static let subscriptionIdentifierAvailable: UInt8 = 0x29
        static let sharedSubscriptionAvailable: UInt8 = 0x2A
    }

    /// For each identifier 0...0x2A, the contexts it may appear in (0 = unknown identifier).
    static let allowedContexts: [UInt16] = {
        var table = [UInt16](repeating: 0, count: 0x2B)
        func allow(_ id: UInt8, _ contexts: [Context]) {
            table[Int(id)] = contexts.reduce(0) { $0 | $1.bit }
        }
        let all: [Context] = [
            .connect, .connack, .publish, .will, .puback, .pubrec, .pubrel, .pubcomp, .subscribe, .suback,
            .unsubscribe, .unsuback, .disconnect, .auth,
        ]
        let publishAndWill: [Context] = [.publish, .will]
        allow(Identifier.payloadFormatIndicator, publishAndWill)
        allow(Identifier.messageExpiryInterval, publishAndWill)
        allow(Identifier.contentType, publishAndWill)
        allow(Identifier.responseTopic, publishAndWill)
        allow(Identifier.correlationData, publishAndWill)
        allow(Identifier.subscriptionIdentifier, [.publish, .subscribe])
        allow(Identifier.sessionExpiryInterval, [.connect, .connack, .disconnect])
        allow(Identifier.assignedClientIdentifier, [.connack])
        allow(Identifier.serverKeepAlive, [.connack])
        allow(Identifier.authenticationMethod, [.connect, .connack, .auth])
        allow(Identifier.authenticationData, [.connect, .connack, .auth])
        allow(Identifier.requestProblemInformation, [.connect])
        allow(Identifier.willDelayInterval, [.will])
        allow(Identifier.requestResponseInformation, [.connect])
        allow(Identifier.responseInformation, [.connack])
        allow(Identifier.serverReference, [.connack, .disconnect])
        allow(
            Identifier.reasonString,
            [.connack, .puback, .pubrec, .pubrel, .pubcomp, .suback, .unsuback, .disconnect, .auth])
        allow(Identifier.receiveMaximum, [.connect, .connack])
        allow(Identifier.topicAliasMaximum, [.connect, .connack])
        allow(Identifier.topicAlias, [.publish])
        allow(Identifier.maximumQoS, [.connack])
        allow(Identifier.retainAvailable, [.connack])
        allow(Identifier.userProperty, all)
        allow(Identifier.maximumPacketSize, [.connect, .connack])
        allow(Identifier.wildcardSubscriptionAvailable, [.connack])
        allow(Identifier.subscriptionIdentifierAvailable, [.connack])
        allow(Identifier.sharedSubscriptionAvailable, [.connack])
        return table
    }()
}
