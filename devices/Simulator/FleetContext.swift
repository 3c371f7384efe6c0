import Common
import NIOCore
import NIOSSL

#if canImport(Glibc)
import Glibc
#endif

/// What every connection of a run shares (one reference instead of a copy per device).
final class FleetContext: Sendable {
    let settings: SimulatorSettings
    let sslContext: NIOSSLContext?
    /// Interval between messages of one client in nanoseconds; 0 when unthrottled.
    let intervalNanoseconds: UInt64
    // Copies of the settings read on every message (reading `settings` copies the whole struct).
    let qos: MQTTQoS
    let sizeMinimum: Int
    let sizeMaximum: Int
    let payloadFill: PayloadFill

    init(settings: SimulatorSettings) throws(SimulatorError) {
        self.settings = settings
        qos = settings.qos
        sizeMinimum = settings.size.minimum
        sizeMaximum = settings.size.maximum
        payloadFill = settings.payloadFill
        intervalNanoseconds = settings.rate > 0 ? UInt64(1e9 / settings.rate) : 0
        guard settings.broker.tls else {
            sslContext = nil
            return
        }
        var tls = TLSConfiguration.makeClientConfiguration()
        if let ca = settings.tlsCAFile { tls.trustRoots = .file(ca) }
        if settings.tlsInsecure { tls.certificateVerification = .none }
        do {
            if let certificate = settings.tlsCertificateFile, let key = settings.tlsKeyFile {
                tls.certificateChain = try NIOSSLCertificate.fromPEMFile(certificate).map { .certificate($0) }
                tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
            }
            sslContext = try NIOSSLContext(configuration: tls)
        } catch {
            throw SimulatorError(.configuration, "cannot set up TLS: \(error)")
        }
    }
}

/// Clocks: monotonic for ack latencies, wall for the payload's send time (compared by another process).
enum Clock {
    static func uptimeNanoseconds() -> UInt64 { NIODeadline.now().uptimeNanoseconds }

    static func wallNanoseconds() -> UInt64 {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return UInt64(spec.tv_sec) * 1_000_000_000 + UInt64(spec.tv_nsec)
    }
}

/// A small, fast generator for jitter and payload sizes (xorshift64*); one per connection, no locking.
struct FastRandom: RandomNumberGenerator, Sendable {
    private var state: UInt64

    init(seed: UInt64) { state = seed == 0 ? 0x9E37_79B9_7F4A_7C15 : seed &* 0x9E37_79B9_7F4A_7C15 | 1 }

    mutating func next() -> UInt64 {
        state ^= state >> 12
        state ^= state << 25
        state ^= state >> 27
        return state &* 0x2545_F491_4F6C_DD1D
    }
}

extension Duration {
    /// The whole duration in nanoseconds (saturating).
    var totalNanoseconds: Int64 {
        let (seconds, attoseconds) = components
        let (product, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        return overflow ? (seconds < 0 ? .min : .max) : product &+ attoseconds / 1_000_000_000
    }
}
