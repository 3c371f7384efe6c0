import Common
import DiskBuffer
import Logging
import NIOCore

extension Uplink {
    /// The forwarding loop's state for one connection: which buffer sequences are outstanding (given to the
    /// client, not finished), where reading continues, and the window.
    ///
    /// Confined to the connection's event loop: the client handler's `connected` and `acknowledged` events
    /// reach it there directly (`EventLoop.execute` from the loop itself: no wake-up), and the buffer's
    /// `whenRecords` wake-up, the pacing timer and the lane gate hop to that loop. So a forwarded record
    /// costs no task switch: the records become readable on the syncer thread, one hop brings the fill to
    /// the loop, which writes the PUBLISHes itself; PUBCOMP acknowledges the buffer on the loop too.
    final class Forwarder: @unchecked Sendable {
        let uplink: Uplink
        let eventLoop: any EventLoop
        /// The session the connection started from (its outgoing entries are resent first).
        let session: MQTTClientSession
        /// Set by the channel initializer, on the loop, before any event.
        var channel: (any Channel)?
        /// Outstanding sequences in increasing order (restored ones first, then new ones).
        var outstanding: [UInt64] = []
        var nextToRead: UInt64 = 1
        var window = 0
        /// The pending `whenRecords` wake-up, if any.
        var waiter: Int?
        var stopped = false
        var acknowledgedSinceTick = 0
        var lastTick = ContinuousClock.now
        /// Replay pacing (`upstream.max_bytes_per_second`): a token bucket of payload bytes, one second deep.
        var tokens: Double = 0
        var lastRefill = ContinuousClock.now
        var pacingWake: Scheduled<Void>?
        /// This lane has had a backlog (window full, records unread) since its in-flight records last drained:
        /// it stays busy for the lane gate until they are acknowledged, so the tail of a backlog is not
        /// overtaken by a lower lane's.
        var drainingBacklog = false

        init(uplink: Uplink, eventLoop: any EventLoop, session: MQTTClientSession) {
            self.uplink = uplink
            self.eventLoop = eventLoop
            self.session = session
        }

        func connected(window: Int) {
            eventLoop.assertInEventLoop()
            self.window = window
            outstanding = session.outgoing.map(\.tag).sorted()
            let snapshot = uplink.store.snapshot
            nextToRead = max(snapshot.highestStoredSequence, uplink.buffer.acknowledgedThrough, outstanding.last ?? 0) + 1
            AgentMetrics.uplinkInflight.record(outstanding.count)
            fill()
        }

        func acknowledged(_ tag: UInt64, reasonCode: MQTTReasonCode) {
            eventLoop.assertInEventLoop()
            guard let index = outstanding.firstIndex(of: tag) else { return }
            outstanding.remove(at: index)
            if reasonCode.isFailure {
                AgentMetrics.refusedUpstream.increment()
                uplink.logger.warning("Upstream refused a record; it is dropped", metadata: [
                    "buffer.sequence": "\(tag)", "mqtt.reason_code": "\(reasonCode)",
                ])
            } else {
                AgentMetrics.acknowledged.increment()
            }
            acknowledgedSinceTick += 1
            let through = (outstanding.first ?? nextToRead) - 1
            do {
                try uplink.buffer.acknowledge(through: through)
            } catch {
                uplink.logger.error("Acknowledging the buffer failed", metadata: ["buffer.sequence": "\(through)", "error.message": "\(error)"])
            }
            AgentMetrics.uplinkInflight.record(outstanding.count)
            // Refill once a quarter of the window is free: one buffer read per batch of acknowledgements, not one each.
            if outstanding.count <= window - max(1, window / 4) { fill() }
        }

        /// The buffer has records after the sequence waited for by `waiter` `id`.
        func recordsAvailable(waiter id: Int) {
            eventLoop.assertInEventLoop()
            guard waiter == id else { return }  // stale: cancelled, or a newer wait is pending
            waiter = nil
            fill()
        }

        func stop() {
            eventLoop.assertInEventLoop()
            stopped = true
            drainingBacklog = false
            uplink.gate?.setBusy(uplink.settings.priority, false)
            if let waiter { uplink.buffer.cancelWait(waiter) }
            waiter = nil
            pacingWake?.cancel()
            pacingWake = nil
        }

