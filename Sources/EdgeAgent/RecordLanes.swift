import Common
import DiskBuffer
import Synchronization

/// A route: records whose topic matches `filter` go to the lane of `priority` and upstream with `qos`.
struct Route: Sendable, Equatable {
    var filter: MQTTTopicFilter
    var priority: Int
    /// Upstream QoS of the route's records (nil: `upstream.qos`).
    var qos: MQTTQoS?

    static let priorities = 0...9

    /// `FILTER [priority=N] [qos=1|2]`: the options are the trailing `key=value` words, the filter the rest.
    init(parsing text: String) throws(ConfigError) {
        var words = text.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        var priority = 0
        var qos: MQTTQoS? = nil
        while let last = words.last, let equals = last.firstIndex(of: "="), words.count > 1 {
            let key = last[..<equals]
            let value = last[last.index(after: equals)...]
            switch key {
            case "priority":
                guard let number = Int(value), Self.priorities.contains(number) else {
                    throw ConfigError(key: "routes", "priority must be 0...9 in '\(text)'")
                }
                priority = number
            case "qos":
                guard value == "1" || value == "2" else { throw ConfigError(key: "routes", "qos must be 1 or 2 in '\(text)'") }
                qos = value == "2" ? .exactlyOnce : .atLeastOnce
            default:
                throw ConfigError(key: "routes", "unknown option '\(key)' in '\(text)' (priority=N, qos=1|2)")
            }
            words.removeLast()
        }
        let filterText = words.joined(separator: " ")
        do {
            filter = try MQTTTopicFilter(filterText)
        } catch {
            throw ConfigError(key: "routes", "'\(filterText)' is not a valid topic filter: \(error.message)")
        }
        self.priority = priority
        self.qos = qos
    }

    init(filter: MQTTTopicFilter, priority: Int, qos: MQTTQoS? = nil) {
        self.filter = filter
        self.priority = priority
        self.qos = qos
    }

    /// The first route matching `topic` (routes are tried in configuration order), if any.
    static func first(_ routes: [Route], matching topic: String) -> Route? {
        routes.first { $0.filter.matches(topic) }
    }

    /// The lanes the routes need: priority 0 (records no route takes) and every route priority, highest first.
    static func lanePriorities(_ routes: [Route]) -> [Int] {
        Set(routes.map(\.priority) + [0]).sorted(by: >)
    }
}

/// Where records go: one lane per priority, each with its own disk buffer and device session file (and
/// upstream its own uplink), so that a high-priority record never waits behind a low-priority backlog.
/// A route sends a topic to its lane; a topic no route takes goes to priority 0. Within a lane records keep
/// their arrival order; across lanes there is no order.
///
/// QoS 2 receive state of a device (or the local broker source) spans the lanes: each id is recorded in the
/// session file of the lane its record went to; `open`, `discard`, `session` and `remove` look at all.
final class RecordLanes: Sendable {
    struct Lane: Sendable {
        let priority: Int
        let sink: any RecordSink
        let sessions: DeviceSessionStore
    }

    /// Highest priority first; the priority 0 lane is always there.
    let lanes: [Lane]
    let routes: [Route]
    private let defaultLane: Int

    init(lanes: [Lane], routes: [Route]) {
        precondition(lanes.contains { $0.priority == 0 }, "the priority 0 lane is required")
        self.lanes = lanes
        self.routes = routes
        self.defaultLane = lanes.firstIndex { $0.priority == 0 } ?? 0
    }

    /// One lane, no routes.
    convenience init(sink: any RecordSink, sessions: DeviceSessionStore) {
        self.init(lanes: [Lane(priority: 0, sink: sink, sessions: sessions)], routes: [])
    }

    func lane(for topic: String) -> Lane {
        guard let route = Route.first(routes, matching: topic) else { return lanes[defaultLane] }
        return lanes.first { $0.priority == route.priority } ?? lanes[defaultLane]
    }

    /// Starts (or resumes) a persistent session; returns whether one existed in any lane.
    func open(_ clientId: String) -> Bool {
        let existed = lanes.contains { $0.sessions.session(clientId) != nil }
        _ = lanes[defaultLane].sessions.open(clientId)
        return existed
    }

