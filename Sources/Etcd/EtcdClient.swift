import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOSSL
import Synchronization

/// A key and its value as etcd holds them, with the revisions a transaction compares.
public struct EtcdKeyValue: Sendable, Hashable {
    public var key: String
    public var value: [UInt8]
    /// The revision of the change that created the key (0: the key does not exist).
    public var createRevision: Int64
    /// The revision of the last change to the key.
    public var modRevision: Int64
    /// The lease the key is attached to (0: none).
    public var lease: Int64
}

/// A condition of a transaction on one key.
public enum EtcdCondition: Sendable, Hashable {
    /// The key holds exactly this value (false when the key does not exist).
    case valueEquals(key: String, [UInt8])
    /// The key was created at this revision; 0 means the key does not exist.
    case createRevision(key: String, equals: Int64)
    /// The key was last changed at this revision; 0 means the key does not exist.
    case modRevision(key: String, equals: Int64)
}

/// An operation of a transaction's branch.
public enum EtcdOperation: Sendable, Hashable {
    /// Sets the key, attached to `lease` when it is given.
    case put(key: String, value: [UInt8], lease: Int64? = nil)
    /// Reads one key.
    case get(key: String)
    /// Reads every key that starts with the prefix.
    case getPrefix(String)
    /// Removes one key.
    case delete(key: String)
}

/// What a transaction did.
public struct EtcdTransactionResult: Sendable {
    /// Whether every condition of the guard held; when not, nothing else was looked at or done.
    public var guardHeld: Bool
    /// Whether every condition held, so that the `then` branch ran (else the `else` branch did).
    public var succeeded: Bool
    /// The store's revision after the transaction.
    public var revision: Int64
    /// For each `get` and `getPrefix` of the branch that ran, in order, what it read.
    public var reads: [[EtcdKeyValue]]
}

/// A client of an etcd v3 cluster through its JSON gateway (HTTP/1.1 over TLS or plain, one POST
/// per call on connections it keeps), with every endpoint of the cluster: a call goes to the
/// endpoint that answered last and, when that one cannot be reached or has no quorum, to the next.
/// Calls block until answered or until their deadline; they must not be made on an event loop.
///
/// A call that has been sent and then timed out is not sent again elsewhere (it may have been
/// carried out): it throws `outcomeUnknown`, and the caller decides.
///
/// Over TLS, the client looks at its files at most once a second, before a call: when they have
/// changed on disk and load, later calls go over new connections that use them (calls in flight
/// finish on the old ones), so a rotated certificate or CA needs no restart. Files that changed
/// but do not load (a rotation half done) leave the old ones in use; that is logged, and said in
/// the message of any call that then fails.
public final class EtcdClient: Sendable {
    /// The cluster's client endpoints, `host:port`.
    public let endpoints: [String]
    /// How long one call may take, all endpoints tried included.
    public let timeout: Duration
    /// `https` with TLS, else `http`.
    let scheme: String
    let logger: Logger
    /// The endpoint to try first: the one that answered last.
    let preferred = Mutex(0)
    /// The connections calls use now, and when the TLS files were last looked at.
    let current: Mutex<Current>

    /// How often, at most, the TLS files are looked at for a change.
    let reloadInterval: Duration

    /// The HTTP client of one set of TLS files: shut down when the last call using it has ended.
    final class Connections: Sendable {
        let http: HTTPClient
        let tls: EtcdTLS?

        init(tls: EtcdTLS?) {
            self.tls = tls
            var configuration = HTTPClient.Configuration(tlsConfiguration: tls?.configuration)
            // HTTP/1.1 only, as over plain HTTP: over TLS etcd offers HTTP/2, and async-http-client's
            // HTTP/2 handler crashed coordinators during leader failovers (a force-unwrap when a
            // stream fails after its request is gone: swift-server/async-http-client#922, open).
            configuration.httpVersion = .http1Only
            configuration.timeout = .init(connect: .milliseconds(500), read: nil)
            configuration.connectionPool = .init(idleTimeout: .seconds(30))
            self.http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        }

