import NIOCore

extension MQTTProperties {
    /// Decodes a property block (length, then properties) and checks it as MQTT 5.0 section 2.2.2 requires:
    /// an identifier unknown or not allowed in `context` is a Malformed Packet, a repeated property that may
    /// appear once is a Protocol Error, and so are the out-of-range values each property's section names.
    static func decode(from buffer: inout ByteBuffer, context: Context) throws(MQTTCodecError) -> MQTTProperties {
        let length = Int(try buffer.readMQTTVariableByteInteger())
        guard var block = buffer.readSlice(length: length) else {
            throw .malformed("property length exceeds the packet")
        }
        let whole = block
        var properties = MQTTProperties()
        if length == 0 { return properties }
        var seen: UInt64 = 0
        var userStart = -1
        var userEnd = -1
        var userArray: [MQTTUserProperty]? = nil
        while block.readableBytes > 0 {
            let start = block.readerIndex
            let wideIdentifier = try block.readMQTTVariableByteInteger()
            guard wideIdentifier < allowedContexts.count, allowedContexts[Int(wideIdentifier)] != 0 else {
                throw .malformed("unknown property identifier \(wideIdentifier)")
            }
            guard allowedContexts[Int(wideIdentifier)] & context.bit != 0 else {
                throw .malformed("property identifier \(wideIdentifier) is not allowed in \(context)")
            }
            let identifier = UInt8(wideIdentifier)
            let bit = UInt64(1) << UInt64(identifier)
            let repeatable =
                identifier == Identifier.userProperty
                || (identifier == Identifier.subscriptionIdentifier && context == .publish)
            if seen & bit != 0 && !repeatable {
                throw .protocolError("property identifier \(identifier) appears more than once")
            }
            seen |= bit
            switch identifier {
            case Identifier.payloadFormatIndicator:
                guard let value = MQTTPayloadFormatIndicator(rawValue: try block.readMQTTByte()) else {
                    throw .protocolError("payload format indicator must be 0 or 1")
                }
                properties.payloadFormatIndicator = value
            case Identifier.messageExpiryInterval:
                properties.messageExpiryInterval = try block.readMQTTUInt32()
            case Identifier.contentType:
                properties.contentType = try block.readMQTTString()
            case Identifier.responseTopic:
                let topic = try block.readMQTTString()
                guard MQTTTopicName.isValid(topic) else {
                    throw MQTTCodecError(reasonCode: .topicNameInvalid, message: "response topic is not a valid topic name")
                }
                properties.responseTopic = topic
            case Identifier.correlationData:
                properties.correlationData = try block.readMQTTBinary()
            case Identifier.subscriptionIdentifier:
                let value = try block.readMQTTVariableByteInteger()
                guard value != 0 else { throw .protocolError("subscription identifier 0") }
                properties.subscriptionIdentifiers.append(value)
            case Identifier.sessionExpiryInterval:
                properties.sessionExpiryInterval = try block.readMQTTUInt32()
            case Identifier.assignedClientIdentifier:
                properties.assignedClientIdentifier = try block.readMQTTString()
            case Identifier.serverKeepAlive:
                properties.serverKeepAlive = try block.readMQTTUInt16()
            case Identifier.authenticationMethod:
                properties.authenticationMethod = try block.readMQTTString()
            case Identifier.authenticationData:
                properties.authenticationData = try block.readMQTTBinary()
            case Identifier.requestProblemInformation:
                properties.requestProblemInformation = try block.readMQTTFlag("request problem information")
            case Identifier.willDelayInterval:
                properties.willDelayInterval = try block.readMQTTUInt32()
            case Identifier.requestResponseInformation:
                properties.requestResponseInformation = try block.readMQTTFlag("request response information")
            case Identifier.responseInformation:
                properties.responseInformation = try block.readMQTTString()
            case Identifier.serverReference:
                properties.serverReference = try block.readMQTTString()
            case Identifier.reasonString:
                properties.reasonString = try block.readMQTTString()
            case Identifier.receiveMaximum:
                let value = try block.readMQTTUInt16()
                guard value != 0 else { throw .protocolError("receive maximum 0") }
                properties.receiveMaximum = value
            case Identifier.topicAliasMaximum:
                properties.topicAliasMaximum = try block.readMQTTUInt16()
            case Identifier.topicAlias:
                let value = try block.readMQTTUInt16()
                guard value != 0 else {
                    throw MQTTCodecError(reasonCode: .topicAliasInvalid, message: "topic alias 0")
                }
                properties.topicAlias = value
            case Identifier.maximumQoS:
                let value = try block.readMQTTByte()
                guard value <= 1, let qos = MQTTQoS(rawValue: value) else {
                    throw .protocolError("maximum QoS must be 0 or 1")
                }
                properties.maximumQoS = qos
            case Identifier.retainAvailable:
                properties.retainAvailable = try block.readMQTTFlag("retain available")
            case Identifier.userProperty:
                if userArray != nil {
                    userArray!.append(MQTTUserProperty(name: try block.readMQTTString(), value: try block.readMQTTString()))
                } else {
                    try block.skipMQTTString()
                    try block.skipMQTTString()
                    if userStart < 0 {
                        userStart = start
                    } else if userEnd != start {
                        // Not contiguous with the earlier ones: keep them as values from here on.
                        var array = UserPropertyStorage.materialize(whole.getSlice(at: userStart, length: userEnd - userStart) ?? ByteBuffer())
                        array.append(contentsOf: UserPropertyStorage.materialize(whole.getSlice(at: start, length: block.readerIndex - start) ?? ByteBuffer()))
                        userArray = array
                    }
                    userEnd = block.readerIndex
                }
            case Identifier.maximumPacketSize:
                let value = try block.readMQTTUInt32()
                guard value != 0 else { throw .protocolError("maximum packet size 0") }
                properties.maximumPacketSize = value
            case Identifier.wildcardSubscriptionAvailable:
                properties.wildcardSubscriptionAvailable = try block.readMQTTFlag("wildcard subscription available")
            case Identifier.subscriptionIdentifierAvailable:
                properties.subscriptionIdentifiersAvailable = try block.readMQTTFlag("subscription identifier available")
            case Identifier.sharedSubscriptionAvailable:
                properties.sharedSubscriptionAvailable = try block.readMQTTFlag("shared subscription available")
            default:
                throw .malformed("unknown property identifier \(identifier)")
            }
        }
        if let userArray {
            properties.userPropertyStorage = .array(userArray)
        } else if userStart >= 0, let wire = whole.getSlice(at: userStart, length: userEnd - userStart) {
            properties.userPropertyStorage = .wire(wire)
        }
        if context == .connect, properties.authenticationData != nil, properties.authenticationMethod == nil {
            throw .protocolError("authentication data without authentication method")
        }
        return properties
    }