        /// Whether `bytes` may go now under the bytes/s cap; if not, a wake-up is scheduled.
        func admit(_ bytes: Int) -> Bool {
            guard let rate = uplink.settings.maxBytesPerSecond, rate > 0 else { return true }
            let now = ContinuousClock.now
            tokens = min(Double(rate), tokens + Double((now - lastRefill).nanoseconds) / 1e9 * Double(rate))
            lastRefill = now
            // A record larger than the bucket goes when the bucket is full.
            let needed = min(Double(bytes), Double(rate))
            if tokens >= needed {
                tokens -= Double(bytes)
                return true
            }
            if pacingWake == nil {
                let delay = TimeAmount.nanoseconds(Int64((needed - tokens) / Double(rate) * 1e9) + 1_000_000)
                pacingWake = eventLoop.scheduleTask(in: delay) { [self] in  // the pacing timer itself
                    pacingWake = nil
                    fill()
                }
            }
            return false
        }

        /// Hands records to the client while the window has room; waits for the buffer otherwise.
        func fill() {
            guard !stopped, window > 0, let channel else { return }
            if let gate = uplink.gate {
                guard gate.mayRead(uplink.settings.priority, wake: { [self] in eventLoop.execute { self.fill() } }) else { return }
            }
            defer { updateBusy() }
            var wrote = false
            var paced = false
            while outstanding.count < window && !paced {
                let records: [DiskBuffer.Record]
                do {
                    records = try uplink.buffer.read(
                        from: nextToRead, maxRecords: window - outstanding.count, maxBytes: uplink.settings.maxBatchBytes)
                } catch {
                    uplink.logger.error("Reading the buffer failed", metadata: ["buffer.sequence": "\(nextToRead)", "error.message": "\(error)"])
                    break
                }
                guard !records.isEmpty else {
                    if waiter == nil {
                        // The wake-up may run at once (records became readable meanwhile): it goes through
                        // the loop's queue, after this fill has set `waiter`.
                        let registered = WaiterID()
                        let id = uplink.buffer.whenRecords(after: nextToRead - 1) { [self, eventLoop] in
                            eventLoop.execute {
                                if let id = registered.value { self.recordsAvailable(waiter: id) } else { self.fill() }
                            }
                        }
                        registered.value = id
                        waiter = id
                    }
                    break
                }
                for record in records {
                    if !admit(record.body.count) {
                        paced = true
                        break
                    }
                    nextToRead = record.sequence + 1
                    let publish: MQTTPublish
                    switch uplink.outgoing(for: record) {
                    case .publish(let value):
                        publish = value
                    case .undecodable:
                        AgentMetrics.undecodable.increment()
                        uplink.logger.error("Skipping an undecodable buffer record", metadata: ["buffer.sequence": "\(record.sequence)"])
                        continue
                    case .expired:
                        AgentMetrics.expired.increment()
                        uplink.logger.debug("Dropping an expired record", metadata: ["buffer.sequence": "\(record.sequence)"])
                        continue
                    }
                    outstanding.append(record.sequence)
                    AgentMetrics.forwarded.increment()
                    AgentMetrics.forwardedBytes.increment(by: publish.payload.readableBytes)
                    channel.write(MQTTClientConnection.Command.publish(publish, tag: record.sequence), promise: nil)
                    wrote = true
                }
            }
            if wrote { channel.flush() }
            AgentMetrics.uplinkInflight.record(outstanding.count)
        }

        /// Tells the lane gate whether this lane has a backlog it cannot send yet (window full or paced, records
        /// unread).
        func updateBusy() {
            guard let gate = uplink.gate else { return }
            let blocked = outstanding.count >= window || pacingWake != nil
            let backlog = blocked && uplink.buffer.stats.lastSequence >= nextToRead
            if backlog {
                drainingBacklog = true
            } else if outstanding.isEmpty {
                drainingBacklog = false
            }
            gate.setBusy(uplink.settings.priority, backlog || drainingBacklog)
        }

        /// The periodic progress line: records left, rate, ETA.
        func reportProgress() {
            eventLoop.assertInEventLoop()
            let now = ContinuousClock.now
            let seconds = max(0.001, Double((now - lastTick).milliseconds) / 1000)
            let rate = Double(acknowledgedSinceTick) / seconds
            lastTick = now
            acknowledgedSinceTick = 0
            AgentMetrics.replayRate.record(rate)
            Uplink.recordBufferGauges(uplink.gaugeBuffers)
            let stats = uplink.buffer.stats
            guard stats.records > 0 else { return }
            let eta = rate > 0 ? "\(Int(Double(stats.records) / rate))s" : "unknown"
            uplink.logger.info("Uplink progress", metadata: [
                "buffer.records": "\(stats.records)", "uplink.rate_per_second": "\(Int(rate))",
                "uplink.eta": "\(eta)", "uplink.inflight": "\(outstanding.count)", "uplink.priority": "\(uplink.settings.priority)",
            ])
        }
    }
}

/// The id of a `whenRecords` wait, set and read on the forwarder's event loop only (the wake-up closure
/// only carries it there).
private final class WaiterID: @unchecked Sendable {
    var value: Int?
}
