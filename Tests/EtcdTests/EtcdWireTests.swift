import Foundation
import Testing

@testable import Etcd

/// What the client sends and how it reads the JSON gateway's answers (docs/etcd-gateway-notes.md):
/// 64-bit integers as strings, bytes as base64, fields at their defaults left out.
@Suite("etcd wire")
struct EtcdWireTests {
    @Test func test_storeAddresses_giveTheirEndpointsAndScheme_andMalformedOnesAreRefusedNamingTheForm() throws {
        #expect(
            try EtcdAddress(parsing: "etcd://127.0.0.1:2379") == .init(endpoints: ["127.0.0.1:2379"], secure: false))
        #expect(try EtcdAddress(parsing: "etcd://a:1, b:2,c:3").endpoints == ["a:1", "b:2", "c:3"])
        #expect(
            try EtcdAddress(parsing: "etcds://e1:2379,e2:2379")
                == .init(endpoints: ["e1:2379", "e2:2379"], secure: true))
        #expect(try EtcdAddress(parsing: "etcds://e1:2379,e2:2379").description == "etcds://e1:2379,e2:2379")
        for bad in [
            "127.0.0.1:2379", "etcd://", "etcds://", "etcd://a", "etcd://a:0", "etcd://:2379", "etcd://a:70000",
            "http://a:1", "https://a:1",
        ] {
            #expect {
                _ = try EtcdAddress(parsing: bad)
            } throws: { error in
                let message = "\(error)"
                return message.contains("HOST:PORT")
            }
        }
    }

    /// Plain HTTP is only for a cluster on this machine's loopback: the coordinator refuses it
    /// elsewhere unless told otherwise (docs/operating.md).
    @Test func test_anAddressIsLoopback_onlyWhenEveryEndpointIsLiterallyLoopback() throws {
        for loopback in ["etcd://127.0.0.1:2379", "etcd://localhost:1,127.8.9.10:2", "etcd://[::1]:2379"] {
            #expect(try EtcdAddress(parsing: loopback).isLoopback, "\(loopback)")
        }
        for remote in [
            "etcd://10.0.0.5:2379", "etcd://127.0.0.1:1,10.0.0.5:2", "etcd://e1:2379", "etcd://127.0.0.1.example:1",
            "etcd://127.0.0.256:1", "etcd://localhost.example:1",
        ] {
            #expect(try !EtcdAddress(parsing: remote).isLoopback, "\(remote)")
        }
    }

    @Test func test_aPrefixRange_endsAtThePrefixWithItsLastByteRaised() {
        #expect(EtcdClient.end(ofPrefix: "/ringmaster/jobs/").bytes == Array("/ringmaster/jobs0".utf8))
        #expect(EtcdClient.end(ofPrefix: "a\u{7f}").bytes == [0x61, 0x80])
        #expect(EtcdClient.end(ofPrefix: "").bytes == [0])
    }

    @Test func test_int64s_decodeFromStringsAndNumbers_andEncodeAsStrings() throws {
        let decoded = try JSONDecoder().decode([WireInt64].self, from: Data(#"["9223372036854775807", 5]"#.utf8))
        #expect(decoded.map(\.value) == [.max, 5])
        #expect(String(decoding: try JSONEncoder().encode(WireInt64(42)), as: UTF8.self) == #""42""#)
    }

    @Test func test_aFailedTransaction_withItsSucceededLeftOut_readsAsFailed() throws {
        let answer =
            #"{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","revision":"12","raft_term":"2"}}"#
        let response = try JSONDecoder().decode(WireTxnResponse.self, from: Data(answer.utf8))
        #expect(response.succeeded == nil && response.header?.revision?.value == 12)
        #expect(response.header?.clusterID == "14841639068965178418")
    }

    @Test func test_aRangeAnswer_decodesItsKeysValuesAndRevisions_withDefaultsForWhatIsLeftOut() throws {
        let answer = #"""
            {"header":{"revision":"7"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"3","version":"2","value":"YmFy"},
            {"key":"Zm9w","create_revision":"4","mod_revision":"4","version":"1"}],"count":"2"}
            """#
        let response = try JSONDecoder().decode(WireRangeResponse.self, from: Data(answer.utf8))
        let items = try (response.kvs ?? []).map(EtcdClient.keyValue)
        #expect(
            items == [
                EtcdKeyValue(key: "foo", value: Array("bar".utf8), createRevision: 2, modRevision: 3, lease: 0),
                EtcdKeyValue(key: "fop", value: [], createRevision: 4, modRevision: 4, lease: 0),
            ])
    }

    @Test func test_aGuardedTransaction_nestsTheCallersInsideOneThatComparesTheGuardAlone() throws {
        let inner = WireTxnRequest(
            compare: [EtcdClient.wire(.createRevision(key: "k", equals: 0))],
            success: [EtcdClient.wire(.put(key: "k", value: [1]))], failure: [EtcdClient.wire(.get(key: "k"))])
        let outer = WireTxnRequest(
            compare: [EtcdClient.wire(.valueEquals(key: "leader", Array("me".utf8)))],
            success: [WireRequestOp(requestTxn: inner)], failure: [])
        let json = try JSONSerialization.jsonObject(with: JSONEncoder().encode(outer)) as? [String: Any]
        let compare = (json?["compare"] as? [[String: Any]])?.first
        #expect(compare?["target"] as? String == "VALUE" && compare?["value"] as? String == "bWU=")
        let nested = ((json?["success"] as? [[String: Any]])?.first?["request_txn"]) as? [String: Any]
        let nestedCompare = (nested?["compare"] as? [[String: Any]])?.first
        #expect(nestedCompare?["target"] as? String == "CREATE" && nestedCompare?["create_revision"] as? String == "0")
        #expect((nested?["failure"] as? [[String: Any]])?.first?["request_range"] != nil)
    }
}
