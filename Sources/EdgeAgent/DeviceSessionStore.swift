import DiskBuffer
import NIOPosix
import Synchronization

/// Persistent device sessions (clean start 0): per client id, the QoS 2 packet ids whose PUBLISH is stored
/// in the buffer and whose PUBREL has not arrived, each with its record's buffer sequence. Kept in
/// `<data dir>/device-sessions`, so that a device resending PUBLISH(DUP) after an agent restart gets PUBREC
/// without the message being stored twice, and its PUBREL gets PUBCOMP.
///
/// Order of steps for a device QoS 2 PUBLISH: append to the buffer (durable) → record the id here
/// (durable) → PUBREC. For PUBREL: remove the id (durable) → PUBCOMP. Concurrent updates share one file
/// write (group commit).
///
/// A crash between the append and the id's write would lose the id and let a DUP resend be stored twice.
/// So every store of a persistent QoS 2 publish takes a token (`beginStore`) holding the buffer's last
/// sequence before its append; the file records "covered through": every buffer record at or below it that
/// needs an id has its id in the file. At start-up `recover(from:)` reads the buffer after that point
/// and puts back the ids of persistent QoS 2 records (the record carries device and packet id).
/// A record after the covered point whose PUBREL was already handled must not get its id back (the device
/// may reuse the id for a new message, which would then be taken for a duplicate and lost): removing an id
/// records its record's sequence as *released* in the same durable write, and recovery skips released
/// records. Released sequences at or below the covered point are dropped at the next write.
///
/// File, version 2: `"TRBD" | version u32 = 2 | covered-through u64 | session count u32 | per session:
/// (client id, id count u32, id count × (id u16, sequence u64)) | released count u32 | released × sequence
/// u64` then crc32c. Version 1 (ids without sequences, no released list) is still read.
final class DeviceSessionStore: Sendable {
    /// Per client id: packet id → sequence of its buffer record (0: unknown, read from a version 1 file).
    typealias Sessions = [String: [UInt16: UInt64]]

    struct State: Sendable {
        var sessions: Sessions = [:]
        /// Sequences of persistent QoS 2 records after `coveredThrough` whose PUBREL was handled.
        var released: Set<UInt64> = []
        var generation: UInt64 = 0
        var writtenGeneration: UInt64 = 0
        var writing = false
        var waiters: [(UInt64, CheckedContinuation<Void, any Error>)] = []
        var coveredThrough: UInt64 = 0
        var activeStores: [Int: UInt64] = [:]
        var nextToken = 0
        var highestStored: UInt64 = 0

        var effectiveCoveredThrough: UInt64 {
            activeStores.values.min() ?? max(coveredThrough, highestStored)
        }
    }

    static let magic = "TRBD"
    let path: String
    private let state: Mutex<State>
    private let threadPool: NIOThreadPool

    init(
        path: String, sessions: Sessions, released: Set<UInt64> = [], coveredThrough: UInt64 = 0,
        threadPool: NIOThreadPool = .singleton
    ) {
        self.path = path
        self.state = Mutex(State(sessions: sessions, released: released, coveredThrough: coveredThrough))
        self.threadPool = threadPool
    }

    static func load(path: String) throws -> DeviceSessionStore {
        guard let bytes = try AtomicFile.read(path) else { return DeviceSessionStore(path: path, sessions: [:]) }
        guard let decoded = decode(bytes) else {
            throw AgentError(.process, "\(path) is corrupt (bad checksum or format); delete it to drop device QoS 2 state")
        }
        return DeviceSessionStore(
            path: path, sessions: decoded.sessions, released: decoded.released, coveredThrough: decoded.coveredThrough)
    }

    var coveredThrough: UInt64 { state.withLock { $0.coveredThrough } }

    /// Before appending a persistent QoS 2 publish: `lastSequence` is the buffer's last sequence now.
    func beginStore(lastSequence: UInt64) -> Int {
        state.withLock { state in
            state.nextToken += 1
            state.activeStores[state.nextToken] = lastSequence
            return state.nextToken
        }
    }

    /// After the id was inserted (or the append failed). `sequence` is the record's, if stored.
    func endStore(_ token: Int, sequence: UInt64?) {
        state.withLock { state in
            state.activeStores[token] = nil
            if let sequence { state.highestStored = max(state.highestStored, sequence) }
        }
    }

    /// Puts back ids of persistent QoS 2 records appended after the covered point whose PUBREL was not
    /// handled (start-up, before devices connect). Returns how many ids were recovered.
    func recover(from records: [(sequence: UInt64, record: AgentRecord)], lastSequence: UInt64) async throws -> Int {
        var recovered = 0
        state.withLock { state in
            for (sequence, record) in records
            where record.qos == .exactlyOnce && record.persistentSession && record.devicePacketId != 0
                && !state.released.contains(sequence)
            {
                if state.sessions[record.sessionKey, default: [:]].updateValue(sequence, forKey: record.devicePacketId) == nil {
                    recovered += 1
                }
            }
            state.highestStored = max(state.highestStored, lastSequence)
        }
        try await update { _ in }
        return recovered
    }

    /// The ids awaiting PUBREL for `clientId`, nil if it has no persistent session.
    func session(_ clientId: String) -> Set<UInt16>? {
        state.withLock { $0.sessions[clientId].map { Set($0.keys) } }
    }

