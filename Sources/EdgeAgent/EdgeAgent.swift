import Common
import Logging
import ServiceLifecycle

/// Composes the agent's services. Shared by `main` and the tests.
enum EdgeAgent {
    static func run(configuration: EdgeAgentConfiguration) async throws {
        let logger = Logger(label: "tributary.edge-agent")
        let http = ObservabilityServer(address: configuration.httpListen, registry: Observability.registry, logger: logger) {
            "the edge agent is not built yet (issue 5)"
        }
        let group = ServiceGroup(services: [http], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        logger.warning("edge-agent not implemented yet: serving only /metrics, /health, /ready")
        try await group.run()
    }
}
