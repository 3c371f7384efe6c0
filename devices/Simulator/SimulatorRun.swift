import Common
import Foundation

/// One `device-sim run`: subscribers (in this process), publishers (here or in worker processes), the drain,
/// and the summary with the subscribers' accounting against what the publishers had acknowledged.
struct SimulatorRun: Sendable {
    var settings: SimulatorSettings
    var isWorker: Bool
    var workerIndex: Int

    /// `workerArguments`: when set, the publishers run in `settings.processes` worker processes started with
    /// these arguments.
    func run(workerArguments: [String]?) async throws(SimulatorError) -> SimulatorSummary {
        let fleet = try Fleet(settings: settings)
        let label = isWorker ? "device-sim[\(workerIndex)]" : "device-sim"
        let progress: @Sendable (String) -> Void = { line in
            let text = label == "device-sim" ? line : line.replacingOccurrences(of: "device-sim", with: label)
            FileHandle.standardError.write(Data((text + "\n").utf8))
        }
        await fleet.startSubscribers()
        if !isWorker { fleet.startCommander(devicesHere: workerArguments == nil) }
        var publishers: SimulatorSummary?
        if let workerArguments {
            do {
                publishers = try await WorkerProcesses.run(arguments: workerArguments, count: settings.processes)
            } catch {
                await fleet.shutdown()
                throw error
            }
        } else {
            await fleet.runPublishers(progress: progress)
        }
        if !isWorker { await fleet.waitForCommander() }
        let mark: UInt64?
        do {
            mark = try settings.failoverMarkFile.map(Self.readFailoverMark)
        } catch {
            await fleet.shutdown()
            throw error
        }
        var summary = await fleet.snapshot(expected: nil, failoverMark: mark)
        if let publishers {
            summary.processes = 0
            summary.merge(publishers)
        }
        let expected = settings.qos == .atMostOnce ? summary.sent : summary.acked
        if !settings.subscribeFilters.isEmpty {
            await fleet.drainSubscribers(expected: expected)
            let subscribers = await fleet.snapshot(expected: expected)
            summary.received = subscribers.received
            summary.sequence = subscribers.sequence
            summary.endToEndLatency = subscribers.endToEndLatency
            summary.subscribers = subscribers.subscribers
        }
        await fleet.shutdown()
        summary.elapsedSeconds = Double(Clock.uptimeNanoseconds() - fleet.startUptime) / 1e9
        return summary
    }

    /// The failover instant in the mark file: Unix seconds with a fraction (`date +%s.%N`), in nanoseconds.
    static func readFailoverMark(_ path: String) throws(SimulatorError) -> UInt64 {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw SimulatorError(.configuration, "--failover-mark: cannot read '\(path)' (write the failover instant into it during the run)")
        }
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        let parts = trimmed.split(separator: ".", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), let seconds = UInt64(parts[0]), parts.count == 1 || parts[1].allSatisfy(\.isNumber) else {
            throw SimulatorError(.configuration, "--failover-mark: '\(path)' holds '\(trimmed)', expected Unix seconds like 1764250000.123456789")
        }
        var nanoseconds: UInt64 = 0
        if parts.count == 2 {
            let digits = String(parts[1].prefix(9)).padding(toLength: 9, withPad: "0", startingAt: 0)
            nanoseconds = UInt64(digits) ?? 0
        }
        return seconds * 1_000_000_000 + nanoseconds
    }

    /// Why `--check` fails, or nil.
    static func checkFailure(_ summary: SimulatorSummary, settings: SimulatorSettings) -> String? {
        if let count = settings.count, summary.acked < count * settings.clients {
            return "\(summary.acked) of \(count * settings.clients) messages acknowledged"
        }
        if !settings.subscribeFilters.isEmpty {
            if summary.sequence.lost > 0 && settings.qos != .atMostOnce { return "\(summary.sequence.lost) messages lost" }
            if summary.sequence.duplicates > 0 && settings.qos == .exactlyOnce {
                return "\(summary.sequence.duplicates) duplicates at QoS 2"
            }
        }
        if settings.commandsEnabled {
            if summary.commandsLost > 0 && settings.qos != .atMostOnce { return "\(summary.commandsLost) commands lost" }
            if summary.commands.duplicates > 0 && settings.qos == .exactlyOnce {
                return "\(summary.commands.duplicates) duplicate commands at QoS 2"
            }
        }
        if settings.failoverMarkFile != nil {
            let failover = summary.failover
            if failover.back < failover.clients { return "\(failover.clients - failover.back) devices did not come back after the failover" }
            if !settings.cleanSession && failover.sessionPresent < failover.back {
                return "\(failover.back - failover.sessionPresent) devices came back without their session"
            }
        }
        return nil
    }
}
