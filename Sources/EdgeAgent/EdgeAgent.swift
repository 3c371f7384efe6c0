import Common
import DiskBuffer
import Logging
import NIOCore
import NIOSSL
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#endif

/// Composes the agent's services (device listener, uplink, HTTP endpoints, systemd readiness and watchdog)
/// in one ServiceGroup. Shared by `main` and the tests.
enum EdgeAgent {
    static func run(configuration: EdgeAgentConfiguration) async throws {
        let logger = Logger(label: "tributary.edge-agent")
        AgentMetrics.registerAll()
        // One disk buffer per priority lane (`routes`): priority 0 in buffer.directory, others beside it.
        var buffers: [(priority: Int, buffer: DiskBuffer)] = []
        do {
            let priorities = lanePriorities(configuration)
            for priority in priorities {
                var bufferConfiguration = configuration.buffer
                bufferConfiguration.directory = configuration.laneDirectory(priority)
                // Several lanes: the uplinks publish the buffers' summed gauges (every second) instead.
                bufferConfiguration.publishesGauges = priorities.count == 1
                let (buffer, report) = try DiskBuffer.open(bufferConfiguration, logger: logger)
                buffers.append((priority, buffer))
                logger.info("Disk buffer open", metadata: [
                    "buffer.directory": "\(bufferConfiguration.directory)", "buffer.records": "\(report.records)",
                    "buffer.acknowledged_through": "\(report.acknowledgedThrough)", "buffer.next_sequence": "\(report.nextSequence)",
                    "buffer.truncated_records": "\(report.truncatedRecords)", "buffer.priority": "\(priority)",
                ])
            }
            try await runServices(configuration: configuration, buffers: buffers, logger: logger)
        } catch {
            for (_, buffer) in buffers { await buffer.close() }
            throw error
        }
        for (_, buffer) in buffers { await buffer.close() }
        logger.info("Edge agent stopped")
    }

