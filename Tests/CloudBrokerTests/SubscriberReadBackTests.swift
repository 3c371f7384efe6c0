import Foundation
import Logging
import NIOCore
import Testing
import TestSupport
import TributaryKafka

@testable import CloudBroker
@testable import Common

/// A connected subscriber slower than its publishers: what its queue cannot hold is read back from Kafka
/// (`OutboundState.PartitionDelivery`, `SubscriberReadBack`) instead of being dropped.
@Suite("Subscriber read-back (Kafka is the queue for a slow subscriber)")
struct SubscriberReadBackTests {
    static let partition = KafkaTopicPartition(topic: "mqtt.messages", partition: 3)
    static let other = KafkaTopicPartition(topic: "mqtt.messages", partition: 4)

    static func message(_ offset: Int64, qos: MQTTQoS = .atLeastOnce, partition: KafkaTopicPartition = partition) -> OutboundMessage {
        var message = BrokerMessage(topic: "t/\(offset)", payload: ByteBuffer(string: "\(offset)"), qos: qos, retain: false, properties: MQTTProperties())
        message.source = partition
        message.sourceOffset = offset
        return OutboundMessage(message: message, qos: qos, retain: false, subscriptionIdentifiers: [])
    }

    static func offsets(_ state: inout OutboundState) -> [Int64] {
        state.drain(window: 1000, version: .v5, now: Date()).packets.compactMap { packet -> Int64? in
            guard case .publish(let publish) = packet else { return nil }
            return Int64(String(buffer: publish.payload))
        }
    }

    @Test("overflow: later live messages of the partition are skipped, the read-back fills them in, live resumes after it without a copy")
    func overflowReadBackAndReturnToLive() {
        var state = OutboundState()
        func offer(_ offset: Int64, qos: MQTTQoS = .atLeastOnce, partition: KafkaTopicPartition = Self.partition) -> (MQTTPacket?, Bool, (KafkaTopicPartition, Int64)?) {
            let result = state.offer(Self.message(offset, qos: qos, partition: partition), window: 1, limit: 2, canSendNow: true, version: .v5, now: Date(), readBackAllowed: true)
            return (result.packet, result.dropped, result.readBackFrom)
        }
        #expect(offer(0).0 != nil)  // sent (window 1)
        #expect(offer(1).0 == nil && offer(2).0 == nil)  // queued (limit 2)
        let overflow = offer(3)
        #expect(overflow.1 == false, "a QoS 1 message from Kafka is not dropped")
        #expect(overflow.2?.0 == Self.partition && overflow.2?.1 == 3)
        #expect(state.readingBack == [Self.partition: 3])
        // Routing goes on: 4 and 5 are skipped (they will be read back), not dropped.
        #expect(offer(4).1 == false && offer(5).1 == false)
        #expect(state.queuedCount == 2)
        // Going offline now stores a replay position no later than 0 (unacknowledged), 1 (queued) and 3 (read back).
        #expect(state.replayFrom()[Self.partition] == 0)
        // The read-back: 2 is older than what it must deliver (ignored), 3..5 are queued whatever the limit.
        for offset: Int64 in [2, 3, 4] { _ = state.readBackOffer(Self.message(offset), window: 1, canSendNow: false, version: .v5, now: Date()) }
        #expect(state.readingBack == [Self.partition: 5], "still behind: routing offered 5")
        _ = state.readBackOffer(Self.message(5), window: 1, canSendNow: false, version: .v5, now: Date())
        #expect(state.readingBack.isEmpty, "caught up with routing: live again")
        #expect(state.partitions[Self.partition] == .live(from: 6))
        let readBack = Self.offsets(&state)
        #expect(readBack == [1, 2, 3, 4, 5], "in order, once")
        // A late live copy of 5 is skipped; 6 is taken live (queued: the window is full).
        let late = offer(5)
        #expect(late.0 == nil && late.1 == false && late.2 == nil && state.queuedCount == 0)
        _ = offer(6)
        let live = Self.offsets(&state)
        #expect(live == [6])
    }

