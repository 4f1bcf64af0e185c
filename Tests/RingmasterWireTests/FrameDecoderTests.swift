import Crypto
import Foundation
import NIOCore
import SwiftProtobuf
import Testing

@testable import RingmasterWire

@Suite("Frame decoder")
struct FrameDecoderTests {
    // MARK: - Fixtures

    /// A few envelopes of different kinds and sizes.
    static func sampleEnvelopes() -> [Envelope] {
        var hello = Envelope()
        hello.requestID = 1
        hello.agentHello = .with {
            $0.agentVersion = "0.1.0"
            $0.gpus = 8
            $0.dataPlaneAddresses = ["10.0.0.1:7700", "10.0.0.1:7701"]
        }
        var assignment = Envelope()
        assignment.requestID = 0
        assignment.assignment = .with {
            $0.jobID = "job-1"
            $0.generation = 7
            $0.rank = 3
            $0.worldSize = 4
            $0.dataPlaneSecret = Data(repeating: 0xAB, count: 32)
            $0.workloadSpec = String(repeating: "x", count: 5000)
        }
        var error = Envelope.error(.permissionDenied, "no", requestID: 99)
        error.requestID = 99
        var heartbeat = Envelope()
        heartbeat.heartbeat = .with {
            $0.jobID = "job-1"
            $0.generation = 7
        }
        return [hello, assignment, error, heartbeat]
    }

    static func frames(_ envelopes: [Envelope]) throws -> [UInt8] {
        var buffer = ByteBuffer()
        for envelope in envelopes {
            try FrameEncoder.write(envelope, into: &buffer)
        }
        return Array(buffer.readableBytesView)
    }

    /// Feeds `chunks` to a fresh decoder and returns what it decoded, and the error if one was thrown.
    static func decode(
        _ chunks: [[UInt8]],
        limit: Int = FrameLimits.defaultMaximumPayloadBytes,
        atEOF: Bool = true
    ) -> (envelopes: [Envelope], error: WireError?, maximumBuffered: Int) {
        let processor = NIOSingleStepByteToMessageProcessor(FrameDecoder(maximumPayloadBytes: limit))
        var envelopes: [Envelope] = []
        var maximumBuffered = 0
        do {
            for chunk in chunks {
                try processor.process(buffer: ByteBuffer(bytes: chunk)) { envelopes.append($0) }
                maximumBuffered = max(maximumBuffered, processor.unprocessedBytes)
            }
            if atEOF {
                try processor.finishProcessing(seenEOF: true) { envelopes.append($0) }
            }
            return (envelopes, nil, maximumBuffered)
        } catch let error as WireError {
            return (envelopes, error, maximumBuffered)
        } catch {
            Issue.record("unexpected error type \(type(of: error)): \(error)")
            return (envelopes, nil, maximumBuffered)
        }
    }

    // MARK: - Splits

    @Test func wholeStream_decodesEveryFrameInOrder() throws {
        let envelopes = Self.sampleEnvelopes()
        let result = Self.decode([try Self.frames(envelopes)])
        #expect(result.error == nil)
        #expect(result.envelopes == envelopes)
    }

    @Test func bytesFedOneAtATime_decodeTheSameFrames() throws {
        let envelopes = Self.sampleEnvelopes()
        let bytes = try Self.frames(envelopes)
        let result = Self.decode(bytes.map { [$0] })
        #expect(result.error == nil)
        #expect(result.envelopes == envelopes)
    }

    @Test(arguments: 0..<50)
    func randomSplits_decodeTheSameFrames(seed: Int) throws {
        var generator = SplitMix64(seed: UInt64(seed))
        let envelopes = Self.sampleEnvelopes()
        let bytes = try Self.frames(envelopes)
        var chunks: [[UInt8]] = []
        var index = 0
        while index < bytes.count {
            let length = Int.random(in: 1...max(1, bytes.count / 3), using: &generator)
            chunks.append(Array(bytes[index..<min(index + length, bytes.count)]))
            index += length
        }
        let result = Self.decode(chunks)
        #expect(result.error == nil)
        #expect(result.envelopes == envelopes)
    }

