import Crypto

/// The data-plane handshake: proves a connection belongs to this job's generation before any
/// payload is read, in both directions.
///
/// 1. The acceptor sends a fresh 32-byte nonce.
/// 2. The connector sends its `DataPlaneHello`: `RMDP`, version 1, generation, its rank, the
///    acceptor's rank, its own nonce, and HMAC-SHA256(secret, "connect" | both nonces | generation
///    | ranks).
/// 3. The acceptor checks the MAC with that generation's secret and answers
///    HMAC-SHA256(secret, "accept" | both nonces | generation | ranks), which the connector checks.
///
/// The secret is per job and generation (from the coordinator's assignment), so a connection from
/// another job or an older generation, or from anyone without the secret, fails at step 3 and is
/// closed without disturbing anything else.
enum DataPlaneHandshake {
    static let magic: [UInt8] = Array("RMDP".utf8)
    static let version: UInt8 = 1
    static let nonceBytes = 32
    static let macBytes = 32

    /// Which side's proof a MAC is.
    enum Proof: String {
        case connect
        case accept
    }

    /// The one place a handshake MAC's message is built: the proof's label, both nonces, the
    /// generation and both ranks.
    static func message(
        _ proof: Proof, acceptorNonce: [UInt8], connectorNonce: [UInt8], generation: UInt64, from: Int, to: Int
    ) -> [UInt8] {
        var message = Array("ringmaster data plane \(proof.rawValue) v1".utf8)
        message += acceptorNonce + connectorNonce
        withUnsafeBytes(of: generation.bigEndian) { message += $0 }
        withUnsafeBytes(of: UInt32(from).bigEndian) { message += $0 }
        withUnsafeBytes(of: UInt32(to).bigEndian) { message += $0 }
        return message
    }

    static func mac(
        _ proof: Proof, secret: [UInt8], acceptorNonce: [UInt8], connectorNonce: [UInt8], generation: UInt64, from: Int,
        to: Int
    ) -> [UInt8] {
        let message = self.message(
            proof, acceptorNonce: acceptorNonce, connectorNonce: connectorNonce, generation: generation, from: from,
            to: to)
        return Array(HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: secret)))
    }

    /// Whether `mac` is the proof of `secret` (compared in constant time).
    static func isValid(
        _ mac: [UInt8], _ proof: Proof, secret: [UInt8], acceptorNonce: [UInt8], connectorNonce: [UInt8],
        generation: UInt64, from: Int, to: Int
    ) -> Bool {
        let message = self.message(
            proof, acceptorNonce: acceptorNonce, connectorNonce: connectorNonce, generation: generation, from: from,
            to: to)
        return HMAC<SHA256>.isValidAuthenticationCode(mac, authenticating: message, using: SymmetricKey(data: secret))
    }

    /// A fresh random nonce: four draws of 64 bits (one system call each), not one per byte.
    static func nonce() -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        var bytes: [UInt8] = []
        bytes.reserveCapacity(nonceBytes)
        for _ in 0..<(nonceBytes / 8) { withUnsafeBytes(of: generator.next()) { bytes += $0 } }
        return bytes
    }
}

/// The connector's hello (step 2 of `DataPlaneHandshake`), with its wire form.
struct DataPlaneHello: Equatable {
    /// Bytes on the wire: magic, version, generation, from, to, nonce, MAC.
    static let byteCount = 4 + 1 + 8 + 4 + 4 + DataPlaneHandshake.nonceBytes + DataPlaneHandshake.macBytes

    var generation: UInt64
    /// The connector's rank.
    var from: Int
    /// The acceptor's rank.
    var to: Int
    var connectorNonce: [UInt8]
    var mac: [UInt8]

    /// The hello that proves `secret` for the acceptor's nonce, with a fresh connector nonce.
    static func proving(secret: [UInt8], acceptorNonce: [UInt8], generation: UInt64, from: Int, to: Int)
        -> DataPlaneHello
    {
        let nonce = DataPlaneHandshake.nonce()
        return DataPlaneHello(
            generation: generation, from: from, to: to, connectorNonce: nonce,
            mac: DataPlaneHandshake.mac(
                .connect, secret: secret, acceptorNonce: acceptorNonce, connectorNonce: nonce, generation: generation,
                from: from, to: to)
        )
    }

    /// Whether the first bytes of a hello (any number of them) could still be one: garbage is
    /// refused at its first wrong byte.
    static func couldStart(_ bytes: [UInt8]) -> Bool {
        let prefix = DataPlaneHandshake.magic + [DataPlaneHandshake.version]
        let checked = min(bytes.count, prefix.count)
        return Array(bytes[0..<checked]) == Array(prefix[0..<checked])
    }

    /// Decodes a whole hello; nil when it is not one.
    init?(decoding bytes: [UInt8]) {
        guard bytes.count == Self.byteCount, Self.couldStart(bytes) else { return nil }
        self.generation = bytes[5..<13].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        self.from = Int(bytes[13..<17].reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
        self.to = Int(bytes[17..<21].reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
        self.connectorNonce = Array(bytes[21..<53])
        self.mac = Array(bytes[53..<85])
    }

    init(generation: UInt64, from: Int, to: Int, connectorNonce: [UInt8], mac: [UInt8]) {
        self.generation = generation
        self.from = from
        self.to = to
        self.connectorNonce = connectorNonce
        self.mac = mac
    }

    /// The wire form.
    func encoded() -> [UInt8] {
        var bytes = DataPlaneHandshake.magic + [DataPlaneHandshake.version]
        withUnsafeBytes(of: self.generation.bigEndian) { bytes += $0 }
        withUnsafeBytes(of: UInt32(self.from).bigEndian) { bytes += $0 }
        withUnsafeBytes(of: UInt32(self.to).bigEndian) { bytes += $0 }
        return bytes + self.connectorNonce + self.mac
    }

    /// Whether this hello proves `secret` for the acceptor's nonce (the acceptor's check).
    func isValid(secret: [UInt8], acceptorNonce: [UInt8]) -> Bool {
        DataPlaneHandshake.isValid(
            self.mac, .connect, secret: secret, acceptorNonce: acceptorNonce, connectorNonce: self.connectorNonce,
            generation: self.generation, from: self.from, to: self.to
        )
    }

    /// The acceptor's answer to this hello.
    func answer(secret: [UInt8], acceptorNonce: [UInt8]) -> [UInt8] {
        DataPlaneHandshake.mac(
            .accept, secret: secret, acceptorNonce: acceptorNonce, connectorNonce: self.connectorNonce,
            generation: self.generation, from: self.from, to: self.to
        )
    }

    /// Whether `answer` proves `secret` back (the connector's check).
    func isValidAnswer(_ answer: [UInt8], secret: [UInt8], acceptorNonce: [UInt8]) -> Bool {
        DataPlaneHandshake.isValid(
            answer, .accept, secret: secret, acceptorNonce: acceptorNonce, connectorNonce: self.connectorNonce,
            generation: self.generation, from: self.from, to: self.to
        )
    }
}
