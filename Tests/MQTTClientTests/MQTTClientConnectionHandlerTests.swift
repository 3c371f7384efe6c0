import NIOCore
import NIOEmbedded
import Testing

@testable import Common

/// Collects the handler's events (everything runs on the embedded loop's thread).
final class EventLog: @unchecked Sendable {
    var events: [MQTTClientConnection.Event] = []
    var persistCalls: [[MQTTClientSession.InflightChange]] = []
    var persistPromises: [EventLoopPromise<Void>] = []
}

func makeChannel(
    keepAlive: UInt16 = 10,
    manualAcknowledgement: Bool = false,
    withPersistence: Bool
) throws -> (EmbeddedChannel, EventLog) {
    let log = EventLog()
    let channel = EmbeddedChannel()
    let loop = channel.embeddedEventLoop
    var config = configuration(keepAlive: keepAlive)
    config.manualAcknowledgement = manualAcknowledgement
    let handler = MQTTClientConnectionHandler(
        configuration: config, tickInterval: .seconds(1),
        persist: withPersistence
            ? { changes in
                log.persistCalls.append(changes)
                let promise = loop.makePromise(of: Void.self)
                log.persistPromises.append(promise)
                return promise.futureResult
            } : nil,
        onEvent: { log.events.append($0) })
    try channel.pipeline.syncOperations.addHandler(handler)
    try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1883)).wait()
    return (channel, log)
}

func readAll(_ channel: EmbeddedChannel) throws -> [MQTTPacket] {
    var packets: [MQTTPacket] = []
    while let packet = try channel.readOutbound(as: MQTTPacket.self) { packets.append(packet) }
    return packets
}

@Suite("MQTT client handler on EmbeddedChannel")
struct MQTTClientConnectionHandlerTests {
    @Test("PUBLISH and PUBREL are written only after the persist future succeeds; changes are group-committed")
    func persistBeforeSend() throws {
        let (channel, log) = try makeChannel(withPersistence: true)
        #expect(try readAll(channel).map(\.type) == [.connect])
        try channel.writeInbound(connack())
        try channel.writeAndFlush(MQTTClientConnection.Command.publish(message(), tag: 1)).wait()
        try channel.writeAndFlush(MQTTClientConnection.Command.publish(message(), tag: 2)).wait()
        // Nothing on the wire until the first persist completes.
        #expect(try readAll(channel).isEmpty)
        #expect(log.persistCalls == [[.stored(packetId: 1, tag: 1, qos: .exactlyOnce)]])
        log.persistPromises[0].succeed(())
        #expect(try readAll(channel).compactMap(published).map(\.packetId) == [1])
        // The second publish's change went out in the next (group) commit.
        #expect(log.persistCalls.count == 2)
        log.persistPromises[1].succeed(())
        #expect(try readAll(channel).compactMap(published).map(\.packetId) == [2])

        // PUBREC for both in one read: one persist for both, then both PUBRELs.
        channel.pipeline.fireChannelRead(MQTTPacket.pubrec(MQTTPublishAck(packetId: 1)))
        channel.pipeline.fireChannelRead(MQTTPacket.pubrec(MQTTPublishAck(packetId: 2)))
        channel.pipeline.fireChannelReadComplete()
        #expect(try readAll(channel).isEmpty)
        #expect(log.persistCalls.last == [.released(packetId: 1), .released(packetId: 2)])
        log.persistPromises[2].succeed(())
        #expect(try readAll(channel) == [.pubrel(MQTTPublishAck(packetId: 1)), .pubrel(MQTTPublishAck(packetId: 2))])

        try channel.writeInbound(MQTTPacket.pubcomp(MQTTPublishAck(packetId: 1)))
        #expect(log.events.contains(.acknowledged(tag: 1, reasonCode: .success)))
        _ = try channel.finish(acceptAlreadyClosed: true)
        // The removal, written at close.
        #expect(log.persistCalls.last == [.removed(packetId: 1)])
        log.persistPromises[3].succeed(())
    }