    /// Sequences recorded as released after the covered point (tests and diagnostics).
    var released: Set<UInt64> { state.withLock { $0.released } }

    /// Starts (or resumes) a persistent session; returns whether one existed (CONNACK session present).
    func open(_ clientId: String) -> Bool {
        state.withLock { state in
            if state.sessions[clientId] != nil { return true }
            state.sessions[clientId] = [:]
            state.generation += 1
            return false
        }
    }

    /// Forgets a session (clean start 1). Durable with the next write.
    func discard(_ clientId: String) {
        state.withLock { state in
            if state.sessions.removeValue(forKey: clientId) != nil { state.generation += 1 }
        }
    }

    /// Records `packetId` (stored as buffer record `sequence`) as awaiting PUBREL, durably.
    func insert(_ packetId: UInt16, sequence: UInt64, for clientId: String) async throws {
        try await insert([(packetId, sequence)], for: clientId)
    }

    /// Records several (packet id, sequence) pairs in one durable write.
    func insert(_ ids: [(UInt16, UInt64)], for clientId: String) async throws {
        try await update { state in
            for (packetId, sequence) in ids { state.sessions[clientId, default: [:]][packetId] = sequence }
        }
    }

    /// Forgets `packetId` (PUBREL handled) and records its record as released, durably.
    func remove(_ packetId: UInt16, for clientId: String) async throws {
        try await remove([packetId], for: clientId)
    }

    /// Forgets several ids in one durable write.
    func remove(_ packetIds: [UInt16], for clientId: String) async throws {
        try await update { state in
            for packetId in packetIds {
                guard let sequence = state.sessions[clientId]?.removeValue(forKey: packetId) else { continue }
                if sequence > state.coveredThrough { state.released.insert(sequence) }
            }
        }
    }

    /// Applies `change` and returns once a file containing it is durable.
    private func update(_ change: (inout State) -> Void) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let startWriter = state.withLock { state -> Bool in
                change(&state)
                state.generation += 1
                state.waiters.append((state.generation, continuation))
                guard !state.writing else { return false }
                state.writing = true
                return true
            }
            if startWriter { threadPool.submit { _ in self.writeLoop() } }
        }
    }

    /// Writes snapshots until every change is on disk; wakes the waiters each write covers.
    private func writeLoop() {
        while true {
            let (bytes, generation) = state.withLock { state in
                let covered = state.effectiveCoveredThrough
                state.coveredThrough = covered
                state.released = state.released.filter { $0 > covered }
                return (Self.encode(state.sessions, released: state.released, coveredThrough: covered), state.generation)
            }
            var failure: (any Error)? = nil
            do { try AtomicFile.write(bytes, to: path) } catch { failure = error }
            let (ready, more) = state.withLock { state -> ([CheckedContinuation<Void, any Error>], Bool) in
                if failure == nil { state.writtenGeneration = generation }
                let ready = state.waiters.filter { failure != nil || $0.0 <= generation }.map(\.1)
                state.waiters.removeAll { failure != nil || $0.0 <= generation }
                let more = !state.waiters.isEmpty
                if !more { state.writing = false }
                return (ready, more)
            }
            for continuation in ready {
                if let failure { continuation.resume(throwing: failure) } else { continuation.resume() }
            }
            if !more { return }
        }
    }

    static func encode(_ sessions: Sessions, released: Set<UInt64>, coveredThrough: UInt64) -> [UInt8] {
        var writer = StateFileWriter(magic: magic, version: 2)
        writer.put(coveredThrough)
        writer.put(UInt32(sessions.count))
        for (clientId, ids) in sessions.sorted(by: { $0.key < $1.key }) {
            writer.put(clientId)
            writer.put(UInt32(ids.count))
            for (id, sequence) in ids.sorted(by: { $0.key < $1.key }) {
                writer.put(id)
                writer.put(sequence)
            }
        }
        writer.put(UInt32(released.count))
        for sequence in released.sorted() { writer.put(sequence) }
        return writer.finish()
    }

    static func decode(_ bytes: [UInt8]) -> (coveredThrough: UInt64, sessions: Sessions, released: Set<UInt64>)? {
        guard var reader = StateFileReader(bytes, magic: magic, versions: 1...2), let covered = reader.get(UInt64.self),
            let count = reader.get(UInt32.self)
        else { return nil }
        var sessions: Sessions = [:]
        for _ in 0..<count {
            guard let clientId = reader.getString(), let idCount = reader.get(UInt32.self) else { return nil }
            var ids: [UInt16: UInt64] = [:]
            for _ in 0..<idCount {
                guard let id = reader.get(UInt16.self) else { return nil }
                if reader.version == 1 {
                    ids[id] = 0
                } else {
                    guard let sequence = reader.get(UInt64.self) else { return nil }
                    ids[id] = sequence
                }
            }
            sessions[clientId] = ids
        }
        var released = Set<UInt64>()
        if reader.version >= 2 {
            guard let releasedCount = reader.get(UInt32.self) else { return nil }
            for _ in 0..<releasedCount {
                guard let sequence = reader.get(UInt64.self) else { return nil }
                released.insert(sequence)
            }
        }
        return reader.isAtEnd ? (covered, sessions, released) : nil
    }
}
