import NIOCore

/// The counters and histograms of the connections on one event loop. Confined to that loop (no locks): the
/// fleet reads it by submitting to the loop.
final class FleetShard {
    let eventLoop: any EventLoop
    /// The loop's position in the group; clients are dealt to loops round-robin by this.
    let slot: Int
    var summary = SimulatorSummary()
    /// Per subscriber: the accounting of what it received.
    var accounting: [Int: SequenceAccounting] = [:]
    /// The commands the devices of this shard received, by device.
    var commandAccounting = SequenceAccounting()
    /// Devices of this shard that have their command subscription (SUBACK received once).
    var commandTargetsSubscribed = 0
    /// Duplicate commands named on standard error so far (the first few of each shard).
    var commandDuplicatesNamed = 0
    var firstPublishUptime: UInt64?
    var lastCompletionUptime: UInt64?

    private var publishersRemaining = 0
    private let publishersDone: EventLoopPromise<Void>
    private var subscribersPending = 0
    private let subscribersReady: EventLoopPromise<Void>
    var connections: [DeviceConnection] = []
    var subscriberConnections: [DeviceConnection] = []
    var commanderConnection: DeviceConnection?
    private let commanderDone: EventLoopPromise<Void>

    init(eventLoop: any EventLoop, slot: Int) {
        self.eventLoop = eventLoop
        self.slot = slot
        publishersDone = eventLoop.makePromise()
        subscribersReady = eventLoop.makePromise()
        commanderDone = eventLoop.makePromise()
    }

    var commanderDoneFuture: EventLoopFuture<Void> { commanderDone.futureResult }

    func commanderFinished() { commanderDone.succeed() }

    var publishersDoneFuture: EventLoopFuture<Void> { publishersDone.futureResult }
    var subscribersReadyFuture: EventLoopFuture<Void> { subscribersReady.futureResult }

    func expectPublishers(_ count: Int) {
        publishersRemaining = count
        if count == 0 { publishersDone.succeed() }
    }

    func publisherFinished() {
        publishersRemaining -= 1
        if publishersRemaining == 0 { publishersDone.succeed() }
    }

    func expectSubscribers(_ count: Int) {
        subscribersPending = count
        if count == 0 { subscribersReady.succeed() }
    }

    func subscriberReady() {
        subscribersPending -= 1
        if subscribersPending == 0 { subscribersReady.succeed() }
    }

    func notePublish(uptime: UInt64) {
        if firstPublishUptime == nil { firstPublishUptime = uptime }
    }

    func noteCompletion(uptime: UInt64) {
        lastCompletionUptime = max(lastCompletionUptime ?? 0, uptime)
    }

    /// A copy of the counters so far, with the subscribers' accounting as of now.
    /// `failoverMark`: the failover instant (wall clock, ns), to account for the devices that lost their
    /// connection after it.
    func snapshot(expected: Int?, failoverMark: UInt64? = nil) -> SimulatorSummary {
        var result = summary
        result.sequence = SequenceReport()
        for accounts in accounting.values { result.sequence.add(accounts.report(expected: expected)) }
        result.commands = commandAccounting.report(expected: nil)
        if let mark = failoverMark {
            for connection in connections {
                guard let outage = connection.outages.first(where: { $0.disconnectedAtWall >= mark }) else { continue }
                result.failover.clients += 1
                result.failover.noticed.record(nanoseconds: Int64(outage.disconnectedAtWall - mark))
                guard let back = outage.connackAtWall else { continue }
                result.failover.back += 1
                result.failover.recovery.record(nanoseconds: Int64(back - mark))
                if outage.sessionPresent { result.failover.sessionPresent += 1 }
            }
        }
        if let first = firstPublishUptime, let last = lastCompletionUptime, last > first {
            result.publishSeconds = Double(last - first) / 1e9
        }
        return result
    }

    /// Fails nothing; completes both promises so that nobody waits on a shard that is being torn down.
    func abandon() {
        publishersDone.succeed()
        subscribersReady.succeed()
        commanderDone.succeed()
    }
}

@available(*, unavailable)
extension FleetShard: Sendable {}
