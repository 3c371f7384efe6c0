import Logging
import ServiceLifecycle

/// Exponential reconnect backoff with jitter, for the uplink and the local broker source: the delay starts at
/// `initial`, doubles after each attempt up to `maximum`, and goes back to `initial` after a connection that
/// got as far as CONNACK. Each wait is jittered in [delay/2, delay] and ends early on graceful shutdown.
struct ReconnectBackoff {
    let initial: Duration
    let maximum: Duration
    private(set) var delay: Duration

    init(initial: Duration, maximum: Duration) {
        self.initial = initial
        self.maximum = maximum
        self.delay = initial
    }

    mutating func connected() { delay = initial }

    /// Logs `message` with the chosen delay under `key`, waits it (unless shutdown begins; `sleep` may also
    /// end it early), then doubles it.
    mutating func wait(
        logger: Logger, _ message: Logger.Message, key: String,
        sleep: @escaping @Sendable (Duration) async throws -> Void = { try await Task.sleep(for: $0) }
    ) async {
        let chosen = Self.jittered(delay)
        logger.info(message, metadata: [key: "\(chosen.milliseconds)"])
        try? await cancelWhenGracefulShutdown { try await sleep(chosen) }
        delay = min(delay * 2, maximum)
    }

    /// Full jitter in [d/2, d].
    static func jittered(_ duration: Duration) -> Duration {
        let milliseconds = max(1, duration.milliseconds)
        return .milliseconds(Int64.random(in: (milliseconds / 2)...milliseconds))
    }
}
