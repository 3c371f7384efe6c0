/// The simulator's one error type. `configuration` problems exit 2 (bad input), the rest exit 1.
struct SimulatorError: Error, Sendable, CustomStringConvertible {
    enum Code: Sendable, Hashable {
        /// Bad settings or files: nothing was run.
        case configuration
        /// A worker process failed or printed no summary.
        case worker
        /// Kafka could not be read.
        case kafka
        /// The run completed but the accounting failed a check (`verify-kafka`).
        case verification
    }

    var code: Code
    var message: String

    init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    var description: String { message }
}
