import Logging
import Metrics
import Prometheus

/// Process-wide logging and metrics set-up, done once by each executable's `main` (never by libraries or
/// tests that run several components in one process).
public enum Observability {
    /// The registry behind `/metrics` for this process.
    public static let registry = PrometheusCollectorRegistry()

    /// Logs go to standard error (journald captures them under systemd) at `level`;
    /// metrics go to the Prometheus registry served on `/metrics`.
    public static func bootstrap(logLevel: Logger.Level) {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = logLevel
            return handler
        }
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = [
            .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2),
            .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
            .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2), .seconds(5), .seconds(10),
        ]
        MetricsSystem.bootstrap(factory)
    }
}