        // The last reference is dropped by a calling thread (calls never run on an event loop),
        // or by `EtcdClient.connections()` outside its lock, where blocking is allowed.
        deinit { try? self.http.syncShutdown() }
    }

    struct Current {
        var connections: Connections
        var checked: ContinuousClock.Instant
        /// Why the files, changed on disk, did not load at the last look (nil: they did, or did
        /// not change).
        var reloadFailure: String?
    }

    /// A client of the cluster at `endpoints` (`host:port` each, at least one), over TLS when
    /// `tls` is given (`etcds://`), else over plain HTTP, looking at the TLS files for a change at
    /// most once per `reloadInterval`. `logger` hears of TLS files reloaded or failing to.
    public init(
        endpoints: [String], tls: EtcdTLS? = nil, timeout: Duration = .seconds(3),
        reloadInterval: Duration = .seconds(1),
        logger: Logger = Logger(label: "ringmaster.etcd", factory: { _ in SwiftLogNoOpLogHandler() })
    ) {
        self.reloadInterval = reloadInterval
        precondition(!endpoints.isEmpty, "an etcd client needs at least one endpoint")
        self.endpoints = endpoints
        self.timeout = timeout
        self.scheme = tls == nil ? "http" : "https"
        self.logger = logger
        self.current = Mutex(Current(connections: Connections(tls: tls), checked: .now, reloadFailure: nil))
    }

    /// The TLS files in use now (nil: plain HTTP).
    public var tls: EtcdTLS? { self.current.withLock { $0.connections.tls } }

    /// The connections for a call: those of the TLS files as they are on disk now when they
    /// changed and load (looked at no more than once per `reloadInterval`), else those in use.
    func connections() -> Connections {
        let now = ContinuousClock.now
        let (inUse, due) = self.current.withLock { current -> (Connections, Bool) in
            guard current.connections.tls != nil, now - current.checked >= self.reloadInterval else {
                return (current.connections, false)
            }
            current.checked = now
            return (current.connections, true)
        }
        guard due, let tls = inUse.tls else { return inUse }
        let files: Logger.Metadata = [
            "ca": "\(tls.caFile ?? "system roots")", "certificate": "\(tls.certificateFile ?? "none")",
        ]
        do {
            guard let fresh = try tls.reloaded() else { return inUse }
            let replacement = Connections(tls: fresh)
            self.current.withLock {
                $0.connections = replacement
                $0.reloadFailure = nil
            }
            self.logger.notice("the etcd TLS files changed on disk: new calls use them", metadata: files)
            return replacement
        } catch {
            let reason = "\(error)"
            let first = self.current.withLock { current -> Bool in
                defer { current.reloadFailure = reason }
                return current.reloadFailure != reason
            }
            if first {
                self.logger.warning(
                    "the etcd TLS files changed on disk but do not load; the ones loaded before stay in use",
                    metadata: files.merging(["reason": "\(reason)"]) { $1 })
            }
            return inUse
        }
    }

    // MARK: - Keys

    /// The key's value and revisions, or nil when it does not exist.
    public func get(_ key: String) throws -> EtcdKeyValue? {
        let response: WireRangeResponse = try self.call(
            "kv/range", WireRangeRequest(key: WireBytes(key)), doing: "reading \(key)")
        return try (response.kvs ?? []).first.map(Self.keyValue)
    }

    /// Every key that starts with `prefix`, in key order.
    public func get(prefix: String) throws -> [EtcdKeyValue] {
        let response: WireRangeResponse = try self.call(
            "kv/range", WireRangeRequest(key: WireBytes(prefix), rangeEnd: Self.end(ofPrefix: prefix)),
            doing: "reading the keys under \(prefix)")
        return try (response.kvs ?? []).map(Self.keyValue)
    }

    /// Sets the key, attached to `lease` when it is given.
    public func put(_ key: String, _ value: [UInt8], lease: Int64? = nil) throws {
        let _: WirePutResponse = try self.call(
            "kv/put", WirePutRequest(key: WireBytes(key), value: WireBytes(value), lease: lease.map(WireInt64.init)),
            doing: "writing \(key)")
    }

