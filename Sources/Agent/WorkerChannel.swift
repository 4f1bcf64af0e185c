import Foundation
import Workload

#if canImport(Glibc)
    import Glibc
#endif

/// The agent's end of the Unix stream socket to its PyTorch worker: messages framed as a 4-byte
/// little-endian length and one JSON object (docs/worker-protocol.md), each read and write with a
/// deadline.
final class WorkerChannel {
    /// The largest message accepted (bulk data travels in shared memory, never here).
    static let maximumMessageBytes = 64 << 20

    let descriptor: Int32
    /// Says what went wrong when the other end is gone (the worker's exit status, its last lines).
    let describeLoss: () -> String

    /// One encoder and one decoder for the channel's life: a step sends and receives several
    /// messages per worker, and making a coder costs more than coding one of them.
    let encoder = JSONEncoder()
    let decoder = JSONDecoder()
    /// What a read took from the socket: bytes `start..<end` are received and not yet taken. A
    /// read takes whatever has arrived, often the next message too, as a worker sends its last
    /// bucket and its gradients back to back.
    var buffer = [UInt8](repeating: 0, count: 64 << 10)
    var start = 0
    var end = 0

    init(descriptor: Int32, describeLoss: @escaping () -> String) {
        self.descriptor = descriptor
        self.describeLoss = describeLoss
    }

    deinit { close(self.descriptor) }

    /// Sends one message.
    func send<Message: Encodable>(_ message: Message, deadline: ContinuousClock.Instant) throws {
        let body = try self.encoder.encode(message)
        var frame = withUnsafeBytes(of: UInt32(body.count).littleEndian) { Array($0) }
        frame += body
        var done = 0
        while done < frame.count {
            let count = frame.withUnsafeBytes {
                Glibc.send(
                    self.descriptor, $0.baseAddress! + done, frame.count - done, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
            }
            if count > 0 {
                done += count
            } else if count < 0 && (errno == EAGAIN || errno == EINTR) {
                try self.wait(events: Int16(POLLOUT), deadline: deadline, doing: "sending to the worker")
            } else {
                throw WorkloadError(.workerFailed, "the worker closed its connection: \(self.describeLoss())")
            }
        }
    }

    /// Receives one message.
    func receive<Message: Decodable>(
        _ type: Message.Type, deadline: ContinuousClock.Instant, waitingFor what: String
    ) throws -> Message {
        while true {
            if let message = try self.receive(type, deadline: deadline, quiet: deadline, waitingFor: what) {
                return message
            }
        }
    }

    /// Receives one message, or nil when none has come whole by `quiet` (what has come of it stays
    /// for the next call); an error at `deadline`.
    func receive<Message: Decodable>(
        _ type: Message.Type, deadline: ContinuousClock.Instant, quiet: ContinuousClock.Instant,
        waitingFor what: String
    ) throws -> Message? {
        guard try self.fill(4, deadline: deadline, quiet: quiet, waitingFor: what) else { return nil }
        let length = Int(
            self.buffer[self.start..<(self.start + 4)].withUnsafeBytes {
                UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self))
            })
        guard length <= Self.maximumMessageBytes else {
            throw WorkloadError(
                .workerFailed, "the worker sent a message of \(length) bytes (at most \(Self.maximumMessageBytes))")
        }
        guard try self.fill(4 + length, deadline: deadline, quiet: quiet, waitingFor: what) else { return nil }
        let body = self.buffer[(self.start + 4)..<(self.start + 4 + length)]
        self.start += 4 + length
        if self.start == self.end { (self.start, self.end) = (0, 0) }
        do {
            return try self.decoder.decode(Message.self, from: Data(body))
        } catch {
            throw WorkloadError(.workerFailed, "the worker sent a message that does not decode (\(error))")
        }
    }

    /// Whether the next `count` bytes have arrived by `quiet` (they stay in the buffer, not taken).
    func fill(
        _ count: Int, deadline: ContinuousClock.Instant, quiet: ContinuousClock.Instant, waitingFor what: String
    ) throws -> Bool {
        while self.end - self.start < count {
            if self.buffer.count - self.start < count {
                // Room for the whole message after what is held: move that to the front, or grow.
                let held = Array(self.buffer[self.start..<self.end])
                if self.buffer.count < count { self.buffer = [UInt8](repeating: 0, count: count) }
                self.buffer.replaceSubrange(0..<held.count, with: held)
                (self.start, self.end) = (0, held.count)
            }
            let (end, room) = (self.end, self.buffer.count - self.end)
            let n = self.buffer.withUnsafeMutableBytes {
                recv(self.descriptor, $0.baseAddress! + end, room, Int32(MSG_DONTWAIT))
            }
            if n > 0 {
                self.end += n
            } else if n < 0 && (errno == EAGAIN || errno == EINTR) {
                if quiet < deadline && ContinuousClock.now >= quiet { return false }
                try self.wait(events: Int16(POLLIN), deadline: min(deadline, quiet), giveUp: deadline, doing: what)
            } else {
                throw WorkloadError(
                    .workerFailed,
                    "the worker closed its connection while the agent waited for \(what): \(self.describeLoss())")
            }
        }
        return true
    }

    /// Waits until the socket is ready for `events` or `deadline` passes; an error once `giveUp` has.
    func wait(
        events: Int16, deadline: ContinuousClock.Instant, giveUp: ContinuousClock.Instant? = nil, doing what: String
    ) throws {
        guard ContinuousClock.now < (giveUp ?? deadline) else {
            throw WorkloadError(.workerFailed, "the worker did not answer in time: the agent waited for \(what)")
        }
        let remaining = deadline - ContinuousClock.now
        guard remaining > .zero else { return }
        var descriptor = pollfd(fd: self.descriptor, events: events, revents: 0)
        let milliseconds =
            remaining.components.seconds * 1000 + remaining.components.attoseconds / 1_000_000_000_000_000
        _ = poll(&descriptor, 1, Int32(min(milliseconds + 1, 1000)))
    }
}
