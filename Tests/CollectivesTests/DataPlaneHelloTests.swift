import Crypto
import Testing

@testable import Collectives

/// The connector's hello on the wire, and the proofs both sides check.
@Suite("Data-plane hello")
struct DataPlaneHelloTests {
    static let secret = Array(SHA256.hash(data: Array("hello test secret".utf8)))

    @Test(arguments: [(UInt64(0), 0, 1), (1, 3, 0), (UInt64.max, Int(UInt32.max), 7)])
    func aHello_roundTripsThroughItsWireForm(generation: UInt64, from: Int, to: Int) throws {
        let acceptorNonce = DataPlaneHandshake.nonce()
        let hello = DataPlaneHello.proving(
            secret: Self.secret, acceptorNonce: acceptorNonce, generation: generation, from: from, to: to)
        let bytes = hello.encoded()
        #expect(bytes.count == DataPlaneHello.byteCount)
        let decoded = try #require(DataPlaneHello(decoding: bytes))
        #expect(decoded == hello)
        #expect(decoded.isValid(secret: Self.secret, acceptorNonce: acceptorNonce))
        // Every prefix of a real hello could still be one.
        for count in 0...bytes.count { #expect(DataPlaneHello.couldStart(Array(bytes.prefix(count)))) }
    }

    @Test func aProof_failsForAnotherSecret_nonce_generationOrRank() throws {
        let acceptorNonce = DataPlaneHandshake.nonce()
        let hello = DataPlaneHello.proving(
            secret: Self.secret, acceptorNonce: acceptorNonce, generation: 4, from: 2, to: 1)
        #expect(!hello.isValid(secret: Array(repeating: 9, count: 32), acceptorNonce: acceptorNonce))
        #expect(!hello.isValid(secret: Self.secret, acceptorNonce: DataPlaneHandshake.nonce()))
        var older = hello
        older.generation = 3
        #expect(!older.isValid(secret: Self.secret, acceptorNonce: acceptorNonce))
        var moved = hello
        moved.to = 0
        #expect(!moved.isValid(secret: Self.secret, acceptorNonce: acceptorNonce))
        // The answer proves the secret back, and only for this hello.
        let answer = hello.answer(secret: Self.secret, acceptorNonce: acceptorNonce)
        #expect(hello.isValidAnswer(answer, secret: Self.secret, acceptorNonce: acceptorNonce))
        #expect(
            !hello.isValidAnswer(hello.mac, secret: Self.secret, acceptorNonce: acceptorNonce),
            "a connect proof is not an accept proof")
    }

    @Test func garbage_isRefusedAtItsFirstWrongByte() {
        #expect(!DataPlaneHello.couldStart(Array("GET /".utf8)))
        #expect(!DataPlaneHello.couldStart(Array("RMDP".utf8) + [2]), "another version")
        #expect(DataPlaneHello(decoding: Array(repeating: 0, count: DataPlaneHello.byteCount)) == nil)
        #expect(DataPlaneHello(decoding: Array("RMDP".utf8) + [1]) == nil, "too short")
    }
}