    /// Removes the key; returns whether it existed.
    @discardableResult
    public func delete(_ key: String) throws -> Bool {
        let response: WireDeleteResponse = try self.call(
            "kv/deleterange", WireDeleteRequest(key: WireBytes(key)), doing: "deleting \(key)")
        return (response.deleted?.value ?? 0) > 0
    }

    /// Runs `then` if every condition holds, else `otherwise`, atomically; and all that only if
    /// every condition of `guard` holds (a leader's fence), else nothing.
    public func transaction(
        guard fence: [EtcdCondition] = [], if conditions: [EtcdCondition], then success: [EtcdOperation],
        else failure: [EtcdOperation] = [], doing what: String
    ) throws -> EtcdTransactionResult {
        var request = WireTxnRequest(
            compare: conditions.map(Self.wire), success: success.map(Self.wire), failure: failure.map(Self.wire))
        if !fence.isEmpty {
            // The caller's transaction inside one that checks the guard alone, so that the answer
            // tells which failed.
            request = WireTxnRequest(
                compare: fence.map(Self.wire), success: [WireRequestOp(requestTxn: request)], failure: [])
        }
        var response: WireTxnResponse = try self.call("kv/txn", request, doing: what)
        let revision = response.header?.revision?.value ?? 0
        if !fence.isEmpty {
            guard response.succeeded == true else {
                return EtcdTransactionResult(guardHeld: false, succeeded: false, revision: revision, reads: [])
            }
            guard let inner = response.responses?.first?.responseTxn else {
                throw EtcdError(.protocolError, "etcd answered a guarded transaction without the inner one's outcome")
            }
            response = inner
        }
        var reads: [[EtcdKeyValue]] = []
        for answer in response.responses ?? [] {
            if let range = answer.responseRange {
                reads.append(try (range.kvs ?? []).map(Self.keyValue))
            }
        }
        return EtcdTransactionResult(
            guardHeld: true, succeeded: response.succeeded ?? false, revision: revision, reads: reads)
    }

    // MARK: - Leases

    /// A new lease that expires `seconds` after its last keep-alive; returns its id and the TTL
    /// etcd granted (at least its own minimum).
    public func grantLease(seconds: Int64) throws -> (id: Int64, seconds: Int64) {
        let response: WireLeaseGrantResponse = try self.call(
            "lease/grant", WireLeaseGrantRequest(ttl: WireInt64(seconds)), doing: "granting a lease")
        if let error = response.error, !error.isEmpty {
            throw EtcdError(.refused, "etcd refused a lease: \(error)")
        }
        guard let id = response.id?.value, id != 0 else {
            throw EtcdError(.protocolError, "etcd granted a lease without an id")
        }
        return (id, response.ttl?.value ?? seconds)
    }

    /// Renews the lease; returns the seconds it now has, 0 when it has expired or was revoked.
    public func keepAlive(lease: Int64) throws -> Int64 {
        let response: WireStreamed<WireLeaseKeepAliveResponse> = try self.call(
            "lease/keepalive", WireLeaseID(id: WireInt64(lease)), doing: "renewing lease \(lease)")
        if let failure = response.error {
            throw EtcdError(.refused, "etcd refused to renew lease \(lease): \(failure.message ?? failure.error ?? "")")
        }
        return response.result?.ttl?.value ?? 0
    }

    /// Ends the lease now, removing the keys attached to it.
    public func revoke(lease: Int64) throws {
        let _: WireLeaseRevokeResponse = try self.call(
            "lease/revoke", WireLeaseID(id: WireInt64(lease)), doing: "revoking lease \(lease)")
    }

    // MARK: - Calls

