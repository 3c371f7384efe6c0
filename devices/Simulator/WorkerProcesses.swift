import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Fleets larger than one process's open-file limit run as several processes of this same executable, each
/// with a slice of the clients; the parent collects their summaries (one JSON line each) and merges them.
enum WorkerProcesses {
    /// Marks the line a worker prints with its raw summary.
    static let summaryPrefix = "device-sim worker-summary "

    /// In a worker: exit when the parent goes away (a killed `device-sim` leaves no devices behind). The
    /// parent holds the write end of the worker's standard input; end of file means the parent is gone.
    static func exitWithParent() {
        Thread.detachNewThread {
            _ = FileHandle.standardInput.readDataToEndOfFile()
            exit(1)
        }
    }

    /// Raises the soft open-file limit to the hard limit; returns the limit now in force.
    @discardableResult
    static func raiseOpenFileLimit() -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 1024 }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
        }
        return Int(clamping: limit.rlim_cur)
    }

    /// How many processes `clients` connections need under `fileLimit` (a margin stays for everything else).
    static func processesNeeded(clients: Int, extraConnections: Int, fileLimit: Int) -> Int {
        let perProcess = max(1, fileLimit - 256 - extraConnections)
        return max(1, (clients + perProcess - 1) / perProcess)
    }

    /// The command line for worker `index` of `count`: the parent's arguments without the options the parent
    /// keeps for itself (processes, subscribers, JSON), plus the worker's slice.
    static func workerArguments(_ arguments: [String], index: Int, count: Int) -> [String] {
        let dropWithValue: Set<String> = ["--processes", "--subscribe"]
        let dropFlags: Set<String> = ["--json", "--check"]
        var result: [String] = []
        var skipNext = false
        for argument in arguments {
            if skipNext {
                skipNext = false
                continue
            }
            if dropWithValue.contains(argument) {
                skipNext = true
                continue
            }
            if dropFlags.contains(argument) || dropWithValue.contains(where: { argument.hasPrefix($0 + "=") }) { continue }
            result.append(argument)
        }
        return result + ["--worker-index", String(index), "--worker-count", String(count)]
    }

    /// Starts the workers, waits for all of them and returns their merged summary.
    static func run(arguments: [String], count: Int) async throws(SimulatorError) -> SimulatorSummary {
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var running: [(Process, Pipe)] = []
        // Kept open until this process exits: the workers' standard input (see `exitWithParent`).
        var lifelines: [Pipe] = []
        defer { withExtendedLifetime(lifelines) {} }
        for index in 0..<count {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: executable)
            process.arguments = workerArguments(arguments, index: index, count: count)
            let pipe = Pipe()
            process.standardOutput = pipe
            process.standardError = FileHandle.standardError
            let lifeline = Pipe()
            process.standardInput = lifeline
            lifelines.append(lifeline)
            do {
                try process.run()
            } catch {
                running.forEach { $0.0.terminate() }
                throw SimulatorError(.worker, "cannot start worker \(index): \(error)")
            }
            running.append((process, pipe))
        }
        var merged: SimulatorSummary?
        var failures: [String] = []
        for (index, (process, pipe)) in running.enumerated() {
            let handle = pipe.fileHandleForReading
            let output = await Task.detached { handle.readDataToEndOfFile() }.value
            process.waitUntilExit()
            let text = String(decoding: output, as: UTF8.self)
            let line = text.split(separator: "\n").last { $0.hasPrefix(summaryPrefix) }
            guard let line, let summary = SimulatorSummary.fromWorkerJSON(line.dropFirst(summaryPrefix.count)) else {
                failures.append("worker \(index) exited \(process.terminationStatus) without a summary")
                continue
            }
            if merged == nil { merged = summary } else { merged!.merge(summary) }
        }
        guard failures.isEmpty, let merged else {
            throw SimulatorError(.worker, failures.joined(separator: "; "))
        }
        return merged
    }
}
