import Common
import Testing

@testable import EdgeAgent

@Suite("Edge agent configuration")
struct AgentConfigurationTests {
    static func configuration(_ settings: [String: String], environment: [String: String] = [:]) throws(ConfigError) -> EdgeAgentConfiguration {
        let base = ["agent_id": "gw", "upstream.url": "mqtt://127.0.0.1:1883"]
        let values = try ConfigValues.load(
            keys: EdgeAgentConfiguration.keys, file: nil, environment: environment, overrides: base.merging(settings) { $1 })
        return try EdgeAgentConfiguration(values)
    }

    static func error(_ settings: [String: String]) -> String? {
        do {
            _ = try configuration(settings)
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test("local broker source: keys parsed, environment overrides, every bad value named")
    func localBroker() throws {
        let plain = try Self.configuration([:])
        #expect(plain.localBroker == nil)
        let local = try #require(try Self.configuration(
            ["local_broker.url": "mqtt://127.0.0.1:1884", "local_broker.device_from": "topic:2", "device.listen": "off"],
            environment: ["TRIBUTARY_LOCAL_BROKER_TOPICS": "a/#, b/+/c"]).localBroker)
        #expect(local.address == HostPort(host: "127.0.0.1", port: 1884))
        #expect(local.topics.map(\.description) == ["a/#", "b/+/c"])
        #expect(local.clientId == "tributary-gw-source")
        #expect(local.deviceIdentity == .topicLevel(2))
        #expect(local.sessionExpirySeconds == 7 * 86_400)
        #expect(try Self.configuration(["local_broker.url": "mqtt://h:1", "local_broker.device_from": "property:who"]).localBroker?.deviceIdentity == .userProperty("who"))
        #expect(try Self.configuration(["local_broker.url": "mqtt://h:1", "device.listen": "off"]).deviceListen == nil)

        #expect(Self.error(["device.listen": "off"])?.contains("nothing to forward") == true)
        #expect(Self.error(["local_broker.url": "mqtts://h:1"])?.contains("local_broker.url") == true)
        #expect(Self.error(["local_broker.url": "h:1"])?.contains("local_broker.url") == true)
        #expect(Self.error(["local_broker.url": "mqtt://h:1", "local_broker.device_from": "topic:0"])?.contains("local_broker.device_from") == true)
        #expect(Self.error(["local_broker.url": "mqtt://h:1", "local_broker.device_from": "header:x"])?.contains("local_broker.device_from") == true)
        #expect(Self.error(["local_broker.url": "mqtt://h:1", "local_broker.topics": "a/#/b"])?.contains("local_broker.topics") == true)
        #expect(Self.error(["local_broker.url": "mqtt://h:1", "local_broker.topics": ""])?.contains("local_broker.topics") == true)
    }

    @Test("device TLS: keys parsed; a listener without certificate and key, or client certificates without a CA, are refused")
    func deviceTLS() throws {
        #expect(try Self.configuration([:]).deviceTLS == nil)
        let files = ["device.tls_listen": "127.0.0.1:8883", "device.tls.cert_file": "/c.pem", "device.tls.key_file": "/k.pem"]
        let tls = try #require(try Self.configuration(files.merging(["device.tls.client_ca_file": "/ca.pem", "device.tls.client_certificates": "required", "device.listen": "off"]) { $1 }).deviceTLS)
        #expect(tls.address == HostPort(host: "127.0.0.1", port: 8883))
        #expect(tls.clientCertificates == .required)
        #expect(Self.error(["device.tls_listen": "127.0.0.1:8883"])?.contains("device.tls.cert_file") == true)
        #expect(Self.error(files.merging(["device.tls.client_certificates": "optional"]) { $1 })?.contains("device.tls.client_ca_file") == true)
        #expect(Self.error(files.merging(["device.tls.client_certificates": "sometimes"]) { $1 })?.contains("device.tls.client_certificates") == true)
    }
}
