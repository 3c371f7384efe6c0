import Common
import Foundation
import NIOCore
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// A plain blocking TCP client socket on 127.0.0.1, for what `RawMQTTClient` (NIO, which closes on the
/// peer's end of stream) cannot show: what happens to the client's own writes after the broker has ended
/// its output. Receives time out after 10 s.
final class BlockingSocket {
    private let fd: Int32
    private var pending = ByteBuffer()

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("socket: errno \(errno)") }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 else {
            Glibc.close(fd)
            throw HarnessError("connect to 127.0.0.1:\(port): errno \(errno)")
        }
    }

    func close() { Glibc.close(fd) }

    func send(_ packet: MQTTPacket, version: MQTTProtocolVersion) throws {
        let buffer = try packet.encoded(version: version)
        if let error = sendRaw(Array(buffer.readableBytesView)) { throw HarnessError("send: \(error)") }
    }

    /// Writes `bytes`; the error (errno name) if the write failed. No SIGPIPE.
    func sendRaw(_ bytes: [UInt8]) -> String? {
        let sent = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if sent == bytes.count { return nil }
        return sent < 0 ? String(cString: strerror(errno)) : "short write \(sent) of \(bytes.count)"
    }

    /// The next packet (decoded as `version`).
    func receive(version: MQTTProtocolVersion) throws -> MQTTPacket {
        while true {
            if let packet = try MQTTPacket.decode(from: &pending, version: version, maximumPacketSize: MQTTPacket.protocolMaximumPacketSize) {
                return packet
            }
            guard try fill() else { throw HarnessError("end of stream while waiting for a packet") }
        }
    }

    /// True if the peer ended its output (after everything already received was read).
    func receiveEndOfStream() throws -> Bool {
        guard pending.readableBytes == 0 else { return false }
        return try !fill()
    }

    /// Reads what is there into `pending`; false at the end of the stream.
    private func fill() throws -> Bool {
        var chunk = [UInt8](repeating: 0, count: 4096)
        let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if count < 0 { throw HarnessError("recv: \(String(cString: strerror(errno)))") }
        if count == 0 { return false }
        pending.writeBytes(chunk[0..<count])
        return true
    }
}
