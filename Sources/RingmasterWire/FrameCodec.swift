import NIOCore
import SwiftProtobuf

/// Limits of the control protocol's framing.
public enum FrameLimits {
    /// The default largest payload a frame may declare: 16 MiB.
    public static let defaultMaximumPayloadBytes = 16 * 1024 * 1024
    /// Bytes in the length prefix of every frame.
    public static let headerBytes = 4
}

// MARK: - Decoder

/// Splits a byte stream into `Envelope`s: each frame is a 4-byte big-endian payload length
/// followed by that many bytes of serialized `Envelope`.
///
/// The decoder reads the length first and refuses a frame whose length exceeds the limit (or is
/// zero) before waiting for, or allocating room for, its payload; so a peer cannot make the
/// receiver buffer more than `maximumPayloadBytes + 4` bytes. A payload that does not decode, or a
/// stream that ends inside a frame, is an error too. Every error is final: the channel closes and
/// nothing from the bad frame is dispatched.
public struct FrameDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = Envelope

    /// The largest payload this decoder accepts.
    public let maximumPayloadBytes: Int

    /// Makes a decoder with a payload limit (default 16 MiB).
    public init(maximumPayloadBytes: Int = FrameLimits.defaultMaximumPayloadBytes) {
        precondition(maximumPayloadBytes > 0 && maximumPayloadBytes <= Int(UInt32.max))
        self.maximumPayloadBytes = maximumPayloadBytes
    }

    public mutating func decode(buffer: inout ByteBuffer) throws -> Envelope? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, endianness: .big, as: UInt32.self) else {
            return nil
        }
        guard length > 0 else {
            throw WireError(.zeroLengthFrame, "received a frame of length 0; every frame carries a non-empty Envelope")
        }
        guard Int(length) <= self.maximumPayloadBytes else {
            throw WireError(
                .frameTooLarge,
                "received a frame declaring \(length) bytes, above the limit of \(self.maximumPayloadBytes) bytes"
            )
        }
        guard buffer.readableBytes >= FrameLimits.headerBytes + Int(length) else {
            return nil
        }
        buffer.moveReaderIndex(forwardBy: FrameLimits.headerBytes)
        let payload = buffer.readSlice(length: Int(length))!
        do {
            var options = BinaryDecodingOptions()
            options.discardUnknownFields = false
            return try payload.withUnsafeReadableBytes { bytes in
                try Envelope(serializedBytes: bytes, options: options)
            }
        } catch {
            throw WireError(
                .undecodableFrame,
                "a \(length)-byte frame is not a valid ringmaster.v1.Envelope (\(String(describing: error)))"
            )
        }
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> Envelope? {
        if let envelope = try self.decode(buffer: &buffer) {
            return envelope
        }
        if buffer.readableBytes > 0 {
            throw WireError(
                .truncatedFrame,
                "the connection ended \(buffer.readableBytes) byte(s) into an incomplete frame"
            )
        }
        return nil
    }
}

// MARK: - Encoder

/// Writes an `Envelope` as one frame: 4-byte big-endian length, then the serialized message.
public struct FrameEncoder: MessageToByteEncoder, Sendable {
    public typealias OutboundIn = Envelope

    /// The largest payload this encoder writes; a larger message is an error, not a frame the
    /// peer would refuse anyway.
    public let maximumPayloadBytes: Int

    /// Makes an encoder with a payload limit (default 16 MiB).
    public init(maximumPayloadBytes: Int = FrameLimits.defaultMaximumPayloadBytes) {
        self.maximumPayloadBytes = maximumPayloadBytes
    }

    public func encode(data: Envelope, out: inout ByteBuffer) throws {
        try Self.write(data, into: &out, maximumPayloadBytes: self.maximumPayloadBytes)
    }

    /// Appends one frame holding `envelope` to `buffer`.
    public static func write(
        _ envelope: Envelope,
        into buffer: inout ByteBuffer,
        maximumPayloadBytes: Int = FrameLimits.defaultMaximumPayloadBytes
    ) throws {
        let payload: [UInt8]
        do {
            payload = try envelope.serializedBytes()
        } catch {
            throw WireError(.unencodableMessage, "could not serialize a \(envelope.kind) message: \(error)")
        }
        guard !payload.isEmpty else {
            // An empty Envelope serializes to zero bytes, which the decoder refuses: send an explicit empty body.
            throw WireError(.unencodableMessage, "refusing to send an Envelope with no body")
        }
        guard payload.count <= maximumPayloadBytes else {
            throw WireError(
                .unencodableMessage,
                "a \(envelope.kind) message of \(payload.count) bytes exceeds the frame limit of \(maximumPayloadBytes) bytes"
            )
        }
        buffer.writeInteger(UInt32(payload.count), endianness: .big)
        buffer.writeBytes(payload)
    }
}