    static func runServices(configuration: EdgeAgentConfiguration, buffers: [(priority: Int, buffer: DiskBuffer)], logger: Logger) async throws {
        var lanes: [RecordLanes.Lane] = []
        var uplinks: [Uplink] = []
        let allBuffers = buffers.map(\.buffer)
        let registry = DeviceRegistry()
        let gate = buffers.count > 1 ? LaneGate() : nil
        for (priority, buffer) in buffers {
            let directory = configuration.laneDirectory(priority)
            let sessions = try DeviceSessionStore.load(path: directory + "/device-sessions")
            try await recoverDeviceSessions(sessions, buffer: buffer, logger: logger)
            lanes.append(RecordLanes.Lane(priority: priority, sink: buffer, sessions: sessions))
            let store = try UplinkStateStore.load(path: directory + "/uplink-inflight")
            uplinks.append(Uplink(
                settings: try uplinkSettings(configuration, priority: priority), buffer: buffer, store: store,
                gaugeBuffers: allBuffers, gate: gate, logger: logger
            ) { command in
                let devices = registry.deliver(command)
                AgentMetrics.commandsDelivered.increment(by: devices)
            })
        }
        let recordLanes = RecordLanes(lanes: lanes, routes: configuration.routes)
        var listeners: [DeviceListener] = []
        if let address = configuration.deviceListen {
            listeners.append(DeviceListener(
                address: address, lanes: recordLanes, registry: registry,
                receiveMaximum: configuration.deviceReceiveMaximum, maximumPacketSize: configuration.deviceMaxPacketSize,
                logger: logger))
        }
        if let tls = configuration.deviceTLS {
            listeners.append(DeviceListener(
                address: tls.address, tls: try deviceTLSContext(tls), lanes: recordLanes, registry: registry,
                receiveMaximum: configuration.deviceReceiveMaximum, maximumPacketSize: configuration.deviceMaxPacketSize,
                logger: logger))
        }
        let allBound: @Sendable () -> Bool = { [listeners] in listeners.allSatisfy { $0.port != nil } }
        let http = ObservabilityServer(address: configuration.httpListen, registry: Observability.registry, logger: logger) {
            allBound() ? nil : "the device listener is not bound yet"
        }
        let notifier = SystemdNotifier()
        let readiness = ReadinessService(listeners: listeners, http: http, notifier: notifier, logger: logger)
        // A service that fails (e.g. a port already in use) shuts the others down gracefully: cancellation alone
        // would not stop the HTTP server and device listener, which wait on their channels' close.
        let stopAll = ServiceGroupConfiguration.ServiceConfiguration.TerminationBehavior.gracefullyShutdownGroup
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: http, failureTerminationBehavior: stopAll),
        ]
        // Stopped in reverse order: readiness, listeners, local broker source, uplinks, HTTP.
        services += uplinks.map { .init(service: $0, failureTerminationBehavior: stopAll) }
        if let local = configuration.localBroker {
            let source = LocalBrokerSource(settings: localBrokerSettings(local, configuration), lanes: recordLanes, logger: logger)
            services.append(.init(service: source, failureTerminationBehavior: stopAll))
        }
        services += listeners.map { .init(service: $0, failureTerminationBehavior: stopAll) }
        services.append(.init(service: readiness, successTerminationBehavior: .ignore, failureTerminationBehavior: stopAll))
        if let interval = SystemdNotifier.watchdogInterval() {
            // First, so it is told last: it keeps systemd's watchdog fed while the others stop.
            services.insert(.init(service: SystemdWatchdogService(notifier: notifier, interval: interval, logger: logger) {
                allBound()
            }, failureTerminationBehavior: stopAll), at: 0)
        }
        // Last, so it is told first: bounds the whole shutdown even if a service does not finish.
        services.append(.init(
            service: ShutdownDeadline(limit: configuration.shutdownTimeout + .seconds(5), logger: logger),
            successTerminationBehavior: .ignore))
        var group = ServiceGroupConfiguration(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        group.maximumGracefulShutdownDuration = configuration.shutdownTimeout
        try await ServiceGroup(configuration: group).run()
        notifier.stopping()
    }

    /// The lanes to open: those the routes name, priority 0, and every `priority-N` lane left in the buffer
    /// directory by an earlier configuration (a route removed while its lane still held records: they are
    /// still forwarded).
    static func lanePriorities(_ configuration: EdgeAgentConfiguration) -> [Int] {
        var priorities = Set(configuration.lanePriorities)
        if let directory = opendir(configuration.buffer.directory) {
            defer { closedir(directory) }
            while let entry = readdir(directory) {
                let name = withUnsafePointer(to: entry.pointee.d_name) {
                    $0.withMemoryRebound(to: CChar.self, capacity: Int(NAME_MAX) + 1) { String(cString: $0) }
                }
                if name.hasPrefix("priority-"), let priority = Int(name.dropFirst(9)), priority > 0, Route.priorities.contains(priority) {
                    priorities.insert(priority)
                }
            }
        }
        return priorities.sorted(by: >)
    }

    /// Reads the buffer after the device session file's covered point and restores QoS 2 ids a crash cut off.
    static func recoverDeviceSessions(_ sessions: DeviceSessionStore, buffer: DiskBuffer, logger: Logger) async throws {
        let last = buffer.stats.lastSequence
        var next = sessions.coveredThrough + 1
        var records: [(sequence: UInt64, record: AgentRecord)] = []
        while next <= last {
            let batch = try buffer.read(from: next, maxRecords: 4096)
            guard let final = batch.last else { break }
            for item in batch {
                guard let record = AgentRecord(decoding: item.body), record.qos == .exactlyOnce, record.persistentSession else { continue }
                records.append((item.sequence, record))
            }
            next = final.sequence + 1
        }
        let recovered = try await sessions.recover(from: records, lastSequence: last)
        if recovered > 0 {
            logger.info("Recovered device QoS 2 state from the buffer", metadata: ["device.recovered_ids": "\(recovered)"])
        }
    }

    /// The device TLS listener's server context (client certificates asked for, verified, required as set).
    static func deviceTLSContext(_ tls: DeviceTLSConfiguration) throws -> NIOSSLContext {
        let chain = try NIOSSLCertificate.fromPEMFile(tls.certFile).map { NIOSSLCertificateSource.certificate($0) }
        let key = NIOSSLPrivateKeySource.privateKey(try NIOSSLPrivateKey(file: tls.keyFile, format: .pem))
        var configuration: TLSConfiguration
        if let clientCA = tls.clientCAFile, tls.clientCertificates != .none {
            configuration = .makeServerConfigurationWithMTLS(certificateChain: chain, privateKey: key, trustRoots: .file(clientCA))
            configuration.certificateVerification = tls.clientCertificates == .required ? .noHostnameVerification : .optionalVerification
        } else {
            configuration = .makeServerConfiguration(certificateChain: chain, privateKey: key)
        }
        return try NIOSSLContext(configuration: configuration)
    }

    static func localBrokerSettings(_ local: LocalBrokerConfiguration, _ configuration: EdgeAgentConfiguration) -> LocalBrokerSource.Settings {
        let client = MQTTClientConnection.Configuration(
            protocolVersion: local.version, clientIdentifier: local.clientId, cleanStart: false,
            sessionExpiryInterval: local.version == .v5 ? local.sessionExpirySeconds : nil,
            keepAlive: UInt16(clamping: local.keepAlive.components.seconds), responseTimeout: configuration.responseTimeout,
            username: local.username, password: local.password.map { Array($0.utf8) },
            receiveMaximum: local.version == .v5 ? configuration.deviceReceiveMaximum : nil,
            maximumPacketSize: local.version == .v5 ? UInt32(clamping: configuration.deviceMaxPacketSize) : nil,
            manualAcknowledgement: true)
        return LocalBrokerSource.Settings(
            host: local.address.host, port: local.address.port, client: client, topics: local.topics,
            deviceIdentity: local.deviceIdentity, deviceName: local.deviceName,
            backoffInitial: configuration.reconnectInitial, backoffMaximum: configuration.reconnectMax,
            connectTimeout: configuration.connectTimeout)
    }

    /// The uplink of the lane of `priority`: lane 0 is the agent's main upstream session (client id
    /// `upstream.client_id`, command subscriptions); lane p has its own session, client id `<client id>-p<p>`,
    /// and its records' `tributary-seq` carry p in the top 8 bits, so (agent, seq) stays unique.
    static func uplinkSettings(_ configuration: EdgeAgentConfiguration, priority: Int = 0) throws -> Uplink.Settings {
        var tls: NIOSSLContext? = nil
        if configuration.upstream.useTLS {
            var tlsConfiguration = TLSConfiguration.makeClientConfiguration()
            if let ca = configuration.tlsCAFile {
                tlsConfiguration.trustRoots = .file(ca)
            }
            if let cert = configuration.tlsCertFile, let key = configuration.tlsKeyFile {
                tlsConfiguration.certificateChain = try NIOSSLCertificate.fromPEMFile(cert).map { .certificate($0) }
                tlsConfiguration.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
            }
            tls = try NIOSSLContext(configuration: tlsConfiguration)
        }
        let keepAlive = UInt16(clamping: configuration.keepAlive.components.seconds)
        let client = MQTTClientConnection.Configuration(
            protocolVersion: configuration.upstreamVersion,
            clientIdentifier: priority == 0 ? configuration.upstreamClientId : "\(configuration.upstreamClientId)-p\(priority)",
            cleanStart: false,
            sessionExpiryInterval: configuration.upstreamVersion == .v5 ? configuration.sessionExpirySeconds : nil,
            keepAlive: keepAlive, responseTimeout: configuration.responseTimeout,
            username: configuration.username, password: configuration.password.map { Array($0.utf8) },
            maximumInflight: configuration.maxInflight)
        return Uplink.Settings(
            host: configuration.upstream.address.host, port: configuration.upstream.address.port, tls: tls,
            tlsServerName: configuration.tlsServerName, client: client, qos: configuration.upstreamQoS,
            agentId: configuration.agentId, topicPrefix: configuration.topicPrefix,
            backoffInitial: configuration.reconnectInitial, backoffMaximum: configuration.reconnectMax,
            connectTimeout: configuration.connectTimeout,
            tcpUserTimeout: configuration.tcpUserTimeout == .zero ? nil : configuration.tcpUserTimeout,
            maxBatchBytes: 1 << 20,
            maxBytesPerSecond: configuration.maxBytesPerSecond > 0 ? configuration.maxBytesPerSecond : nil,
            progressInterval: .seconds(5), commandTopics: priority == 0 ? configuration.commandTopics : [],
            priority: priority, routes: configuration.routes)
    }
}