    @Test("a group commit's packets leave with one flush: the PUBLISHes of several publishes, and the PUBRELs of one read's PUBRECs")
    func groupCommitFlushesOnce() throws {
        let (channel, log) = try makeChannel(withPersistence: true)
        let flushes = FlushCounter()
        try channel.pipeline.syncOperations.addHandler(flushes, position: .first)
        try channel.writeInbound(connack())
        _ = try readAll(channel)
        try channel.writeAndFlush(MQTTClientConnection.Command.publish(message(), tag: 1)).wait()
        // While the first persist runs, three more publishes queue up: they share the next persist.
        for tag: UInt64 in 2...4 { try channel.writeAndFlush(MQTTClientConnection.Command.publish(message(), tag: tag)).wait() }
        log.persistPromises[0].succeed(())
        #expect(try readAll(channel).compactMap(published).map(\.packetId) == [1])
        #expect(log.persistCalls.count == 2 && log.persistCalls[1].count == 3)
        flushes.count = 0
        log.persistPromises[1].succeed(())
        #expect(try readAll(channel).compactMap(published).map(\.packetId) == [2, 3, 4])
        #expect(flushes.count == 1)

        flushes.count = 0
        for id: UInt16 in 1...4 { channel.pipeline.fireChannelRead(MQTTPacket.pubrec(MQTTPublishAck(packetId: id))) }
        channel.pipeline.fireChannelReadComplete()
        log.persistPromises[2].succeed(())
        #expect(try readAll(channel) == (1...4).map { MQTTPacket.pubrel(MQTTPublishAck(packetId: $0)) })
        #expect(flushes.count == 1)
        _ = try channel.finish(acceptAlreadyClosed: true)
    }

    @Test("manual acknowledgement: PUBACK / PUBREC only when the owner writes .acknowledge; PUBCOMP only after the release is persisted")
    func manualAcknowledgement() throws {
        let (channel, log) = try makeChannel(manualAcknowledgement: true, withPersistence: true)
        _ = try readAll(channel)
        try channel.writeInbound(connack())
        var one = message("s/1", "a", qos: .atLeastOnce)
        one.packetId = 4
        var two = message("s/2", "b")
        two.packetId = 5
        try channel.writeInbound(MQTTPacket.publish(one))
        try channel.writeInbound(MQTTPacket.publish(two))
        #expect(log.events.filter { if case .message = $0 { true } else { false } }.count == 2)
        #expect(try readAll(channel).isEmpty, "nothing acknowledged before the owner stored the messages")
        try channel.writeAndFlush(MQTTClientConnection.Command.acknowledge(packetId: 4, qos: .atLeastOnce)).wait()
        try channel.writeAndFlush(MQTTClientConnection.Command.acknowledge(packetId: 5, qos: .exactlyOnce)).wait()
        // PUBACK needs no persist; PUBREC follows the incomingReceived change.
        #expect(try readAll(channel) == [.puback(MQTTPublishAck(packetId: 4))])
        #expect(log.persistCalls.last == [.incomingReceived(packetId: 5)])
        log.persistPromises.last?.succeed(())
        #expect(try readAll(channel) == [.pubrec(MQTTPublishAck(packetId: 5))])
        try channel.writeInbound(MQTTPacket.pubrel(MQTTPublishAck(packetId: 5)))
        #expect(try readAll(channel).isEmpty, "PUBCOMP waits for the release to be persisted")
        #expect(log.persistCalls.last == [.incomingReleased(packetId: 5)])
        log.persistPromises.last?.succeed(())
        #expect(try readAll(channel) == [.pubcomp(MQTTPublishAck(packetId: 5))])
        _ = try channel.finish(acceptAlreadyClosed: true)
    }

