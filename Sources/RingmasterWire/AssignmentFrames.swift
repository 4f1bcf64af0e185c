import NIOCore
import SwiftProtobuf

/// One generation's assignments, ready to send. Every member's differs from the others' in its
/// rank alone, so the rest (the member list above all: some 30 KB at 1,000 members) is serialized
/// once, and each member's frame is those bytes with its rank after them.
///
/// Protobuf's wire format allows it: a scalar field that comes later in the bytes replaces the
/// value earlier bytes gave it, so `shared ++ rank` decodes to the assignment with that rank.
/// Serializing the whole assignment for every member instead was half of the coordinator's CPU
/// in a generation change at 1,000 members (each member's list sized, then written, a thousand
/// times over).
public struct AssignmentFrames: Sendable {
    /// The assignment with rank 0, serialized.
    let shared: [UInt8]
    /// The largest payload a frame may hold (as `FrameEncoder`'s).
    public let maximumPayloadBytes: Int

    /// `Envelope.assignment` (field 30) and `Assignment.rank` (field 3), in proto/ringmaster.proto.
    static let envelopeAssignmentField: UInt64 = 30
    static let rankField: UInt64 = 3

    /// The frames of `assignment`'s members; its own rank does not matter. Throws when the
    /// frames would be larger than `maximumPayloadBytes` allows.
    public init(
        _ assignment: Ringmaster_V1_Assignment, maximumPayloadBytes: Int = FrameLimits.defaultMaximumPayloadBytes
    ) throws(WireError) {
        var template = assignment
        template.rank = 0
        do {
            self.shared = try template.serializedBytes()
        } catch {
            throw WireError(.unencodableMessage, "could not serialize an assignment: \(error)")
        }
        self.maximumPayloadBytes = maximumPayloadBytes
        let largest = self.parts(rank: .max).payloadLength
        guard largest <= maximumPayloadBytes else {
            throw WireError(
                .unencodableMessage,
                "an assignment message of up to \(largest) bytes exceeds the frame limit of \(maximumPayloadBytes) bytes"
            )
        }
    }

    /// What goes around the shared bytes in the frame for `rank`.
    func parts(rank: UInt32) -> (header: [UInt8], rank: [UInt8], payloadLength: Int) {
        // Rank 0 is proto3's default, which a serializer leaves out; any other is appended.
        let rankBytes: [UInt8] = rank == 0 ? [] : Self.varint(Self.rankField << 3) + Self.varint(UInt64(rank))
        let assignmentLength = self.shared.count + rankBytes.count
        let header = Self.varint(Self.envelopeAssignmentField << 3 | 2) + Self.varint(UInt64(assignmentLength))
        return (header, rankBytes, header.count + assignmentLength)
    }

    /// The frame (length prefix included) of the `Envelope` that carries the assignment with
    /// `rank`.
    public func frame(rank: UInt32, allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        let (header, rankBytes, payloadLength) = self.parts(rank: rank)
        var buffer = allocator.buffer(capacity: FrameLimits.headerBytes + payloadLength)
        buffer.writeInteger(UInt32(payloadLength), endianness: .big)
        buffer.writeBytes(header)
        buffer.writeBytes(self.shared)
        buffer.writeBytes(rankBytes)
        return buffer
    }

    /// `value` as a protobuf varint: seven bits a byte, least significant first.
    static func varint(_ value: UInt64) -> [UInt8] {
        var bytes: [UInt8] = []
        var rest = value
        while rest >= 0x80 {
            bytes.append(UInt8(rest & 0x7f) | 0x80)
            rest >>= 7
        }
        bytes.append(UInt8(rest))
        return bytes
    }
}
