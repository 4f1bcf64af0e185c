import ControlPlane
import Etcd
import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import RingmasterSecurity
import Synchronization
import Testing

/// Over TLS the etcd client offers HTTP/1.1 only, though etcd (like this test's server) offers
/// HTTP/2 as well: async-http-client's HTTP/2 path crashed coordinators during leader failovers
/// (swift-server/async-http-client#922).
@Suite("etcd client protocol")
struct EtcdClientProtocolTests {
    /// Records the protocol each TLS handshake agreed on, then closes the connection.
    final class Recorder: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let agreed: AsyncStream<String>.Continuation

        init(_ agreed: AsyncStream<String>.Continuation) { self.agreed = agreed }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if let event = event as? TLSUserEvent, case .handshakeCompleted(let negotiated) = event {
                self.agreed.yield(negotiated ?? "(none)")
                context.close(promise: nil)
            }
            context.fireUserInboundEventTriggered(event)
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func overTLS_theClientAgreesOnHTTP1_whenTheServerOffersHTTP2() async throws {
        let directory = try TestDirectory()
        let authority = try CertificateAuthority.loadOrCreate(directory: directory.path, now: Date())
        let key = KeyAndRequest.makeKey()
        let certificate = try authority.issue(
            publicKey: key.publicKey, identity: try PeerIdentity(role: .coordinator, name: "etcd"),
            notBefore: Date().addingTimeInterval(-60), notAfter: Date().addingTimeInterval(3600),
            ipAddresses: ["127.0.0.1"])
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: [
                .certificate(try NIOSSLCertificate(bytes: Array(try PEM.encode(certificate).utf8), format: .pem))
            ],
            privateKey: .privateKey(try NIOSSLPrivateKey(bytes: Array(try PEM.encode(key).utf8), format: .pem)))
        configuration.applicationProtocols = ["h2", "http/1.1"]
        let context = try NIOSSLContext(configuration: configuration)
        let (agreed, continuation) = AsyncStream.makeStream(of: String.self)
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context))
                    try channel.pipeline.syncOperations.addHandler(Recorder(continuation))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        defer { server.close(promise: nil) }
        let port = try #require(server.localAddress?.port)

        let client = EtcdClient(
            endpoints: ["127.0.0.1:\(port)"],
            tls: try EtcdTLS(caFile: "\(directory.path)/ca.crt", certificateFile: nil, keyFile: nil),
            timeout: .seconds(2))
        // The server closes each connection after its handshake: the call fails, as it should.
        #expect(throws: EtcdError.self) { _ = try client.get("/ringmaster/probe") }
        let first = try await withDeadline(seconds: 10, waitingFor: "a TLS handshake with the test server") {
            var iterator = agreed.makeAsyncIterator()
            return await iterator.next()
        }
        #expect(first == "http/1.1", "the client agreed on \(first ?? "nothing")")
    }
}
