import CZlib

/// Decompression of gzip (and zlib) data through the system zlib.
public enum Gzip {
    /// Output is produced in pieces of this many bytes.
    static let chunkSize = 64 * 1024

    /// The decompressed contents of gzip or zlib `bytes` (the header is detected automatically).
    ///
    /// Concatenated gzip members are decompressed one after another, as `gunzip` does. Throws
    /// ``WorkloadError/Code/corruptCompressedData`` when the bytes are not valid compressed data
    /// or end before the compressed stream does.
    public static func decompress(_ bytes: [UInt8]) throws -> [UInt8] {
        var stream = z_stream()
        // 15 + 32: the largest window, and detect a gzip or zlib header by itself.
        let initResult = ringmaster_inflateInit2(&stream, 15 + 32)
        guard initResult == Z_OK else {
            throw WorkloadError(
                .corruptCompressedData, "zlib could not start decompressing (\(self.describe(initResult, stream)))")
        }
        defer { inflateEnd(&stream) }

        var output: [UInt8] = []
        output.reserveCapacity(bytes.count * 4)
        var chunk = [UInt8](repeating: 0, count: self.chunkSize)

        try bytes.withUnsafeBufferPointer { input in
            guard let base = input.baseAddress, input.count > 0 else {
                throw WorkloadError(.corruptCompressedData, "the compressed data is empty; expected a gzip stream")
            }
            stream.next_in = UnsafeMutablePointer(mutating: base)
            stream.avail_in = 0
            var remaining = input.count
            var finished = false
            while !finished {
                if stream.avail_in == 0 && remaining > 0 {
                    let take = min(remaining, Int(UInt32.max))
                    stream.avail_in = UInt32(take)
                    remaining -= take
                }
                let result: Int32 = chunk.withUnsafeMutableBufferPointer { out in
                    stream.next_out = out.baseAddress
                    stream.avail_out = UInt32(out.count)
                    return inflate(&stream, Z_NO_FLUSH)
                }
                let produced = self.chunkSize - Int(stream.avail_out)
                output.append(contentsOf: chunk[0..<produced])
                switch result {
                case Z_OK:
                    if produced == 0 && stream.avail_in == 0 && remaining == 0 {
                        throw self.truncated(output.count)
                    }
                case Z_STREAM_END:
                    if stream.avail_in == 0 && remaining == 0 {
                        finished = true
                    } else {
                        // Another gzip member follows.
                        let resetResult = inflateReset(&stream)
                        guard resetResult == Z_OK else {
                            throw WorkloadError(
                                .corruptCompressedData,
                                "zlib could not restart after a gzip member (\(self.describe(resetResult, stream)))")
                        }
                    }
                case Z_BUF_ERROR:
                    // No progress was possible: the input ended inside the stream.
                    throw self.truncated(output.count)
                default:
                    throw WorkloadError(
                        .corruptCompressedData,
                        "the data is not valid gzip after \(output.count) decompressed bytes (\(self.describe(result, stream)))"
                    )
                }
            }
        }
        return output
    }

    static func truncated(_ produced: Int) -> WorkloadError {
        WorkloadError(
            .corruptCompressedData,
            "the gzip data ends before its stream does (after \(produced) decompressed bytes); the file is cut short"
        )
    }

    /// zlib's own message for a result code, with the code's name.
    static func describe(_ result: Int32, _ stream: z_stream) -> String {
        let name: String
        switch result {
        case Z_DATA_ERROR: name = "Z_DATA_ERROR"
        case Z_MEM_ERROR: name = "Z_MEM_ERROR"
        case Z_STREAM_ERROR: name = "Z_STREAM_ERROR"
        case Z_BUF_ERROR: name = "Z_BUF_ERROR"
        case Z_VERSION_ERROR: name = "Z_VERSION_ERROR"
        case Z_NEED_DICT: name = "Z_NEED_DICT"
        default: name = "zlib result \(result)"
        }
        if let message = stream.msg {
            return "\(name): \(String(cString: message))"
        }
        return name
    }
}