    /// The length of the encoded properties without their length prefix. Throws if a property is not allowed
    /// in `context` or a value cannot be sent.
    func encodedContentLength(context: Context) throws(MQTTCodecError) -> Int {
        var length = 0
        func allow(_ identifier: UInt8, _ size: Int) throws(MQTTCodecError) {
            guard MQTTProperties.allowedContexts[Int(identifier)] & context.bit != 0 else {
                throw .unencodable(.protocolError, "property identifier \(identifier) is not allowed in \(context)")
            }
            length += 1 + size
        }
        func string(_ identifier: UInt8, _ value: String?) throws(MQTTCodecError) {
            guard let value else { return }
            try MQTTEncodingCheck.string(value, "string property")
            try allow(identifier, 2 + value.utf8.count)
        }
        func binary(_ identifier: UInt8, _ value: ByteBuffer?) throws(MQTTCodecError) {
            guard let value else { return }
            try MQTTEncodingCheck.binary(value, "binary property")
            try allow(identifier, 2 + value.readableBytes)
        }
        if payloadFormatIndicator != nil { try allow(Identifier.payloadFormatIndicator, 1) }
        if messageExpiryInterval != nil { try allow(Identifier.messageExpiryInterval, 4) }
        try string(Identifier.contentType, contentType)
        if let responseTopic, !MQTTTopicName.isValid(responseTopic) {
            throw .unencodable(.topicNameInvalid, "response topic is not a valid topic name")
        }
        try string(Identifier.responseTopic, responseTopic)
        try binary(Identifier.correlationData, correlationData)
        if context == .subscribe && subscriptionIdentifiers.count > 1 {
            throw .unencodable(.protocolError, "SUBSCRIBE carries at most one subscription identifier")
        }
        for identifier in subscriptionIdentifiers {
            guard identifier != 0, identifier <= ByteBuffer.mqttMaximumVariableByteInteger else {
                throw .unencodable(.protocolError, "subscription identifier out of range")
            }
            try allow(Identifier.subscriptionIdentifier, ByteBuffer.mqttVariableByteIntegerLength(Int(identifier)))
        }
        if sessionExpiryInterval != nil { try allow(Identifier.sessionExpiryInterval, 4) }
        try string(Identifier.assignedClientIdentifier, assignedClientIdentifier)
        if serverKeepAlive != nil { try allow(Identifier.serverKeepAlive, 2) }
        try string(Identifier.authenticationMethod, authenticationMethod)
        try binary(Identifier.authenticationData, authenticationData)
        if requestProblemInformation != nil { try allow(Identifier.requestProblemInformation, 1) }
        if willDelayInterval != nil { try allow(Identifier.willDelayInterval, 4) }
        if requestResponseInformation != nil { try allow(Identifier.requestResponseInformation, 1) }
        try string(Identifier.responseInformation, responseInformation)
        try string(Identifier.serverReference, serverReference)
        try string(Identifier.reasonString, reasonString)
        if let receiveMaximum {
            guard receiveMaximum != 0 else { throw .unencodable(.protocolError, "receive maximum 0") }
            try allow(Identifier.receiveMaximum, 2)
        }
        if topicAliasMaximum != nil { try allow(Identifier.topicAliasMaximum, 2) }
        if let topicAlias {
            guard topicAlias != 0 else { throw .unencodable(.topicAliasInvalid, "topic alias 0") }
            try allow(Identifier.topicAlias, 2)
        }
        if let maximumQoS {
            guard maximumQoS != .exactlyOnce else {
                throw .unencodable(.protocolError, "maximum QoS 2 is expressed by leaving the property out")
            }
            try allow(Identifier.maximumQoS, 1)
        }
        if retainAvailable != nil { try allow(Identifier.retainAvailable, 1) }
        switch userPropertyStorage {
        case .wire(let bytes):
            if bytes.readableBytes > 0 { try allow(Identifier.userProperty, bytes.readableBytes - 1) }
        case .array(let array):
            for property in array {
                try MQTTEncodingCheck.string(property.name, "user property name")
                try MQTTEncodingCheck.string(property.value, "user property value")
                try allow(Identifier.userProperty, 4 + property.name.utf8.count + property.value.utf8.count)
            }
        }
        if let maximumPacketSize {
            guard maximumPacketSize != 0 else { throw .unencodable(.protocolError, "maximum packet size 0") }
            try allow(Identifier.maximumPacketSize, 4)
        }
        if wildcardSubscriptionAvailable != nil { try allow(Identifier.wildcardSubscriptionAvailable, 1) }
        if subscriptionIdentifiersAvailable != nil { try allow(Identifier.subscriptionIdentifierAvailable, 1) }
        if sharedSubscriptionAvailable != nil { try allow(Identifier.sharedSubscriptionAvailable, 1) }
        return length
    }

