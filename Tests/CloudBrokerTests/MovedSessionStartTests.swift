import Testing
import TributaryKafka

@testable import CloudBroker

/// Where a moved session's replay starts (no Kafka): the offset timeline across a pause of the delivery
/// consumer, the lost node's heartbeat positions, and how the two combine (`MovedSessionReplay.starts`).
@Suite("moved session replay start")
struct MovedSessionStartTests {
    static let p0 = KafkaTopicPartition(topic: "mqtt.messages", partition: 0)
    static let p1 = KafkaTopicPartition(topic: "mqtt.messages", partition: 1)

    static func record(_ partition: KafkaTopicPartition, offset: Int64, at milliseconds: Int64) -> KafkaRecord {
        KafkaRecord(topic: partition.topic, partition: partition.partition, offset: offset, key: nil, value: [], headers: [], timestampMilliseconds: milliseconds)
    }

    @Test("a pause leaves a lower bound for every partition, even one the consumer read nothing from; later samples are tight again")
    func timelineAcrossAPause() {
        let timeline = OffsetTimeline()
        timeline.observe([Self.record(Self.p0, offset: 10, at: 1_000), Self.record(Self.p0, offset: 20, at: 2_000)])
        #expect(timeline.offsets(atOrBefore: 2_500) == [Self.p0: .init(offset: 20, sinceLastPause: true)])

        // Paused at 3 s, p0 read up to 25, p1 (no record) positioned at 0.
        timeline.paused(atMilliseconds: 3_000, next: [Self.p0: 25, Self.p1: 0])
        // An instant after the pause: the pause's sample, stale (the pause's records were not read).
        #expect(timeline.offsets(atOrBefore: 60_000) == [Self.p0: .init(offset: 25, sinceLastPause: false), Self.p1: .init(offset: 0, sinceLastPause: false)])
        // Before it: the samples of before, stale too.
        #expect(timeline.offsets(atOrBefore: 1_500)[Self.p0] == .init(offset: 10, sinceLastPause: false))

        // Resumed: the look-back re-reads records of before the pause's sample (ignored), then new records.
        timeline.observe([Self.record(Self.p0, offset: 22, at: 2_900), Self.record(Self.p0, offset: 90, at: 50_000)])
        #expect(timeline.offsets(atOrBefore: 49_000)[Self.p0] == .init(offset: 25, sinceLastPause: false))
        #expect(timeline.offsets(atOrBefore: 55_000)[Self.p0] == .init(offset: 90, sinceLastPause: true))
    }

    @Test("the lost node's positions and this node's estimate: the earlier; a stale estimate only where the node reported nothing")
    func startsCombine() {
        let routing = [Self.p0: 50 as Int64]
        // A tight estimate earlier than the heartbeat's position wins (a record sent, not acknowledged).
        #expect(MovedSessionReplay.starts(routing: routing, timeline: [Self.p0: .init(offset: 40, sinceLastPause: true)]) == [Self.p0: 40])
        // A stale one does not: it may lie long before the instant (a replay of the whole pause).
        #expect(MovedSessionReplay.starts(routing: routing, timeline: [Self.p0: .init(offset: 5, sinceLastPause: false)]) == [Self.p0: 50])
        // No position from the lost node: the estimate, stale or not, rather than no replay at all.
        #expect(
            MovedSessionReplay.starts(routing: routing, timeline: [Self.p1: .init(offset: 7, sinceLastPause: false)]) == [Self.p0: 50, Self.p1: 7])
        #expect(MovedSessionReplay.starts(routing: [:], timeline: [:]).isEmpty)
    }

    @Test("a heartbeat reports a partition from the first beat after the node began routing it, at its oldest position")
    func heartbeatPositions() {
        // Beats before the first assignment carried nothing; the position then only grows.
        #expect(KafkaLink.heartbeatPositions([[:], [:], [Self.p0: 3]]) == [Self.p0: 3])
        #expect(KafkaLink.heartbeatPositions([[:], [Self.p0: 3], [Self.p0: 9, Self.p1: 4]]) == [Self.p0: 3, Self.p1: 4])
        #expect(KafkaLink.heartbeatPositions([[Self.p0: 3], [Self.p0: 9], [Self.p0: 12]]) == [Self.p0: 3])
        #expect(KafkaLink.heartbeatPositions([]).isEmpty)
    }

    @Test("a replay ends at its ends, goes on however long while it moves, and gives up only after the stall limit without progress")
    func replayWatch() {
        let start = ContinuousClock.now
        var watch = ReplayWatch(ends: [Self.p0: 100, Self.p1: 10], stallLimit: .seconds(10), now: start)
        // Moving: 25 s in all, never 10 s without progress (a fixed 10 s limit would have cut it).
        for second in 1...25 {
            #expect(watch.observe([Self.p0: Int64(second * 3), Self.p1: 10], now: start + .seconds(second)) == .progressing)
        }
        // Standing still: still waiting just before the limit, given up at it.
        #expect(watch.observe([Self.p0: 75, Self.p1: 10], now: start + .seconds(34)) == .progressing)
        #expect(watch.observe([Self.p0: 75, Self.p1: 10], now: start + .seconds(35)) == .stalled)
        // Every partition at its end (or beyond): reached, whenever.
        #expect(watch.observe([Self.p0: 100, Self.p1: 12], now: start + .seconds(99)) == .reached)
        var nothing = ReplayWatch(ends: [Self.p0: 5], stallLimit: .seconds(10), now: start)
        #expect(nothing.observe([:], now: start + .seconds(9)) == .progressing)
        #expect(nothing.observe([:], now: start + .seconds(10)) == .stalled, "a consumer that never reads gives up after the limit")
    }
}