/// Once graceful shutdown begins, gives the other services `limit` to finish; past that the process logs
/// and exits 1 instead of hanging (everything acknowledged is already durable; a restart resumes).
struct ShutdownDeadline: Service {
    let limit: Duration
    let logger: Logger

    func run() async throws {
        do { try await gracefulShutdown() } catch { return }  // cancelled: the group is ending anyway
        let limit = self.limit
        let logger = self.logger
        Task.detached {
            try await Task.sleep(for: limit)  // the deadline itself
            logger.critical("Shutdown did not finish in time; exiting", metadata: ["shutdown.limit": "\(limit)"])
            exit(1)
        }
    }
}

/// Tells systemd (and the log) that the agent is ready once the device listener (if any) and HTTP endpoint
/// are bound.
struct ReadinessService: Service {
    let listeners: [DeviceListener]
    let http: ObservabilityServer
    let notifier: SystemdNotifier
    let logger: Logger

    func run() async throws {
        var metadata: Logger.Metadata = [:]
        for listener in listeners {
            // nil: the listener failed to bind (the group is stopping with its error) or we were cancelled.
            guard let devicePort = await listener.waitUntilBound() else { return }
            metadata[listener.tls == nil ? "device.port" : "device.tls_port"] = "\(devicePort)"
        }
        metadata["http.port"] = "\(try await http.port())"
        notifier.ready(status: "forwarding")
        logger.info("Edge agent ready", metadata: metadata)
    }
}