    /// Writes the length prefix and the properties whose length `encodedContentLength` returned.
    func write(into buffer: inout MQTTWriter, contentLength: Int) {
        buffer.writeMQTTVariableByteInteger(contentLength)
        if contentLength == 0 { return }
        func id(_ identifier: UInt8) { buffer.writeInteger(identifier) }
        if let payloadFormatIndicator {
            id(Identifier.payloadFormatIndicator)
            buffer.writeInteger(payloadFormatIndicator.rawValue)
        }
        if let messageExpiryInterval {
            id(Identifier.messageExpiryInterval)
            buffer.writeInteger(messageExpiryInterval)
        }
        if let contentType {
            id(Identifier.contentType)
            buffer.writeMQTTString(contentType)
        }
        if let responseTopic {
            id(Identifier.responseTopic)
            buffer.writeMQTTString(responseTopic)
        }
        if let correlationData {
            id(Identifier.correlationData)
            buffer.writeMQTTBinary(correlationData)
        }
        for identifier in subscriptionIdentifiers {
            id(Identifier.subscriptionIdentifier)
            buffer.writeMQTTVariableByteInteger(Int(identifier))
        }
        if let sessionExpiryInterval {
            id(Identifier.sessionExpiryInterval)
            buffer.writeInteger(sessionExpiryInterval)
        }
        if let assignedClientIdentifier {
            id(Identifier.assignedClientIdentifier)
            buffer.writeMQTTString(assignedClientIdentifier)
        }
        if let serverKeepAlive {
            id(Identifier.serverKeepAlive)
            buffer.writeInteger(serverKeepAlive)
        }
        if let authenticationMethod {
            id(Identifier.authenticationMethod)
            buffer.writeMQTTString(authenticationMethod)
        }
        if let authenticationData {
            id(Identifier.authenticationData)
            buffer.writeMQTTBinary(authenticationData)
        }
        if let requestProblemInformation {
            id(Identifier.requestProblemInformation)
            buffer.writeInteger(UInt8(requestProblemInformation ? 1 : 0))
        }
        if let willDelayInterval {
            id(Identifier.willDelayInterval)
            buffer.writeInteger(willDelayInterval)
        }
        if let requestResponseInformation {
            id(Identifier.requestResponseInformation)
            buffer.writeInteger(UInt8(requestResponseInformation ? 1 : 0))
        }
        if let responseInformation {
            id(Identifier.responseInformation)
            buffer.writeMQTTString(responseInformation)
        }
        if let serverReference {
            id(Identifier.serverReference)
            buffer.writeMQTTString(serverReference)
        }
        if let reasonString {
            id(Identifier.reasonString)
            buffer.writeMQTTString(reasonString)
        }
        if let receiveMaximum {
            id(Identifier.receiveMaximum)
            buffer.writeInteger(receiveMaximum)
        }
        if let topicAliasMaximum {
            id(Identifier.topicAliasMaximum)
            buffer.writeInteger(topicAliasMaximum)
        }
        if let topicAlias {
            id(Identifier.topicAlias)
            buffer.writeInteger(topicAlias)
        }
        if let maximumQoS {
            id(Identifier.maximumQoS)
            buffer.writeInteger(maximumQoS.rawValue)
        }
        if let retainAvailable {
            id(Identifier.retainAvailable)
            buffer.writeInteger(UInt8(retainAvailable ? 1 : 0))
        }
        switch userPropertyStorage {
        case .wire(let bytes):
            buffer.writeImmutableBuffer(bytes)
        case .array(let array):
            for property in array {
                id(Identifier.userProperty)
                buffer.writeMQTTString(property.name)
                buffer.writeMQTTString(property.value)
            }
        }
        if let maximumPacketSize {
            id(Identifier.maximumPacketSize)
            buffer.writeInteger(maximumPacketSize)
        }
        if let wildcardSubscriptionAvailable {
            id(Identifier.wildcardSubscriptionAvailable)
            buffer.writeInteger(UInt8(wildcardSubscriptionAvailable ? 1 : 0))
        }
        if let subscriptionIdentifiersAvailable {
            id(Identifier.subscriptionIdentifierAvailable)
            buffer.writeInteger(UInt8(subscriptionIdentifiersAvailable ? 1 : 0))
        }
        if let sharedSubscriptionAvailable {
            id(Identifier.sharedSubscriptionAvailable)
            buffer.writeInteger(UInt8(sharedSubscriptionAvailable ? 1 : 0))
        }
    }
}

extension ByteBuffer {
    /// A one byte property that must be 0 or 1 (a Protocol Error otherwise).
    mutating func readMQTTFlag(_ what: StaticString) throws(MQTTCodecError) -> Bool {
        switch try readMQTTByte() {
        case 0: return false
        case 1: return true
        default: throw .protocolError("\(what) must be 0 or 1")
        }
    }
}