    @Test("a removal (PUBCOMP) holds nothing back: it goes first in the next persist, or at the next tick, or at close")
    func removalIsDeferred() throws {
        let (channel, log) = try makeChannel(withPersistence: true)
        _ = try readAll(channel)
        try channel.writeInbound(connack())
        try channel.writeAndFlush(MQTTClientConnection.Command.publish(message(), tag: 1)).wait()
        log.persistPromises[0].succeed(())
        try channel.writeInbound(MQTTPacket.pubrec(MQTTPublishAck(packetId: 1)))
        log.persistPromises[1].succeed(())
        #expect(try readAll(channel).last == .pubrel(MQTTPublishAck(packetId: 1)))
        try channel.writeInbound(MQTTPacket.pubcomp(MQTTPublishAck(packetId: 1)))
        #expect(log.events.contains(.acknowledged(tag: 1, reasonCode: .success)))
        #expect(log.persistCalls.count == 2)

        // The next publish's persist carries the removal first; its PUBLISH waits for that persist as before.
        try channel.writeAndFlush(MQTTClientConnection.Command.publish(message(), tag: 2)).wait()
        #expect(log.persistCalls.count == 3)
        #expect(log.persistCalls[2].first == .removed(packetId: 1))
        #expect(log.persistCalls[2].count == 2)
        #expect(try readAll(channel).isEmpty)
        log.persistPromises[2].succeed(())
        let second = try #require(try readAll(channel).compactMap(published).first?.packetId)

        // A quiet link: the removal is written at the next tick.
        try channel.writeInbound(MQTTPacket.pubrec(MQTTPublishAck(packetId: second)))
        log.persistPromises[3].succeed(())
        try channel.writeInbound(MQTTPacket.pubcomp(MQTTPublishAck(packetId: second)))
        #expect(log.persistCalls.count == 4)
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        #expect(log.persistCalls.last == [.removed(packetId: second)])
        log.persistPromises[4].succeed(())

        // At close: a removal not written yet is written even though nothing waits for it.
        try channel.writeAndFlush(MQTTClientConnection.Command.publish(message(), tag: 3)).wait()
        log.persistPromises[5].succeed(())
        let third = try #require(try readAll(channel).compactMap(published).first?.packetId)
        try channel.writeInbound(MQTTPacket.pubrec(MQTTPublishAck(packetId: third)))
        log.persistPromises[6].succeed(())
        try channel.writeInbound(MQTTPacket.pubcomp(MQTTPublishAck(packetId: third)))
        #expect(log.persistCalls.count == 7)
        _ = try channel.finish(acceptAlreadyClosed: true)
        #expect(log.persistCalls.last == [.removed(packetId: third)])
        log.persistPromises[7].succeed(())
    }

    @Test("a failed persist closes the connection without sending the packet and hands back the session")
    func persistFailure() throws {
        struct DiskGone: Error {}
        let (channel, log) = try makeChannel(withPersistence: true)
        _ = try readAll(channel)
        try channel.writeInbound(connack())
        try channel.writeAndFlush(MQTTClientConnection.Command.publish(message(), tag: 1)).wait()
        log.persistPromises[0].fail(DiskGone())
        #expect(try readAll(channel).isEmpty)
        #expect(!channel.isActive)
        guard case .closed(let error?, let session) = log.events.last else {
            Issue.record("expected closed, got \(log.events)")
            return
        }
        #expect(error.code == .connectionClosed)
        #expect(session.inflightCount == 1)
    }

    @Test("keep-alive on virtual time: PINGREQ after 10 s idle, close after 5 s without PINGRESP")
    func keepAliveVirtualTime() throws {
        let (channel, log) = try makeChannel(keepAlive: 10, withPersistence: false)
        _ = try readAll(channel)
        try channel.writeInbound(connack())
        channel.embeddedEventLoop.advanceTime(by: .seconds(9))
        #expect(try readAll(channel).isEmpty)
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        #expect(try readAll(channel) == [.pingreq])
        try channel.writeInbound(MQTTPacket.pingresp)
        channel.embeddedEventLoop.advanceTime(by: .seconds(10))
        #expect(try readAll(channel) == [.pingreq])
        channel.embeddedEventLoop.advanceTime(by: .seconds(5))
        #expect(!channel.isActive)
        guard case .closed(let error?, _) = log.events.last else {
            Issue.record("expected closed, got \(log.events)")
            return
        }
        #expect(error.code == .keepAliveTimeout)
    }

    @Test("disconnect sends DISCONNECT, closes, and reports a normal close")
    func normalDisconnect() throws {
        let (channel, log) = try makeChannel(withPersistence: false)
        _ = try readAll(channel)
        try channel.writeInbound(connack())
        try channel.writeAndFlush(MQTTClientConnection.Command.disconnect).wait()
        #expect(try readAll(channel) == [.disconnect(MQTTDisconnect())])
        #expect(!channel.isActive)
        guard case .closed(nil, _) = log.events.last else {
            Issue.record("expected a normal close, got \(log.events)")
            return
        }
    }
}

/// Counts the flushes that reach the wire (placed first in the pipeline).
final class FlushCounter: ChannelOutboundHandler, @unchecked Sendable {
    typealias OutboundIn = Any
    var count = 0

    func flush(context: ChannelHandlerContext) {
        count += 1
        context.flush()
    }
}
