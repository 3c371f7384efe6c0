import NIOCore

extension MQTTProperties {
    /// Decodes a property block (length, then properties) and checks it as MQTT 5.0 section 2.2.2 requires:
    /// an identifier unknown or not allowed in `context` is a Malformed Packet, a repeated property that may
    /// appear once is a Protocol Error, and so are the out-of-range values each property's section names.
    static func decode(from buffer: inout ByteBuffer, context: Context) throws(MQTTCodecError) -> MQTTProperties {
        let length = Int(try buffer.readMQTTVariableByteInteger())
        guard let block = buffer.readSlice(length: length) else {
            throw .malformed("property length exceeds the packet")
        }
        if length == 0 { return MQTTProperties() }
        // One access to the buffer for the whole block; binary values and user properties become slices after.
        var parsed = Parsed()
        var failure: MQTTCodecError? = nil
        block.withUnsafeReadableBytes { raw in
            var reader = MQTTRawReader(raw)
            do throws(MQTTCodecError) {
                try parse(&reader, context: context, into: &parsed)
            } catch {
                failure = error
            }
        }
        if let failure { throw failure }
        func slice(_ range: Range<Int>) -> ByteBuffer {
            block.getSlice(at: block.readerIndex + range.lowerBound, length: range.count) ?? ByteBuffer()
        }
        if let range = parsed.correlationData { parsed.properties.correlationData = slice(range) }
        if let range = parsed.authenticationData { parsed.properties.authenticationData = slice(range) }
        if let array = parsed.userPropertyArray {
            parsed.properties.userPropertyStorage = .array(array)
        } else if let range = parsed.userPropertyWire {
            parsed.properties.userPropertyStorage = .wire(slice(range))
        }
        if context == .connect, parsed.properties.authenticationData != nil, parsed.properties.authenticationMethod == nil {
            throw .protocolError("authentication data without authentication method")
        }
        return parsed.properties
    }

    /// A property block parsed from raw bytes; binary values and user properties as byte ranges.
    struct Parsed {
        var properties = MQTTProperties()
        var correlationData: Range<Int>?
        var authenticationData: Range<Int>?
        /// The contiguous run of user properties (identifier, name, value, repeated).
        var userPropertyWire: Range<Int>?
        /// User properties that were not contiguous, as values.
        var userPropertyArray: [MQTTUserProperty]?
    }

    static func parse(_ reader: inout MQTTRawReader, context: Context, into parsed: inout Parsed) throws(MQTTCodecError) {
        var seen: UInt64 = 0
        while !reader.isAtEnd {
            let start = reader.offset
            let wideIdentifier = try reader.variableByteInteger()
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
                guard let value = MQTTPayloadFormatIndicator(rawValue: try reader.byte()) else {
                    throw .protocolError("payload format indicator must be 0 or 1")
                }
                parsed.properties.payloadFormatIndicator = value
            case Identifier.messageExpiryInterval:
                parsed.properties.messageExpiryInterval = try reader.uint32()
            case Identifier.contentType:
                parsed.properties.contentType = try reader.string()
            case Identifier.responseTopic:
                let topic = try reader.string()
                guard MQTTTopicName.isValid(topic) else {
                    throw MQTTCodecError(reasonCode: .topicNameInvalid, message: "response topic is not a valid topic name")
                }
                parsed.properties.responseTopic = topic
            case Identifier.correlationData:
                parsed.correlationData = try reader.binaryRange()
            case Identifier.subscriptionIdentifier:
                let value = try reader.variableByteInteger()
                guard value != 0 else { throw .protocolError("subscription identifier 0") }
                parsed.properties.subscriptionIdentifiers.append(value)
            case Identifier.sessionExpiryInterval:
                parsed.properties.sessionExpiryInterval = try reader.uint32()
            case Identifier.assignedClientIdentifier:
                parsed.properties.assignedClientIdentifier = try reader.string()
            case Identifier.serverKeepAlive:
                parsed.properties.serverKeepAlive = try reader.uint16()
            case Identifier.authenticationMethod:
                parsed.properties.authenticationMethod = try reader.string()
            case Identifier.authenticationData:
                parsed.authenticationData = try reader.binaryRange()
            case Identifier.requestProblemInformation:
                parsed.properties.requestProblemInformation = try reader.flag("request problem information")
            case Identifier.willDelayInterval:
                parsed.properties.willDelayInterval = try reader.uint32()
            case Identifier.requestResponseInformation:
                parsed.properties.requestResponseInformation = try reader.flag("request response information")
            case Identifier.responseInformation:
                parsed.properties.responseInformation = try reader.string()
            case Identifier.serverReference:
                parsed.properties.serverReference = try reader.string()
            case Identifier.reasonString:
                parsed.properties.reasonString = try reader.string()
            case Identifier.receiveMaximum:
                let value = try reader.uint16()
                guard value != 0 else { throw .protocolError("receive maximum 0") }
                parsed.properties.receiveMaximum = value
            case Identifier.topicAliasMaximum:
                parsed.properties.topicAliasMaximum = try reader.uint16()
            case Identifier.topicAlias:
                let value = try reader.uint16()
                guard value != 0 else {
                    throw MQTTCodecError(reasonCode: .topicAliasInvalid, message: "topic alias 0")
                }
                parsed.properties.topicAlias = value
            case Identifier.maximumQoS:
                let value = try reader.byte()
                guard value <= 1, let qos = MQTTQoS(rawValue: value) else {
                    throw .protocolError("maximum QoS must be 0 or 1")
                }
                parsed.properties.maximumQoS = qos
            case Identifier.retainAvailable:
                parsed.properties.retainAvailable = try reader.flag("retain available")
            case Identifier.userProperty:
                let name = try reader.stringRange()
                let value = try reader.stringRange()
                if parsed.userPropertyArray != nil {
                    parsed.userPropertyArray?.append(
                        MQTTUserProperty(
                            name: String(decoding: UnsafeRawBufferPointer(rebasing: reader.bytes[name]), as: UTF8.self),
                            value: String(decoding: UnsafeRawBufferPointer(rebasing: reader.bytes[value]), as: UTF8.self)))
                } else if let wire = parsed.userPropertyWire, wire.upperBound != start {
                    // Not contiguous with the earlier ones: keep all of them as values from here on.
                    var joined = ByteBuffer(bytes: UnsafeRawBufferPointer(rebasing: reader.bytes[wire]))
                    joined.writeBytes(UnsafeRawBufferPointer(rebasing: reader.bytes[start..<reader.offset]))
                    parsed.userPropertyArray = UserPropertyStorage.materialize(joined)
                    parsed.userPropertyWire = nil
                } else {
                    parsed.userPropertyWire = (parsed.userPropertyWire?.lowerBound ?? start)..<reader.offset
                }
            case Identifier.maximumPacketSize:
                let value = try reader.uint32()
                guard value != 0 else { throw .protocolError("maximum packet size 0") }
                parsed.properties.maximumPacketSize = value
            case Identifier.wildcardSubscriptionAvailable:
                parsed.properties.wildcardSubscriptionAvailable = try reader.flag("wildcard subscription available")
            case Identifier.subscriptionIdentifierAvailable:
                parsed.properties.subscriptionIdentifiersAvailable = try reader.flag("subscription identifier available")
            case Identifier.sharedSubscriptionAvailable:
                parsed.properties.sharedSubscriptionAvailable = try reader.flag("shared subscription available")
            default:
                throw .malformed("unknown property identifier \(identifier)")
            }
        }
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
