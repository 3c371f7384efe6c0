import Common
import Foundation
import NIOCore
import NIOPosix

/// A run in this process: an event loop per core, one `FleetShard` per loop, the subscribers first, then the
/// publishers started over the ramp-up, progress lines while it runs, and the summary at the end.
final class Fleet: Sendable {
    let context: FleetContext
    let group: MultiThreadedEventLoopGroup
    private let shards: [NIOLoopBoundBox<FleetShard>]
    let startUptime: UInt64

    var settings: SimulatorSettings { context.settings }

    init(settings: SimulatorSettings) throws(SimulatorError) {
        context = try FleetContext(settings: settings)
        group = MultiThreadedEventLoopGroup(numberOfThreads: settings.threads)
        var shards: [NIOLoopBoundBox<FleetShard>] = []
        for (slot, loop) in group.makeIterator().enumerated() {
            // Created here, then only touched on its loop.
            shards.append(NIOLoopBoundBox.makeBoxSendingValue(FleetShard(eventLoop: loop, slot: slot), eventLoop: loop))
        }
        self.shards = shards
        startUptime = Clock.uptimeNanoseconds()
    }

    /// Runs `body` with each shard on its own loop and collects the results.
    private func onShards<T: Sendable>(_ body: @escaping @Sendable (FleetShard) -> T) async -> [T] {
        var results: [T] = []
        for shard in shards {
            let value = try? await shard.eventLoop.submit { body(shard.value) }.get()
            if let value { results.append(value) }
        }
        return results
    }

    private func onShardsFuture(_ body: @escaping @Sendable (FleetShard) -> EventLoopFuture<Void>) async {
        var futures: [EventLoopFuture<Void>] = []
        for shard in shards {
            futures.append(shard.eventLoop.flatSubmit { body(shard.value) })
        }
        for future in futures { try? await future.get() }
    }

    // MARK: - Subscribers

    /// Connects one subscriber per filter and returns once each has its SUBACK.
    func startSubscribers() async {
        let filters = settings.subscribeFilters
        guard !filters.isEmpty else { return }
        let context = self.context
        let shardCount = shards.count
        await onShardsFuture { shard in
            let mine = filters.indices.filter { $0 % shardCount == shard.index(in: shardCount) }
            shard.expectSubscribers(mine.count)
            for index in mine {
                let connection = DeviceConnection(
                    index: index, clientId: context.settings.subscriberId(index),
                    role: .subscriber(filter: filters[index], index: index), context: context, shard: shard)
                shard.subscriberConnections.append(connection)
                shard.summary.subscribers += 1
                connection.start()
            }
            return shard.subscribersReadyFuture
        }
    }

    /// Waits until every subscriber has `expected` distinct messages, or `drainTimeout` passes.
    func drainSubscribers(expected: Int) async {
        guard !settings.subscribeFilters.isEmpty else { return }
        let timeout = TimeAmount.nanoseconds(Int64(settings.drainTimeout.totalNanoseconds))
        await onShardsFuture { shard in
            let waits = shard.subscriberConnections.map { $0.waitForDistinct(expected) }
            let all = EventLoopFuture.andAllComplete(waits, on: shard.eventLoop)
            let deadline = shard.eventLoop.makePromise(of: Void.self)
            let timer = shard.eventLoop.scheduleTask(in: timeout) { deadline.succeed() }
            all.whenComplete { _ in
                timer.cancel()
                deadline.succeed()
            }
            return deadline.futureResult
        }
    }

    // MARK: - Commander

    /// Starts the commander (when the run has commands): it connects once every command target has its
    /// subscription (when the devices run in this process; with worker processes, which it cannot see, after
    /// the ramp-up and `commandDelay`), publishes until the run's duration is over, then sends the end
    /// markers. Returns at once.
    func startCommander(devicesHere: Bool) {
        guard settings.commandsEnabled, !shards.isEmpty else { return }
        let targets = settings.commandTargets.count
        let stop = settings.rampUp + (settings.duration ?? .zero)
        let delay = settings.rampUp + settings.commandDelay
        Task {
            if devicesHere {
                // The devices subscribe as they connect; a command sent to a device before its SUBACK is lost
                // by MQTT's rules, not by the broker. Bounded by the end of publishing.
                while elapsed < stop {
                    let subscribed = await onShards { $0.commandTargetsSubscribed }.reduce(0, +)
                    if subscribed >= targets { break }
                    try? await Task.sleep(for: .milliseconds(50))  // polling the shards' counters
                }
            } else {
                try? await Task.sleep(for: delay)
            }
            launchCommander(stopAfter: stop - elapsed)
        }
    }

    private var elapsed: Duration { .nanoseconds(Int64(Clock.uptimeNanoseconds() - startUptime)) }

