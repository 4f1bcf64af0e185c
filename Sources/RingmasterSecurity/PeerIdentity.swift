import X509

/// Who a certificate belongs to: a role and a name, carried in the certificate's subject
/// alternative names as the URI `ringmaster://ROLE/NAME`.
///
/// This is the only identity the coordinator trusts: no message field says who its sender is.
public struct PeerIdentity: Hashable, Sendable, CustomStringConvertible {
    /// What a certificate's holder may do.
    public enum Role: String, Sendable, Hashable, CaseIterable {
        /// The coordinator's server certificate.
        case coordinator
        /// A node agent: may hold a session, heartbeat, report, renew its certificate.
        case agent
        /// A person or tool with the CLI: may make admin requests.
        case `operator`
    }

    /// The role.
    public var role: Role
    /// The node id (for agents) or operator name: a DNS label.
    public var name: String

    /// Makes an identity after checking that `name` is a DNS label.
    public init(role: Role, name: String) throws {
        try Self.validate(name: name)
        self.role = role
        self.name = name
    }

    /// The URI written into a certificate's subject alternative names.
    public var uri: String { "\(Self.scheme)://\(self.role.rawValue)/\(self.name)" }

    public var description: String { "\(self.role.rawValue) \(self.name)" }

    static let scheme = "ringmaster"

    /// Reads the identity from a certificate's subject alternative names.
    public init(certificate: Certificate) throws {
        let names: SubjectAlternativeNames?
        do {
            names = try certificate.extensions.subjectAlternativeNames
        } catch {
            throw SecurityError(
                .invalidIdentity, "the certificate's subject alternative names do not parse", underlying: error)
        }
        for name in names ?? SubjectAlternativeNames() {
            guard case .uniformResourceIdentifier(let uri) = name, let identity = Self(uri: uri) else { continue }
            self = identity
            return
        }
        throw SecurityError(
            .invalidIdentity,
            "the certificate for \(certificate.subject) carries no ringmaster:// identity; it was not issued by a ringmaster coordinator"
        )
    }

    init?(uri: String) {
        let prefix = "\(Self.scheme)://"
        guard uri.hasPrefix(prefix) else { return nil }
        let parts = uri.dropFirst(prefix.count).split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let role = Role(rawValue: String(parts[0])),
            (try? Self.validate(name: String(parts[1]))) != nil
        else { return nil }
        self.role = role
        self.name = String(parts[1])
    }

    /// Checks that a node or operator name is a DNS label: 1 to 63 of `a-z`, `0-9` and `-`,
    /// starting and ending with a letter or digit.
    public static func validate(name: String) throws {
        let bytes = Array(name.utf8)
        func isAlnum(_ byte: UInt8) -> Bool {
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
        }
        guard (1...63).contains(bytes.count),
            bytes.allSatisfy({ isAlnum($0) || $0 == UInt8(ascii: "-") }),
            isAlnum(bytes.first!), isAlnum(bytes.last!)
        else {
            throw SecurityError(
                .invalidIdentity,
                "\"\(name.prefix(80))\" is not a valid name: use 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
            )
        }
    }
}