    @Test("caught up while the client is still behind (queue above liveAtMost): the read-back tails the partition instead of going live")
    func caughtUpButStillBehindKeepsTailing() {
        var state = OutboundState()
        _ = state.offer(Self.message(0), window: 0, limit: 0, canSendNow: true, version: .v5, now: Date(), readBackAllowed: true)
        _ = state.offer(Self.message(1), window: 0, limit: 0, canSendNow: true, version: .v5, now: Date(), readBackAllowed: true)
        for offset: Int64 in [0, 1] { _ = state.readBackOffer(Self.message(offset), window: 0, canSendNow: false, version: .v5, now: Date(), liveAtMost: 1) }
        #expect(state.readingBack == [Self.partition: 2], "past what routing offered, but 2 queued > 1: still read back")
        _ = state.offer(Self.message(2), window: 0, limit: 0, canSendNow: true, version: .v5, now: Date(), readBackAllowed: true)
        #expect(state.queuedCount == 2, "routing's 2 is left to the read-back")
        #expect(Self.offsets(&state) == [0, 1])
        _ = state.readBackOffer(Self.message(2), window: 0, canSendNow: false, version: .v5, now: Date(), liveAtMost: 1)
        #expect(state.partitions[Self.partition] == .live(from: 3), "the client kept up (1 queued): live again")
        #expect(Self.offsets(&state) == [2])
    }

