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
        var summary = await fleet.snapshot(expected: nil)
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
        return nil
    }
}