    /// POSTs `request` to `/v3/PATH` on the preferred endpoint, then on the others while they
    /// cannot be reached or answer that they have no quorum, within `timeout`.
    func call<Request: Encodable, Response: Decodable>(
        _ path: String, _ request: Request, doing what: String
    ) throws -> Response {
        let body = try JSONEncoder().encode(request)
        let deadline = ContinuousClock.now + self.timeout
        let connections = self.connections()
        let first = self.preferred.withLock { $0 }
        var reasons: [String] = []
        for offset in 0..<self.endpoints.count {
            let index = (first + offset) % self.endpoints.count
            let endpoint = self.endpoints[index]
            let remaining = deadline - ContinuousClock.now
            guard remaining > .zero else { break }
            let outcome = self.post(
                body, to: "\(self.scheme)://\(endpoint)/v3/\(path)", within: remaining, over: connections)
            switch outcome {
            case .answered(let status, let data):
                if status == .ok {
                    self.preferred.withLock { $0 = index }
                    do {
                        return try JSONDecoder().decode(Response.self, from: data)
                    } catch {
                        throw EtcdError(
                            .protocolError,
                            "etcd at \(endpoint) answered \(what) with something that does not decode (\(error))")
                    }
                }
                let failure = try? JSONDecoder().decode(WireFailure.self, from: data)
                let text = failure?.message ?? failure?.error ?? String(decoding: data.prefix(200), as: UTF8.self)
                // 14 is gRPC's UNAVAILABLE: no leader, or the member is stopping; another may serve.
                if failure?.code == 14 || status == .serviceUnavailable || text.contains("no leader") {
                    reasons.append("\(endpoint): \(text)")
                    continue
                }
                // 4 is DEADLINE_EXCEEDED (our Grpc-Timeout ran out), 2 with "context deadline
                // exceeded" the same from inside etcd: the request may have been carried out.
                if failure?.code == 4 || status == .gatewayTimeout || text.contains("deadline exceeded")
                    || text.contains("timed out")
                {
                    throw EtcdError(
                        .outcomeUnknown,
                        "etcd at \(endpoint) timed out \(what); it may or may not have been done (\(text))")
                }
                throw EtcdError(.refused, "etcd at \(endpoint) refused \(what): \(text) (HTTP \(status.code))")
            case .unreachable(let reason):
                reasons.append("\(endpoint): \(reason)")
            case .noAnswer:
                throw EtcdError(
                    .outcomeUnknown,
                    "etcd at \(endpoint) did not answer \(what) within \(self.timeout); it may or may not have been done"
                )
            }
        }
        let check =
            reasons.contains { $0.contains(Self.tlsFailure) }
            ? "check that the cluster at \(self.endpoints.joined(separator: ",")) serves TLS, that --etcd-ca is the CA that signed its server certificates (for their IP address or name as given here), and that it accepts the --etcd-cert client certificate"
            : "check that the cluster at \(self.endpoints.joined(separator: ",")) is up and has a quorum"
        let reload = self.current.withLock { $0.reloadFailure }.map {
            "; the TLS files changed on disk but do not load, so the ones loaded before are in use (\($0)): finish writing them"
        }
        throw EtcdError(
            .unavailable,
            "no etcd endpoint served \(what) within \(self.timeout) (\(reasons.isEmpty ? "out of time" : reasons.joined(separator: "; "))); \(check)\(reload ?? "")"
        )
    }

    enum Outcome {
        case answered(HTTPResponseStatus, Data)
        /// The request could not be delivered: nothing was done.
        case unreachable(String)
        /// The request was sent and no answer came in time.
        case noAnswer
    }