    // MARK: - Refusals

    @Test func frameOverTheLimit_isRefusedFromItsHeaderAlone() {
        // Only the 4-byte header arrives: the refusal must not wait for (or buffer) the payload.
        let header: [UInt8] = [0x00, 0x00, 0x10, 0x01]  // 4097 bytes declared
        let result = Self.decode([header], limit: 4096, atEOF: false)
        #expect(result.error?.code == .frameTooLarge)
        #expect(result.envelopes.isEmpty)
    }

    @Test func defaultLimit_is16MiB_andOneByteMoreIsRefused() throws {
        #expect(FrameDecoder().maximumPayloadBytes == 16 * 1024 * 1024)
        let length = UInt32(16 * 1024 * 1024 + 1)
        let header = withUnsafeBytes(of: length.bigEndian) { Array($0) }
        let result = Self.decode([header], atEOF: false)
        #expect(result.error?.code == .frameTooLarge)
    }

    @Test func zeroLengthFrame_isRefused() {
        let result = Self.decode([[0, 0, 0, 0]])
        #expect(result.error?.code == .zeroLengthFrame)
    }

    @Test func streamEndingInsideAFrame_isTruncated_andNothingIsDispatched() throws {
        var admin = Envelope()
        admin.adminRequest = .with { $0.tokenCreate = .with { $0.ttlSeconds = 60 } }
        let bytes = try Self.frames([admin])
        for cut in 1..<bytes.count {
            let result = Self.decode([Array(bytes[..<cut])])
            #expect(result.error?.code == .truncatedFrame, "cut at \(cut)")
            #expect(result.envelopes.isEmpty, "cut at \(cut)")
        }
    }

    @Test func undecodablePayload_isRefused_andFramesBeforeItStillArrive() throws {
        let good = try Self.frames([Self.sampleEnvelopes()[0]])
        let garbage: [UInt8] = [0, 0, 0, 6, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]
        let result = Self.decode([good + garbage])
        #expect(result.envelopes.count == 1)
        #expect(result.error?.code == .undecodableFrame)
    }

    @Test func errorDescriptions_neverQuotePayloadBytes() throws {
        var secretBearing = Envelope()
        secretBearing.assignment = .with { $0.dataPlaneSecret = Data("SECRET-SENTINEL-123".utf8) }
        var bytes = try Self.frames([secretBearing])
        bytes.removeLast()
        let result = Self.decode([bytes])
        let description = try #require(result.error).description
        #expect(!description.contains("SECRET-SENTINEL"))
    }

    // MARK: - Fuzzing

    @Test func randomBytes_neverCrash_andBufferStaysWithinTheLimit() {
        var generator = SplitMix64(seed: 0xF00D)
        let limit = 64 * 1024
        for _ in 0..<2000 {
            let count = Int.random(in: 0...512, using: &generator)
            let bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let result = Self.decode([bytes], limit: limit)
            #expect(result.maximumBuffered <= limit + FrameLimits.headerBytes)
        }
    }

    @Test func mutatedValidFrames_neverCrash_andBufferStaysWithinTheLimit() throws {
        var generator = SplitMix64(seed: 0xBEEF)
        let limit = 64 * 1024
        let original = try Self.frames(Self.sampleEnvelopes())
        var decodedSome = 0
        for _ in 0..<3000 {
            var bytes = original
            for _ in 0..<Int.random(in: 1...8, using: &generator) {
                let index = Int.random(in: 0..<bytes.count, using: &generator)
                switch Int.random(in: 0..<4, using: &generator) {
                case 0: bytes[index] = UInt8.random(in: 0...255, using: &generator)
                case 1: bytes[index] ^= 1 << UInt8.random(in: 0..<8, using: &generator)
                case 2: bytes.insert(UInt8.random(in: 0...255, using: &generator), at: index)
                default: if bytes.count > 1 { bytes.remove(at: index) }
                }
            }
            // Feed in random pieces, as a network would.
            var chunks: [[UInt8]] = []
            var start = 0
            while start < bytes.count {
                let length = Int.random(in: 1...64, using: &generator)
                chunks.append(Array(bytes[start..<min(start + length, bytes.count)]))
                start += length
            }
            let result = Self.decode(chunks, limit: limit)
            decodedSome += result.envelopes.count
            #expect(result.maximumBuffered <= limit + FrameLimits.headerBytes)
        }
        // Mutations that miss the headers still decode: the fuzzer exercised both paths.
        #expect(decodedSome > 0)
    }