    func discard(_ clientId: String) {
        for lane in lanes { lane.sessions.discard(clientId) }
    }

    /// The ids awaiting PUBREL in every lane; nil if no lane has a session for `clientId`.
    func session(_ clientId: String) -> Set<UInt16>? {
        var ids: Set<UInt16>? = nil
        for lane in lanes {
            if let some = lane.sessions.session(clientId) { ids = (ids ?? []).union(some) }
        }
        return ids
    }

    /// Forgets the ids (PUBREL handled) durably, in whichever lane holds each.
    func remove(_ packetIds: [UInt16], for clientId: String) async throws {
        for lane in lanes {
            guard let held = lane.sessions.session(clientId) else { continue }
            let here = packetIds.filter { held.contains($0) }
            if !here.isEmpty { try await lane.sessions.remove(here, for: clientId) }
        }
    }
}

/// Strict priority between the lanes' uplinks: a lane reads no new record from its buffer while a higher
/// lane is *busy*, i.e. connected with its window full and records still unread (a backlog of its own) and
/// then until that backlog's last records in flight are acknowledged, or attempting to connect with records
/// waiting (until the attempt fails).
/// Records already in flight finish. When a busy lane stops being busy, the lanes waiting on it are woken.
/// A higher lane that only carries live traffic is never busy for long, so lower lanes go on between its
/// records; a higher lane whose traffic alone fills the link starves the lower ones (that is strict priority).
///
/// The gate also ends the lanes' reconnect backoffs together: when one lane has connected, the upstream is
/// reachable again, and the lanes waiting out a backoff retry at once (`sleepBeforeReconnect`). Otherwise a
/// lower lane whose backoff happened to end first would send its backlog until the higher lane's own
/// backoff ended (its attempt only then makes it busy).
final class LaneGate: Sendable {
    private struct State {
        var busy: Set<Int> = []
        var waiting: [Int: @Sendable () -> Void] = [:]
        var reconnecting: [Int: CheckedContinuation<Void, Never>] = [:]
    }

    private let state = Mutex(State())

    /// Whether the lane of `priority` may read; if not, `wake` runs once a higher lane stops being busy.
    func mayRead(_ priority: Int, wake: @escaping @Sendable () -> Void) -> Bool {
        state.withLock { state in
            guard state.busy.contains(where: { $0 > priority }) else {
                state.waiting[priority] = nil
                return true
            }
            state.waiting[priority] = wake
            return false
        }
    }

    /// Waits `duration` before the lane of `priority` reconnects, or less if another lane connects meanwhile
    /// (`connected`). Returns at once when the task is cancelled.
    func sleepBeforeReconnect(_ priority: Int, for duration: Duration) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { try? await Task.sleep(for: duration) }
            group.addTask { await self.waitForAnotherLane(priority) }
            await group.next()
            group.cancelAll()
        }
    }

    /// Whether the lane of `priority` is in `sleepBeforeReconnect` now (tests wait for it before `connected`).
    func isWaitingToReconnect(_ priority: Int) -> Bool {
        state.withLock { $0.reconnecting[priority] != nil }
    }

    /// The lane of `priority` has connected: the lanes waiting to reconnect retry now.
    func connected(_ priority: Int) {
        let waiters = state.withLock { state in
            let waiters = state.reconnecting.filter { $0.key != priority }
            for key in waiters.keys { state.reconnecting[key] = nil }
            return Array(waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    private func waitForAnotherLane(_ priority: Int) async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let cancelled = state.withLock { state -> Bool in
                    if Task.isCancelled { return true }
                    state.reconnecting[priority]?.resume()  // never two waits of one lane; end a stale one
                    state.reconnecting[priority] = continuation
                    return false
                }
                if cancelled { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { $0.reconnecting.removeValue(forKey: priority) }
            waiter?.resume()
        }
    }

    func setBusy(_ priority: Int, _ busy: Bool) {
        let wakes = state.withLock { state -> [@Sendable () -> Void] in
            if busy {
                state.busy.insert(priority)
                return []
            }
            guard state.busy.remove(priority) != nil else { return [] }
            let lower = state.waiting.filter { $0.key < priority }
            for key in lower.keys { state.waiting[key] = nil }
            return Array(lower.values)
        }
        for wake in wakes { wake() }
    }
}
