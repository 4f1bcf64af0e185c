import Crypto
import Foundation

/// A single-use join token: a public id (which the coordinator looks the token up by) and a
/// 256-bit secret (which never travels: the agent proves it holds it with a `JoinProof`).
///
/// Encoded for the operator as `rmj1.<id>.<secret, base64url>`. The description redacts the
/// secret, so a token interpolated into a log line by mistake does not leak it.
public struct JoinToken: Sendable, CustomStringConvertible {
    /// The token's public id: 16 lowercase hex digits.
    public let id: String
    /// The secret: 32 random bytes.
    public let secret: [UInt8]

    static let prefix = "rmj1"

    /// Makes a fresh random token.
    public static func generate() -> JoinToken {
        var generator = SystemRandomNumberGenerator()
        let idBytes = (0..<8).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
        let secret = (0..<32).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
        return JoinToken(id: Hex.encode(idBytes), secret: secret)
    }

    /// Rebuilds a token from its parts (as the coordinator stores them).
    public init(id: String, secret: [UInt8]) {
        self.id = id
        self.secret = secret
    }

    /// Parses the operator's encoded token.
    public init(parsing text: String) throws {
        let parts = text.trimmingWhitespace().split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0] == Self.prefix else {
            throw SecurityError(
                .malformedToken,
                "a join token looks like rmj1.<16 hex digits>.<secret>; copy it whole from `ringmaster token create`"
            )
        }
        guard parts[1].count == 16, Hex.decode(String(parts[1])) != nil else {
            throw SecurityError(.malformedToken, "the join token's id must be 16 hex digits")
        }
        guard let secret = Base64URL.decode(String(parts[2])), secret.count == 32 else {
            throw SecurityError(.malformedToken, "the join token's secret part is damaged; copy the token again")
        }
        self.id = String(parts[1])
        self.secret = secret
    }

    /// The whole token, secret included: print it once for the operator, never log it.
    public var encoded: String { "\(Self.prefix).\(self.id).\(Base64URL.encode(self.secret))" }

    public var description: String { "JoinToken(id: \(self.id), secret: <redacted>)" }
}

/// Proof that a joining agent holds a token's secret, bound to the coordinator's nonce, the node
/// name and the agent's certificate signing request: HMAC-SHA256 keyed by the secret over a
/// domain tag and those three fields, each length-prefixed.
///
/// A proof cannot be replayed (the nonce is fresh per connection), cannot be moved to another CSR
/// (an eavesdropper's key would not match), and reveals nothing about the secret.
public enum JoinProof {
    static let domain = Array("ringmaster join proof v1".utf8)

    /// Computes the proof.
    public static func compute(secret: [UInt8], nonce: [UInt8], nodeName: String, csrDER: [UInt8]) -> [UInt8] {
        let code = HMAC<SHA256>.authenticationCode(
            for: self.message(nonce: nonce, nodeName: nodeName, csrDER: csrDER),
            using: SymmetricKey(data: secret)
        )
        return Array(code)
    }

    /// Checks a proof in constant time.
    public static func isValid(
        _ proof: [UInt8],
        secret: [UInt8],
        nonce: [UInt8],
        nodeName: String,
        csrDER: [UInt8]
    ) -> Bool {
        HMAC<SHA256>.isValidAuthenticationCode(
            proof,
            authenticating: self.message(nonce: nonce, nodeName: nodeName, csrDER: csrDER),
            using: SymmetricKey(data: secret)
        )
    }

    static func message(nonce: [UInt8], nodeName: String, csrDER: [UInt8]) -> [UInt8] {
        var message = self.domain
        for field in [nonce, Array(nodeName.utf8), csrDER] {
            withUnsafeBytes(of: UInt32(field.count).bigEndian) { message.append(contentsOf: $0) }
            message.append(contentsOf: field)
        }
        return message
    }

    /// A fresh 32-byte nonce for a join challenge.
    public static func makeNonce() -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<32).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
    }
}

// MARK: - Encodings

enum Hex {
    static func encode(_ bytes: some Sequence<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0xF)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func decode(_ text: String) -> [UInt8]? {
        let chars = Array(text.utf8)
        guard chars.count % 2 == 0 else { return nil }
        func value(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
            default: return nil
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(chars.count / 2)
        var index = 0
        while index < chars.count {
            guard let high = value(chars[index]), let low = value(chars[index + 1]) else { return nil }
            out.append(high << 4 | low)
            index += 2
        }
        return out
    }
}

/// base64url without padding (RFC 4648 section 5), through Foundation's base64.
enum Base64URL {
    static func encode(_ bytes: [UInt8]) -> String {
        Data(bytes).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    static func decode(_ text: String) -> [UInt8]? {
        guard text.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }) else {
            return nil
        }
        var standard = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        standard += String(repeating: "=", count: (4 - standard.count % 4) % 4)
        return Data(base64Encoded: standard).map(Array.init)
    }
}

extension String {
    func trimmingWhitespace() -> String {
        let scalars = self.unicodeScalars
        guard let first = scalars.firstIndex(where: { !$0.properties.isWhitespace }) else { return "" }
        let last = scalars.lastIndex(where: { !$0.properties.isWhitespace })!
        return String(scalars[first...last])
    }
}
