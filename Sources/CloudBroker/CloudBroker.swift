import Common
import Logging
import ServiceLifecycle

/// Composes a broker node's services. Shared by `main` and the tests.
enum CloudBroker {
    static func run(configuration: CloudBrokerConfiguration) async throws {
        let logger = Logger(label: "tributary.cloud-broker")
        let http = ObservabilityServer(address: configuration.httpListen, registry: Observability.registry, logger: logger) {
            "the MQTT broker core is not built yet (issue 6)"
        }
        let group = ServiceGroup(services: [http], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        logger.warning("cloud-broker core not implemented yet: serving only /metrics, /health, /ready")
        try await group.run()
    }
}