    private func launchCommander(stopAfter stop: Duration) {
        guard let shard = shards.first else { return }
        let context = self.context
        let drain = settings.drainTimeout
        let started = String(format: "%.2f", Double(elapsed.totalNanoseconds) / 1e9)
        FileHandle.standardError.write(Data("device-sim commander starts at \(started) s\n".utf8))
        shard.eventLoop.execute {
            let connection = DeviceConnection(
                index: 0, clientId: context.settings.commanderId(), role: .commander(targets: context.settings.commandTargets),
                context: context, shard: shard.value)
            shard.value.commanderConnection = connection
            connection.start()
            // On the shard's loop here, so the timers may hold the (loop-bound) connection.
            let loop = shard.eventLoop.assumeIsolated()
            loop.scheduleTask(in: .nanoseconds(max(0, stop.totalNanoseconds))) { connection.stopPublishing() }
            loop.scheduleTask(in: .nanoseconds(max(0, (stop + drain).totalNanoseconds))) { connection.finish() }
        }
    }

    /// Waits until the commander has sent its end markers and they were acknowledged (or it was stopped).
    func waitForCommander() async {
        guard settings.commandsEnabled, let shard = shards.first else { return }
        try? await shard.eventLoop.flatSubmit { shard.value.commanderDoneFuture }.get()
    }

    // MARK: - Publishers

    /// Runs the publishers of `settings.publisherRange` to the end (count reached and acknowledged, or the
    /// duration over and the drain timeout passed), printing progress lines.
    func runPublishers(progress: @escaping @Sendable (String) -> Void) async {
        let context = self.context
        let range = settings.publisherRange
        let shardCount = shards.count
        let total = range.count
        let rampUp = settings.rampUp
        let start = NIODeadline.now()
        await onShardsFuture { shard in
            let slot = shard.index(in: shardCount)
            let mine = range.filter { ($0 - range.lowerBound) % shardCount == slot }
            shard.expectPublishers(mine.count)
            for index in mine {
                let topic = context.settings.topic(forClient: index)
                let connection = DeviceConnection(
                    index: index, clientId: context.settings.clientId(index), role: .publisher(topic: topic),
                    context: context, shard: shard)
                shard.connections.append(connection)
                shard.summary.clients += 1
                let offset = total > 1 ? rampUp.totalNanoseconds * Int64(index - range.lowerBound) / Int64(total) : 0
                if offset <= 0 {
                    connection.start()
                } else {
                    // On the shard's loop here (`onShardsFuture`), where the connection lives.
                    shard.eventLoop.assumeIsolated().scheduleTask(deadline: start + .nanoseconds(offset)) { connection.start() }
                }
            }
            return shard.eventLoop.makeSucceededVoidFuture()
        }

        let done = Task { await onShardsFuture { $0.publishersDoneFuture } }
        let ticker = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: settings.progressInterval)
                if Task.isCancelled { break }
                progress(await snapshot(expected: nil).progressLine())
            }
        }
        let limiter = Task {
            guard let timeout = settings.timeout else { return }
            try? await Task.sleep(for: timeout)
            guard !Task.isCancelled else { return }
            progress("device-sim: --timeout reached; stopping every device")
            _ = await onShards { shard in
                shard.connections.forEach { $0.finish() }
                shard.commanderConnection?.finish()
            }
        }
        defer { limiter.cancel() }
        if let duration = settings.duration {
            let stopper = Task {
                try? await Task.sleep(for: duration + rampUp)
                guard !Task.isCancelled else { return }
                _ = await onShards { shard in shard.connections.forEach { $0.stopPublishing() } }
                try? await Task.sleep(for: settings.drainTimeout)
                guard !Task.isCancelled else { return }
                _ = await onShards { shard in shard.connections.forEach { $0.finish() } }
            }
            await done.value
            stopper.cancel()
        } else {
            await done.value
        }
        ticker.cancel()
    }

    // MARK: - Results

    /// The summary so far over all shards. `expected` is what each subscriber should have received.
    func snapshot(expected: Int?, failoverMark: UInt64? = nil) async -> SimulatorSummary {
        let parts = await onShards { shard in
            (shard.snapshot(expected: expected, failoverMark: failoverMark), shard.firstPublishUptime, shard.lastCompletionUptime)
        }
        var summary = SimulatorSummary()
        summary.processes = 1
        var first: UInt64?
        var last: UInt64?
        for (part, partFirst, partLast) in parts {
            var part = part
            part.processes = 0
            summary.merge(part)
            if let partFirst { first = min(first ?? partFirst, partFirst) }
            if let partLast { last = max(last ?? partLast, partLast) }
        }
        if let first, let last, last > first { summary.publishSeconds = Double(last - first) / 1e9 }
        summary.elapsedSeconds = Double(Clock.uptimeNanoseconds() - startUptime) / 1e9
        return summary
    }

    /// Disconnects the subscribers (and anything left) and stops the event loops.
    func shutdown() async {
        _ = await onShards { shard in
            shard.subscriberConnections.forEach { $0.finish() }
            shard.connections.forEach { $0.finish() }
            shard.commanderConnection?.finish()
            shard.abandon()
        }
        try? await group.shutdownGracefully()
    }
}

extension FleetShard {
    /// This shard's position among the loops (stable: loops are numbered by the group's iteration order).
    func index(in count: Int) -> Int { slot % count }
}
