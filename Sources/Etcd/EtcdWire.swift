import Foundation

// The messages of etcd's v3 API as its JSON gateway speaks them (docs/etcd-gateway-notes.md):
// field names in snake case, bytes in base64, 64-bit integers as decimal strings, and any field at
// its default value (false, 0, empty) left out. Only the messages and fields Ringmaster uses are
// here, written for this client.

/// A 64-bit integer as the gateway writes it: a decimal string (it also accepts a number).
struct WireInt64: Codable, Sendable, Hashable {
    var value: Int64

    init(_ value: Int64) { self.value = value }

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let text = try? container.decode(String.self), let value = Int64(text) {
            self.value = value
        } else {
            self.value = try container.decode(Int64.self)
        }
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(String(self.value))
    }
}

/// Bytes as the gateway writes them: base64.
struct WireBytes: Codable, Sendable, Hashable {
    var bytes: [UInt8]

    init(_ bytes: [UInt8]) { self.bytes = bytes }
    init(_ text: String) { self.bytes = Array(text.utf8) }

    init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let data = Data(base64Encoded: text) else {
            throw DecodingError.dataCorrupted(
                .init(codingPath: decoder.codingPath, debugDescription: "a bytes field that is not base64"))
        }
        self.bytes = Array(data)
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(Data(self.bytes).base64EncodedString())
    }
}

/// Every answer's header: which cluster and member answered, at which revision.
struct WireHeader: Codable, Sendable {
    /// Unsigned 64-bit ids, above Int64's range as often as not: kept as the gateway's text.
    var clusterID: String?
    var memberID: String?
    var revision: WireInt64?
    var raftTerm: WireInt64?

    enum CodingKeys: String, CodingKey {
        case clusterID = "cluster_id"
        case memberID = "member_id"
        case revision
        case raftTerm = "raft_term"
    }
}

struct WireKeyValue: Codable, Sendable {
    var key: WireBytes
    var value: WireBytes?
    var createRevision: WireInt64?
    var modRevision: WireInt64?
    var version: WireInt64?
    var lease: WireInt64?

    enum CodingKeys: String, CodingKey {
        case key, value, version, lease
        case createRevision = "create_revision"
        case modRevision = "mod_revision"
    }
}

struct WireRangeRequest: Codable, Sendable {
    var key: WireBytes
    var rangeEnd: WireBytes?
    var limit: WireInt64?

    enum CodingKeys: String, CodingKey {
        case key, limit
        case rangeEnd = "range_end"
    }
}

struct WireRangeResponse: Codable, Sendable {
    var header: WireHeader?
    var kvs: [WireKeyValue]?
    var more: Bool?
    var count: WireInt64?
}

struct WirePutRequest: Codable, Sendable {
    var key: WireBytes
    var value: WireBytes
    var lease: WireInt64?
}

struct WirePutResponse: Codable, Sendable {
    var header: WireHeader?
}

struct WireDeleteRequest: Codable, Sendable {
    var key: WireBytes
    var rangeEnd: WireBytes?

    enum CodingKeys: String, CodingKey {
        case key
        case rangeEnd = "range_end"
    }
}

struct WireDeleteResponse: Codable, Sendable {
    var header: WireHeader?
    var deleted: WireInt64?
}

/// One condition of a transaction: `target` of `key` compared with the field of the same name.
struct WireCompare: Codable, Sendable {
    var result: String
    var target: String
    var key: WireBytes
    var value: WireBytes?
    var version: WireInt64?
    var createRevision: WireInt64?
    var modRevision: WireInt64?
    var lease: WireInt64?

    enum CodingKeys: String, CodingKey {
        case result, target, key, value, version, lease
        case createRevision = "create_revision"
        case modRevision = "mod_revision"
    }
}

/// One operation of a transaction's branch: exactly one field set.
struct WireRequestOp: Codable, Sendable {
    var requestRange: WireRangeRequest?
    var requestPut: WirePutRequest?
    var requestDeleteRange: WireDeleteRequest?
    /// A transaction inside the transaction (etcd 3.3 and later).
    var requestTxn: WireTxnRequest?

    enum CodingKeys: String, CodingKey {
        case requestRange = "request_range"
        case requestPut = "request_put"
        case requestDeleteRange = "request_delete_range"
        case requestTxn = "request_txn"
    }
}

struct WireResponseOp: Codable, Sendable {
    var responseRange: WireRangeResponse?
    var responsePut: WirePutResponse?
    var responseDeleteRange: WireDeleteResponse?
    var responseTxn: WireTxnResponse?

    enum CodingKeys: String, CodingKey {
        case responseRange = "response_range"
        case responsePut = "response_put"
        case responseDeleteRange = "response_delete_range"
        case responseTxn = "response_txn"
    }
}

struct WireTxnRequest: Codable, Sendable {
    var compare: [WireCompare]
    var success: [WireRequestOp]
    var failure: [WireRequestOp]
}

struct WireTxnResponse: Codable, Sendable {
    var header: WireHeader?
    /// Left out when false: the failure branch ran.
    var succeeded: Bool?
    var responses: [WireResponseOp]?
}

struct WireLeaseGrantRequest: Codable, Sendable {
    var ttl: WireInt64
    var id: WireInt64?

    enum CodingKeys: String, CodingKey {
        case ttl = "TTL"
        case id = "ID"
    }
}

struct WireLeaseGrantResponse: Codable, Sendable {
    var header: WireHeader?
    var id: WireInt64?
    var ttl: WireInt64?
    var error: String?

    enum CodingKeys: String, CodingKey {
        case header, error
        case id = "ID"
        case ttl = "TTL"
    }
}

struct WireLeaseID: Codable, Sendable {
    var id: WireInt64

    enum CodingKeys: String, CodingKey {
        case id = "ID"
    }
}

struct WireLeaseKeepAliveResponse: Codable, Sendable {
    var header: WireHeader?
    var id: WireInt64?
    /// Left out (0) once the lease has expired or was revoked.
    var ttl: WireInt64?

    enum CodingKeys: String, CodingKey {
        case header
        case id = "ID"
        case ttl = "TTL"
    }
}

/// The keep-alive endpoint streams: each answer is wrapped as `{"result": ...}`.
struct WireStreamed<Message: Codable & Sendable>: Codable, Sendable {
    var result: Message?
    var error: WireFailure?
}

struct WireLeaseRevokeResponse: Codable, Sendable {
    var header: WireHeader?
}

/// What the gateway answers instead when a call fails.
struct WireFailure: Codable, Sendable {
    var error: String?
    var message: String?
    var code: Int?
}