    func post(_ body: Data, to url: String, within remaining: Duration, over connections: Connections) -> Outcome {
        let nanoseconds =
            remaining.components.seconds * 1_000_000_000 + remaining.components.attoseconds / 1_000_000_000
        // etcd holds a request it cannot serve (no quorum) for 7 s unless told a shorter deadline,
        // and with `hasleader` a member without a leader refuses at once, so another is tried.
        let headers: HTTPHeaders = [
            "Content-Type": "application/json",
            "Grpc-Timeout": "\(max(1, nanoseconds / 1_000_000))m",
            "Grpc-Metadata-hasleader": "true",
        ]
        let request: HTTPClient.Request
        do {
            request = try HTTPClient.Request(url: url, method: .POST, headers: headers, body: .data(body))
        } catch {
            return .unreachable("not a usable address (\(error))")
        }
        do {
            let response = try connections.http.execute(request: request, deadline: .now() + .nanoseconds(nanoseconds))
                .wait()
            return .answered(response.status, response.body.map { Data(buffer: $0) } ?? Data())
        } catch let error as HTTPClientError where error == .deadlineExceeded || error == .readTimeout {
            return .noAnswer
        } catch let error as HTTPClientError where error == .connectTimeout {
            return .unreachable("connection timed out")
        } catch  where Self.isTLS(error) {
            // A member that refuses the client's certificate may say so in the handshake (an
            // alert) or only after it (a close): the same hint either way.
            return .unreachable("\(Self.tlsFailure) (\(error); \(Self.closedHint(connections.tls)))")
        } catch let error as HTTPClientError where error == .remoteConnectionClosed {
            // What a member does, with no word, to plain HTTP on a TLS port and, under TLS 1.3, to
            // a client whose certificate it refuses (the refusal comes after the handshake).
            return .unreachable("etcd closed the connection (\(Self.closedHint(connections.tls)))")
        } catch {
            return .unreachable("\(error)")
        }
    }

    /// Why a member may close a connection without an answer, given how this client speaks to it.
    static func closedHint(_ tls: EtcdTLS?) -> String {
        switch tls {
        case nil:
            "if the cluster serves TLS, give the store as etcds:// with --etcd-ca, --etcd-cert and --etcd-key"
        case let tls? where tls.certificateFile == nil:
            "if the cluster asks for client certificates (--client-cert-auth), give --etcd-cert and --etcd-key"
        case let tls?:
            "if the cluster asks for client certificates, check that its --trusted-ca-file signed \(tls.certificateFile ?? "--etcd-cert")"
        }
    }

    /// What a failed handshake's reason starts with, so that the call's message can say what to check.
    static let tlsFailure = "the TLS handshake failed"

    static func isTLS(_ error: any Error) -> Bool {
        error is NIOSSLError || error is BoringSSLError || error is NIOSSLExtraError
    }

    // MARK: - Conversions

    static func keyValue(_ wire: WireKeyValue) throws -> EtcdKeyValue {
        EtcdKeyValue(
            key: String(decoding: wire.key.bytes, as: UTF8.self), value: wire.value?.bytes ?? [],
            createRevision: wire.createRevision?.value ?? 0, modRevision: wire.modRevision?.value ?? 0,
            lease: wire.lease?.value ?? 0)
    }

    /// The first key after every key that starts with `prefix`.
    static func end(ofPrefix prefix: String) -> WireBytes {
        var bytes = Array(prefix.utf8)
        while let last = bytes.last {
            if last < 0xff {
                bytes[bytes.count - 1] = last + 1
                return WireBytes(bytes)
            }
            bytes.removeLast()
        }
        return WireBytes([0])  // every key
    }

    static func wire(_ condition: EtcdCondition) -> WireCompare {
        switch condition {
        case .valueEquals(let key, let value):
            WireCompare(result: "EQUAL", target: "VALUE", key: WireBytes(key), value: WireBytes(value))
        case .createRevision(let key, let revision):
            WireCompare(result: "EQUAL", target: "CREATE", key: WireBytes(key), createRevision: WireInt64(revision))
        case .modRevision(let key, let revision):
            WireCompare(result: "EQUAL", target: "MOD", key: WireBytes(key), modRevision: WireInt64(revision))
        }
    }

    static func wire(_ operation: EtcdOperation) -> WireRequestOp {
        switch operation {
        case .put(let key, let value, let lease):
            WireRequestOp(
                requestPut: WirePutRequest(
                    key: WireBytes(key), value: WireBytes(value), lease: lease.map(WireInt64.init)))
        case .get(let key):
            WireRequestOp(requestRange: WireRangeRequest(key: WireBytes(key)))
        case .getPrefix(let prefix):
            WireRequestOp(requestRange: WireRangeRequest(key: WireBytes(prefix), rangeEnd: Self.end(ofPrefix: prefix)))
        case .delete(let key):
            WireRequestOp(requestDeleteRange: WireDeleteRequest(key: WireBytes(key)))
        }
    }
}