    @Test("records beyond where a partition's read must continue are dropped and the partition sought back; a gap that outlasts three seeks is accepted (records gone)")
    func recordsBeyondTheContinuationAreSoughtBack() {
        func records(_ partition: KafkaTopicPartition, _ offsets: ClosedRange<Int64>) -> [KafkaRecord] {
            offsets.map { KafkaRecord(topic: partition.topic, partition: partition.partition, offset: $0, key: nil, value: [], headers: [], timestampMilliseconds: nil) }
        }
        var starts = SubscriberReadBack.Starts(from: [Self.partition: 860, Self.other: 10])
        // librdkafka hands over what it had fetched before the reassignment: 1,321 onwards for the partition read from 860.
        let stale = starts.check(records(Self.partition, 1321...1322) + records(Self.other, 10...11))
        #expect(stale.seekBack == [Self.partition: 860])
        #expect(stale.accepted.map(\.offset) == [10, 11], "the other partition continues where it should")
        // After the seek: 860 on (earlier records too) continue it; a stale record among them is caught again.
        let resumed = starts.check(records(Self.partition, 859...861) + records(Self.partition, 1400...1400))
        #expect(resumed.accepted.map(\.offset) == [859, 860, 861])
        #expect(resumed.seekBack == [Self.partition: 862])
        // A gap still there after three seeks back to the same offset: the records are gone from Kafka (a
        // failed seek does not count); the read goes on.
        starts = SubscriberReadBack.Starts(from: [Self.partition: 5])
        #expect(starts.check(records(Self.partition, 50...50)).seekBack == [Self.partition: 5])
        starts.seekFailed([Self.partition])
        for _ in 1...3 { #expect(starts.check(records(Self.partition, 50...50)).seekBack == [Self.partition: 5]) }
        let gone = starts.check(records(Self.partition, 50...51))
        #expect(gone.seekBack.isEmpty && gone.accepted.map(\.offset) == [50, 51])
    }

    @Test("records of a partition the reader no longer reads (live again, prefetched before the reassignment) are dropped, not taken for a later read-back's continuation")
    func recordsOfPartitionsNotBeingReadAreDropped() {
        func records(_ partition: KafkaTopicPartition, _ offsets: ClosedRange<Int64>) -> [KafkaRecord] {
            offsets.map { KafkaRecord(topic: partition.topic, partition: partition.partition, offset: $0, key: nil, value: [], headers: [], timestampMilliseconds: nil) }
        }
        // `other` went live at 500; the reader, reassigned to `partition` alone, still hands over 500-520 of it.
        var starts = SubscriberReadBack.Starts(from: [Self.partition: 100], epoch: 7)
        let checked = starts.check(records(Self.other, 500...520) + records(Self.partition, 100...101))
        #expect(checked.accepted.map(\.partition) == [Self.partition.partition, Self.partition.partition])
        #expect(checked.seekBack.isEmpty)
        #expect(starts.expected[Self.other] == nil, "nothing is expected of a partition not being read")
        // Parked (reading nothing): everything is dropped.
        var parked = SubscriberReadBack.Starts(from: [:], epoch: 8)
        #expect(parked.check(records(Self.partition, 102...103)).accepted.isEmpty)
    }

    @Test("a batch read before the reader's latest reassignment is not current: the session would take it for the continuation of a new read-back and skip what lies between")
    func batchesReadBeforeAReassignmentAreNotCurrent() throws {
        // Why: the partition went live at 20, overflowed again at 30; a batch the reader had read meanwhile
        // (40-41) is accepted by the session as if it continued the read-back from 30.
        var state = OutboundState()
        for offset: Int64 in 10...19 {  // 10 overflows, 11-19 are skipped for the read-back
            _ = state.offer(Self.message(offset), window: 0, limit: 0, canSendNow: true, version: .v5, now: Date(), readBackAllowed: true)
        }
        for offset: Int64 in 10...19 { _ = state.readBackOffer(Self.message(offset), window: 0, canSendNow: false, version: .v5, now: Date()) }
        #expect(state.partitions[Self.partition] == .live(from: 20))
        _ = state.offer(Self.message(30), window: 0, limit: 0, canSendNow: true, version: .v5, now: Date(), readBackAllowed: true)
        #expect(state.readingBack == [Self.partition: 30])
        _ = state.readBackOffer(Self.message(40), window: 0, canSendNow: false, version: .v5, now: Date())
        #expect(state.readingBack[Self.partition, default: 41] >= 41, "30-39 would be skipped: the reader must not hand such a batch over")
        // The reader: each reassignment starts an epoch; only batches of the current one are taken.
        let source = SubscriberReadBack.Source(
            configuration: KafkaConfiguration(bootstrapServers: "127.0.0.1:9", clientId: "epoch-test"), defaultQoS: .atLeastOnce,
            logger: Logger(label: "test"), slots: SubscriberReadBack.Slots(limit: 1))
        let reader = try SubscriberReadBack(source: source) { _, _, _ in }
        defer { reader.close() }
        reader.read(from: [Self.partition: 10])
        #expect(reader.isCurrent(1))
        reader.read(from: [Self.partition: 30])
        #expect(!reader.isCurrent(1), "read before the reassignment to 30")
        #expect(reader.isCurrent(2))
    }

    @Test("what is not read back: QoS 0, messages without a Kafka offset, or read-back not allowed, are dropped as before")
    func dropsWhereNoReadBackApplies() {
        var state = OutboundState()
        _ = state.offer(Self.message(0), window: 0, limit: 1, canSendNow: true, version: .v5, now: Date(), readBackAllowed: true)
        #expect(state.offer(Self.message(1, qos: .atMostOnce), window: 0, limit: 1, canSendNow: true, version: .v5, now: Date(), readBackAllowed: true).dropped)
        var retained = Self.message(2)
        retained.message.source = nil
        retained.message.sourceOffset = nil
        #expect(state.offer(retained, window: 0, limit: 1, canSendNow: true, version: .v5, now: Date(), readBackAllowed: true).dropped)
        #expect(state.offer(Self.message(3), window: 0, limit: 1, canSendNow: true, version: .v5, now: Date(), readBackAllowed: false).dropped)
        #expect(state.readingBack.isEmpty)
    }

    @Test("the read-back advances over records that match nothing; other partitions stay live; an offline session skips the partition too")
    func advanceOtherPartitionsAndOffline() {
        var state = OutboundState()
        _ = state.offer(Self.message(10), window: 0, limit: 0, canSendNow: true, version: .v5, now: Date(), readBackAllowed: true)
        #expect(state.readingBack == [Self.partition: 10])
        // Another partition is unaffected (queue limit 0: dropped as before, being QoS 0).
        #expect(state.offer(Self.message(1, qos: .atMostOnce, partition: Self.other), window: 0, limit: 0, canSendNow: false, version: .v5, now: Date()).dropped)
        // Offline (the session store queues directly): a message of the partition being read back is left to it.
        let leftToReadBack = state.enqueue(Self.message(12), limit: 0)
        #expect(leftToReadBack)
        #expect(state.queuedCount == 0)
        // The reader read up to 11 (exclusive) without a match: routing has offered 12, so still behind.
        state.advance(Self.partition, to: 11)
        #expect(state.readingBack == [Self.partition: 11])
        state.advance(Self.partition, to: 13)
        #expect(state.readingBack.isEmpty && state.partitions[Self.partition] == .live(from: 13))
    }

    @Test("no reader to be had: what was skipped for the read-back is counted as lost and the partition is live again")
    func abandonedReadBackDropsAndGoesLive() {
        var state = OutboundState()
        _ = state.offer(Self.message(0), window: 0, limit: 0, canSendNow: true, version: .v5, now: Date(), readBackAllowed: true)
        _ = state.offer(Self.message(1), window: 0, limit: 0, canSendNow: true, version: .v5, now: Date(), readBackAllowed: true)
        _ = state.offer(Self.message(2), window: 0, limit: 0, canSendNow: true, version: .v5, now: Date(), readBackAllowed: true)
        #expect(state.readingBack == [Self.partition: 0])
        #expect(state.abandonReadBack() == 3)
        #expect(state.readingBack.isEmpty && state.partitions[Self.partition] == .live(from: 3))
        // Live again: the next message is offered as usual (here the queue has room for it).
        let next = state.offer(Self.message(3), window: 0, limit: 1, canSendNow: true, version: .v5, now: Date(), readBackAllowed: true)
        #expect(next.dropped == false && next.readBackFrom == nil && state.queuedCount == 1)
    }

    @Test("offline: a full queue leaves QoS 1/2 messages from Kafka to a read-back at reconnect; QoS 0 and shared subscriptions are dropped")
    func offlineOverflowIsLeftToReadBack() throws {
        let store = InMemorySessionStore()
        store.put(SessionState(clientId: "offline", expiryInterval: 60), now: .now)
        #expect(store.enqueue(clientId: "offline", message: Self.message(0), limit: 1, readBack: true) == .queued)
        // Full: 1 starts the read-back of its partition, 2 is skipped for it; both count as kept.
        #expect(store.enqueue(clientId: "offline", message: Self.message(1), limit: 1, readBack: true) == .queued)
        #expect(store.enqueue(clientId: "offline", message: Self.message(2), limit: 1, readBack: true) == .queued)
        // Another partition, on a node without read-back: dropped as before; QoS 0 is never kept offline.
        #expect(store.enqueue(clientId: "offline", message: Self.message(7, partition: Self.other), limit: 1, readBack: false) == .dropped)
        #expect(store.enqueue(clientId: "offline", message: Self.message(8, qos: .atMostOnce, partition: Self.other), limit: 1, readBack: true) == .dropped)
        #expect(store.statistics().queuedMessages == 1)
        var session = try #require(store.take(clientId: "offline", now: .now))
        #expect(session.outbound.readingBack == [Self.partition: 1], "the reconnecting client's read-back starts at 1")
        #expect(session.outbound.replayFrom()[Self.partition] == 0, "a snapshot replays from the oldest message not delivered")
        #expect(Self.offsets(&session.outbound) == [0])

        // A member of a shared subscription gets only part of its filter's messages: no read-back.
        var shared = SessionState(clientId: "member", expiryInterval: 60)
        let filter = "$share/group/t/#"
        shared.subscriptions[filter] = SubscriptionOptions(subscription: MQTTSubscription(topicFilter: try MQTTTopicFilter(filter), qos: .atLeastOnce))
        store.put(shared, now: .now)
        #expect(store.enqueue(clientId: "member", message: Self.message(0), limit: 1, readBack: true) == .queued)
        #expect(store.enqueue(clientId: "member", message: Self.message(1), limit: 1, readBack: true) == .dropped)
        #expect(try #require(store.take(clientId: "member", now: .now)).outbound.readingBack.isEmpty)
    }

    @Test("retained messages sent on SUBSCRIBE are all queued whatever the limit, in order, and live messages routed later follow them")
    func retainedOnSubscribeIsNeverDropped() {
        var state = OutboundState()
        var sentAtOnce = 0
        for index: Int64 in 0..<50 {
            var retained = Self.message(index)
            retained.message.source = nil  // from the retained store, not a messages partition
            retained.message.sourceOffset = nil
            retained.retain = true
            if state.offerRetained(retained, window: 4, canSendNow: true, version: .v5, now: Date()).packet != nil { sentAtOnce += 1 }
        }
        #expect(sentAtOnce == 4, "the in-flight window")
        #expect(state.queuedCount == 46, "the rest queued, though the limit below is 10")
        // A live QoS 1 message now finds the queue over its limit: it is read back later, not dropped, and
        // a QoS 0 one is dropped (counted) as before.
        let live = state.offer(Self.message(100), window: 4, limit: 10, canSendNow: true, version: .v5, now: Date(), readBackAllowed: true)
        #expect(live.dropped == false && live.readBackFrom?.1 == 100)
        #expect(state.offer(Self.message(101, qos: .atMostOnce, partition: Self.other), window: 4, limit: 10, canSendNow: true, version: .v5, now: Date()).dropped)
        #expect(Self.offsets(&state) == Array(4..<50), "every retained message, once, in order")
    }

    @Test("end to end: 200 retained messages through a node whose session queues hold 20 all reach a new subscriber")
    func retainedBeyondTheQueueArrive() async throws {
        try await withProcesses { scope in
            let tansu = try await scope.startTansu()
            let broker = try await scope.startBroker(tansu: tansu, settings: ["mqtt.session_queue_limit": "20", "mqtt.max_inflight_outbound": "4"])
            let publisher = try await RawMQTTClient.connect(port: broker.mqttPort)
            try await publisher.handshake(BrokerProtocolTests.v5("retained-publisher"))
            let count = 200
            for index in 0..<count {
                try await BrokerProtocolTests.publishQoS1(publisher, "state/device-\(index)", "s\(index)", id: UInt16(index + 1), retain: true)
            }
            // The node keeps what it wrote in its retained store at once: the SUBSCRIBE sees all 200.
            let subscriber = try await RawMQTTClient.connect(port: broker.mqttPort)
            try await subscriber.handshake(BrokerProtocolTests.v5("retained-dashboard"))
            try await BrokerProtocolTests.subscribe(subscriber, "state/#")
            var topics = Set<String>()
            for index in 0..<count {
                guard let publish = try? await BrokerProtocolTests.nextPublish(subscriber) else {
                    Issue.record("only \(index) of \(count) retained messages arrived")
                    break
                }
                #expect(publish.retain)
                #expect(String(buffer: publish.payload) == "s" + publish.topic.dropFirst("state/device-".count))
                topics.insert(publish.topic)
                if let id = publish.packetId { try await subscriber.send(.puback(MQTTPublishAck(packetId: id))) }
            }
            #expect(topics.count == count, "each topic's retained message once")
            let metrics = try await MetricsScrape.get(port: broker.httpPort)
            #expect(MetricsScrape.value(metrics, "tributary_broker_messages_dropped_total{qos=\"1\",reason=\"queue_full\"}") == 0)
            await subscriber.close()
            await publisher.close()
        }
    }

    /// Where the client of an offline session with a backlog comes back.
    enum Return { case sameNode, restartedNode, otherNode }

    /// A persistent session subscribes to `backlog/#` and goes offline; 300 QoS 1 messages are acknowledged
    /// by Kafka meanwhile through a node whose session queues hold 20; then the client reconnects (`to` that
    /// node, to another node started after that one was killed, or to a second node of the cluster while the
    /// first still runs) and must get all 300, once, in order per topic.
    static func offlineBacklogRun(to place: Return) async throws {
        try await withProcesses { scope in
            let tansu = try await scope.startTansu()
            let settings = ["mqtt.session_queue_limit": "20", "mqtt.max_inflight_outbound": "4"]
            let nodes = try await scope.startNodes(place == .otherNode ? ["node-a", "node-b"] : ["node-a"], tansu: tansu, settings: settings)
            var broker = nodes[0]
            let clientId = "offline-backlog"
            let subscriber = try await RawMQTTClient.connect(port: broker.mqttPort)
            try await subscriber.handshake(BrokerProtocolTests.v5(clientId, cleanStart: false, expiry: 600))
            try await BrokerProtocolTests.subscribe(subscriber, "backlog/#")
            try await subscriber.send(.disconnect(MQTTDisconnect()))
            #expect(try await subscriber.next() == .closed)
            if place != .sameNode {
                _ = try await SessionPersistenceTests.waitForSessionRecords(tansu, clientId: clientId, "the offline snapshot with offsets") { records in
                    guard let last = records.last, let value = last.value, !value.isEmpty else { return false }
                    return !((try? SessionSnapshot.decode(value))?.offsets.isEmpty ?? true)
                }
            }

            // Two topics (two keys, so up to two partitions), acknowledged by Kafka while the session is offline.
            let count = 300
            let topics = ["backlog/a", "backlog/b"]
            let publisher = try await RawMQTTClient.connect(port: broker.mqttPort)
            try await publisher.handshake(BrokerProtocolTests.v5("backlog-publisher"))
            for index in 0..<count {
                try await BrokerProtocolTests.publishQoS1(publisher, topics[index % 2], String(index), id: UInt16(index + 1))
            }
            await publisher.close()
            if place == .restartedNode {
                broker.process.send(SIGKILL)
                _ = await broker.process.waitForExit()
                broker = try await scope.startBroker(tansu: tansu, settings: settings, name: "node-a-2", nodeId: "node-a-2")
            }
            // The node has read them all from Kafka and routed them to the offline session (deadline-bounded poll).
            let deadline = ContinuousClock.now + .seconds(30)
            while (MetricsScrape.value(try await MetricsScrape.get(port: broker.httpPort), "tributary_broker_kafka_records_consumed_total") ?? 0) < Double(count) {
                guard ContinuousClock.now < deadline else { throw HarnessError("the broker did not consume the \(count) records") }
                try await Task.sleep(for: .milliseconds(50))  // poll interval
            }

            if place == .otherNode { broker = nodes[1] }
            let resumed = try await RawMQTTClient.connect(port: broker.mqttPort)
            #expect(try await resumed.handshake(BrokerProtocolTests.v5(clientId, cleanStart: false, expiry: 600)).sessionPresent)
            var received: [String: [Int]] = [:]
            for index in 0..<count {
                guard let publish = try? await BrokerProtocolTests.nextPublish(resumed, timeout: .seconds(20)) else {
                    Issue.record("only \(index) of \(count) messages arrived: \(received.mapValues { $0.count })")
                    break
                }
                received[publish.topic, default: []].append(Int(String(buffer: publish.payload)) ?? -1)
                if let id = publish.packetId { try await resumed.send(.puback(MQTTPublishAck(packetId: id))) }
            }
            for (offset, topic) in topics.enumerated() {
                #expect(received[topic] == Array(stride(from: offset, to: count, by: 2)), "every message of \(topic), once, in order")
            }
            // Then live delivery, with nothing repeated before it.
            let live = try await RawMQTTClient.connect(port: broker.mqttPort)
            try await live.handshake(BrokerProtocolTests.v5("backlog-publisher"))
            try await BrokerProtocolTests.publishQoS1(live, "backlog/a", "live", id: 1)
            #expect(String(buffer: try await BrokerProtocolTests.nextPublish(resumed).payload) == "live")
            let metrics = try await MetricsScrape.get(port: broker.httpPort)
            #expect((MetricsScrape.value(metrics, "tributary_broker_subscriber_read_backs_total") ?? 0) >= 1, "the backlog beyond 20 was read back")
            #expect(MetricsScrape.value(metrics, "tributary_broker_messages_dropped_total{qos=\"1\",reason=\"queue_full\"}") == 0)
            await live.close()
            await resumed.close()
            await subscriber.close()
        }
    }

    @Test("end to end: 300 QoS 1 messages for an offline session whose queue holds 20 all arrive at reconnect, once and in order")
    func offlineBacklogLargerThanTheQueueArrives() async throws {
        try await Self.offlineBacklogRun(to: .sameNode)
    }

    @Test("end to end: the same backlog after the node was killed and another started: replayed from the snapshot's offsets, nothing dropped")
    func offlineBacklogSurvivesANodeRestart() async throws {
        try await Self.offlineBacklogRun(to: .restartedNode)
    }

    @Test("end to end: the same backlog taken up by another node of the cluster (the first still runs): replayed from the snapshot's offsets, the overflow read back")
    func offlineBacklogMovesToAnotherNode() async throws {
        try await Self.offlineBacklogRun(to: .otherNode)
    }

    /// 4 device-sim publishers × 1,500 QoS 1 publishes at full speed and one subscriber on `sensors/#`, through a
    /// broker whose sessions queue 20 messages: the simulator's summary and the broker's metrics at the end.
    /// 4 publishers × `count` × 512 B QoS 1 at full speed, `subscribers` subscribers on `sensors/#`, each with a
    /// queue of 20 and 4 in flight (so they fall behind and read back).
    static func slowSubscriberRun(
        extraSettings: [String: String] = [:], drainTimeout: Int, count: Int = 1500, subscribers: Int = 1
    ) async throws -> (summary: [String: String], metrics: String) {
        try await withProcesses { scope in
            let tansu = try await scope.startTansu()
            let settings = ["mqtt.session_queue_limit": "20", "mqtt.max_inflight_outbound": "4"].merging(extraSettings) { $1 }
            let broker = try await scope.startBroker(tansu: tansu, settings: settings)
            let (_, output) = try await scope.run(
                "device-sim", TestEnvironment.binary("device-sim"),
                [
                    "--broker", "mqtt://127.0.0.1:\(broker.mqttPort)", "--clients", "4", "--count", String(count), "--rate", "0", "--size", "512",
                    "--qos", "1", "--inflight", "50", "--drain-timeout", String(drainTimeout), "--processes", "1",
                ] + Array(repeating: ["--subscribe", "sensors/#"], count: subscribers).flatMap { $0 },
                timeout: .seconds(120))
            let summary = try #require(SimulatorOutput.summary(output), "device-sim printed no summary:\n\(output)")
            return (summary, try await MetricsScrape.get(port: broker.httpPort))
        }
    }

    @Test("end to end with mqtt.read_back_limit 0: the overflow is dropped and counted as before, delivery goes on in order")
    func readBackLimitReached() async throws {
        let (summary, metrics) = try await Self.slowSubscriberRun(extraSettings: ["mqtt.read_back_limit": "0"], drainTimeout: 5)
        let received = Int(summary["received"] ?? "") ?? -1
        let lost = Int(summary["lost"] ?? "") ?? -1
        print("read-back refused e2e: received=\(received) lost=\(lost)")
        #expect(summary["acked"] == "6000")
        #expect(received + lost == 6000 && lost > 0, "some of the overflow is lost without a read-back")
        #expect(received > 100, "delivery went on after the overflow")
        #expect(summary["duplicates"] == "0")
        #expect(summary["out_of_order"] == "0")
        #expect((MetricsScrape.value(metrics, "tributary_broker_subscriber_read_backs_refused_total") ?? 0) >= 1)
        #expect(MetricsScrape.value(metrics, "tributary_broker_subscriber_read_backs_total") == 0)
        #expect((MetricsScrape.value(metrics, "tributary_broker_messages_dropped_total{qos=\"1\",reason=\"queue_full\"}") ?? 0) >= Double(lost))
    }

    @Test("end to end: 4 publishers at full speed, one subscriber, a queue of 20: every message arrives once and in order")
    func slowSubscriberLosesNothing() async throws {
        let (summary, metrics) = try await Self.slowSubscriberRun(drainTimeout: 40)
        print("read-back e2e: \(["acked", "received", "lost", "duplicates", "out_of_order", "e2e_p99_ms"].map { "\($0)=\(summary[$0] ?? "?")" }.joined(separator: " "))")
        #expect(summary["acked"] == "6000")
        #expect(summary["received"] == "6000")
        #expect(summary["lost"] == "0")
        #expect(summary["duplicates"] == "0")
        #expect(summary["out_of_order"] == "0")
        #expect((MetricsScrape.value(metrics, "tributary_broker_subscriber_read_backs_total") ?? 0) >= 1, "the queue of 20 overflowed and was read back")
        #expect(MetricsScrape.value(metrics, "tributary_broker_messages_dropped_total{qos=\"1\",reason=\"queue_full\"}") == 0)
    }

    /// Many slow subscribers at once: each falls behind, catches up, goes live and overflows again, over and
    /// over, so its reader is reassigned often (28-52 batches a run arrive after a reassignment and are
    /// dropped). A batch read while a partition was live once passed for the continuation of its next
    /// read-back, and messages were lost without being counted (100 subscribers, a queue of 50: 1-14 of
    /// 400,000 in session 6). That race is rare: this run at debug speed did not lose anything with those
    /// checks removed (7 runs); the release benchmark (`bench/broker-deliver.sh`, BENCHMARKS.md) and the unit
    /// tests above cover it. This test covers the rest of the path under that churn: nothing lost, duplicated,
    /// reordered or dropped.
    @Test("end to end: 30 slow subscribers at once, queues of 50: each gets every message once and in order, none dropped")
    func manySlowSubscribersLoseNothing() async throws {
        let (summary, metrics) = try await Self.slowSubscriberRun(
            extraSettings: ["mqtt.session_queue_limit": "50", "mqtt.max_inflight_outbound": "100"], drainTimeout: 60, count: 2000, subscribers: 30)
        print("read-back e2e, 30 subscribers: \(["acked", "received", "lost", "duplicates", "out_of_order", "e2e_p99_ms"].map { "\($0)=\(summary[$0] ?? "?")" }.joined(separator: " ")) read_backs=\(MetricsScrape.value(metrics, "tributary_broker_subscriber_read_backs_total") ?? -1) stale_batches=\(MetricsScrape.value(metrics, "tributary_broker_subscriber_read_back_stale_batches_total") ?? -1)")
        #expect(summary["acked"] == "8000")
        #expect(summary["received"] == "240000")
        #expect(summary["lost"] == "0")
        #expect(summary["duplicates"] == "0")
        #expect(summary["out_of_order"] == "0")
        #expect((MetricsScrape.value(metrics, "tributary_broker_subscriber_read_backs_total") ?? 0) >= 2, "several queues overflowed and were read back")
        #expect((MetricsScrape.value(metrics, "tributary_broker_subscriber_read_back_stale_batches_total") ?? -1) >= 0)
        #expect(MetricsScrape.value(metrics, "tributary_broker_messages_dropped_total{qos=\"1\",reason=\"queue_full\"}") == 0)
    }
}
