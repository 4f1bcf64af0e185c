/// An error from the control protocol's framing or message handling.
///
/// The description says what was wrong and what the sender should do instead; it never carries
/// payload bytes, so a frame holding a secret cannot leak it into a log line.
public struct WireError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What went wrong, as a stable code that tests and metrics can match on.
    public enum Code: String, Sendable, Hashable {
        /// A frame declared a length above the configured limit; refused before reading its payload.
        case frameTooLarge
        /// A frame declared a length of zero, which no valid `Envelope` frame has.
        case zeroLengthFrame
        /// The connection ended in the middle of a frame.
        case truncatedFrame
        /// A complete frame's payload is not a valid `Envelope`.
        case undecodableFrame
        /// A message could not be serialized (for example, it exceeds the frame limit).
        case unencodableMessage
        /// A decoded message breaks a rule of the protocol (for example, an assignment whose
        /// ranks do not match its world size).
        case invalidMessage
    }

    /// The stable code.
    public var code: Code
    /// Operator-facing text: what was wrong and what to do.
    public var message: String

    /// Makes an error with a code and a message.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String {
        "\(self.code.rawValue): \(self.message)"
    }
}