    // MARK: - Encoder

    @Test func encoder_refusesAMessageOverTheLimit() {
        var big = Envelope()
        big.assignment = .with { $0.workloadSpec = String(repeating: "y", count: 2048) }
        var buffer = ByteBuffer()
        #expect(throws: WireError.self) {
            try FrameEncoder.write(big, into: &buffer, maximumPayloadBytes: 1024)
        }
        #expect(buffer.readableBytes == 0)
    }

    @Test func encoder_writesBigEndianLengthThenPayload() throws {
        var heartbeat = Envelope()
        heartbeat.heartbeat = .with { $0.generation = 1 }
        var buffer = ByteBuffer()
        try FrameEncoder.write(heartbeat, into: &buffer)
        let payload: [UInt8] = try heartbeat.serializedBytes()
        #expect(buffer.readInteger(endianness: .big, as: UInt32.self) == UInt32(payload.count))
        #expect(Array(buffer.readableBytesView) == payload)
    }
}

@Suite("Schema")
struct SchemaTests {
    @Test func generatedCode_matchesTheProtoSources() throws {
        let protoDirectory = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("proto")
        let files = try FileManager.default.contentsOfDirectory(atPath: protoDirectory.path)
            .filter { $0.hasSuffix(".proto") }
            .sorted()
        #expect(!files.isEmpty, "no .proto files in \(protoDirectory.path)")
        var bytes = Data()
        for file in files {
            bytes.append(try Data(contentsOf: protoDirectory.appendingPathComponent(file)))
        }
        let digest = SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
        #expect(
            digest == ringmasterSchemaSHA256,
            "proto/ changed without regenerating: run scripts/generate-proto.sh and commit Sources/RingmasterWire/Generated"
        )
    }

    @Test func everyJobMessage_carriesJobIDAndGeneration() throws {
        // Fencing depends on it: a message that belongs to a job names the job and generation.
        // Read the text format of each message with its fields set, so the names are the proto's.
        let jobMessages: [any SwiftProtobuf.Message] = [
            Ringmaster_V1_Heartbeat.with {
                $0.jobID = "j"
                $0.generation = 1
            },
            Ringmaster_V1_HeartbeatAck.with {
                $0.jobID = "j"
                $0.generation = 1
            },
            Ringmaster_V1_Assignment.with {
                $0.jobID = "j"
                $0.generation = 1
            },
            Ringmaster_V1_StepReport.with {
                $0.jobID = "j"
                $0.generation = 1
            },
            Ringmaster_V1_Leave.with {
                $0.jobID = "j"
                $0.generation = 1
            },
            Ringmaster_V1_Drain.with {
                $0.jobID = "j"
                $0.generation = 1
            },
            Ringmaster_V1_Abort.with {
                $0.jobID = "j"
                $0.generation = 1
            },
            Ringmaster_V1_CheckpointShardReady.with {
                $0.jobID = "j"
                $0.generation = 1
            },
            Ringmaster_V1_CheckpointCommitted.with {
                $0.jobID = "j"
                $0.generation = 1
            },
        ]
        var options = JSONEncodingOptions()
        options.preserveProtoFieldNames = true
        for message in jobMessages {
            let json = try message.jsonString(options: options)
            #expect(json.contains("\"job_id\":\"j\""), "\(type(of: message)): \(json)")
            #expect(json.contains("\"generation\":\"1\""), "\(type(of: message)): \(json)")
        }
    }
}

/// A small deterministic generator, so that a failing fuzz case can be replayed.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { self.state = seed }
    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
