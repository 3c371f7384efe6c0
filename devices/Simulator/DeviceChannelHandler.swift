import Common
import NIOCore

/// The pipeline end of a `DeviceConnection`: forwards decoded packets and channel events, writes packets.
/// Holds no state of its own beyond the context.
final class DeviceChannelHandler: ChannelInboundHandler {
    typealias InboundIn = MQTTPacket
    typealias OutboundOut = MQTTPacket

    private let connection: DeviceConnection
    private var context: ChannelHandlerContext?
    private var flushPending = false

    init(connection: DeviceConnection) {
        self.connection = connection
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        connection.channelActive(self)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        connection.channelInactive()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        connection.received(unwrapInboundIn(data))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if flushPending {
            flushPending = false
            context.flush()
        }
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { connection.writabilityChanged() }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Codec errors, TLS failures, resets: the connection closes and the device reconnects.
        context.close(promise: nil)
    }

    // MARK: - Used by DeviceConnection

    var isWritable: Bool { context?.channel.isWritable ?? false }

    var allocator: ByteBufferAllocator { context?.channel.allocator ?? ByteBufferAllocator() }

    func write(_ packet: MQTTPacket) {
        context?.write(wrapOutboundOut(packet), promise: nil)
    }

    func flush() {
        flushPending = false
        context?.flush()
    }

    /// Flushes at the end of the current read burst (acks to many received messages go out together).
    func flushSoon() {
        flushPending = true
    }

    func close() {
        context?.close(promise: nil)
    }
}

@available(*, unavailable)
extension DeviceChannelHandler: Sendable {}
