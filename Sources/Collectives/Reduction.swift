import CReduction

/// Element types an all-reduce works on.
public enum DataType: String, Sendable, Hashable, CaseIterable {
    /// IEEE binary32.
    case float32
    /// IEEE binary16; reduced in Float32 and rounded once per addition.
    case float16
    /// bfloat16 (the top half of a binary32); reduced in Float32 and rounded once per addition.
    case bfloat16

    /// Bytes per element.
    public var size: Int {
        switch self {
        case .float32: return 4
        case .float16, .bfloat16: return 2
        }
    }
}

/// How an all-reduce combines the ranks' buffers.
public enum ReduceOperation: String, Sendable, Hashable, CaseIterable {
    /// The elementwise sum.
    case sum
    /// The elementwise sum divided by the world size.
    case average
}

/// The elementwise kernels of the all-reduce, `destination[i] += source[i]` and scaling, for each
/// data type, in C (module `CReduction`): half types are widened to Float32, combined, and rounded
/// back (to nearest, ties to even), so each addition is one rounding. On x86-64 CPUs with AVX2 and
/// F16C the kernels use those (hardware binary16 conversions); elsewhere portable loops that the
/// compiler vectorises. Both give the same bits for every value but NaN payloads.
/// `ringmaster bench reduce` measures them against a memory copy.
public enum Reduction {
    /// A kernel implementation.
    public enum Kernels: Int32, Sendable, Hashable, CaseIterable {
        /// Plain C loops, vectorised by the compiler for the baseline instruction set.
        case portable = 0
        /// AVX2 and F16C (x86-64).
        case avx2 = 1
    }

    /// The fastest kernels this CPU runs, used by default.
    public static let best = Kernels(rawValue: rm_kernels_best()) ?? .portable

    /// Every kernel implementation this CPU runs.
    public static var available: [Kernels] { Kernels.allCases.filter { $0.rawValue <= Self.best.rawValue } }

    /// `destination[i] += source[i]` for `count` elements of `type`. The buffers must not overlap
    /// (or be the same one).
    public static func add(
        _ source: UnsafeRawPointer,
        into destination: UnsafeMutableRawPointer,
        count: Int,
        type: DataType,
        kernels: Kernels = Reduction.best
    ) {
        rm_add(type.code, min(kernels, Self.best).rawValue, source, destination, count)
    }

    /// The most sources ``sum(_:into:count:kernels:)`` adds.
    public static let maximumSumSources = Int(RM_SUM_MAX_SOURCES)

    /// `destination[i] = sources[0][i] + sources[1][i] + ...` for `count` float32 elements, added
    /// in that order, in one pass over the memory. The destination must not overlap a source;
    /// at most ``maximumSumSources`` sources.
    public static func sum(
        _ sources: [UnsafePointer<Float>], into destination: UnsafeMutablePointer<Float>, count: Int,
        kernels: Kernels = Reduction.best
    ) {
        precondition(
            (1...Self.maximumSumSources).contains(sources.count), "sum takes 1 to \(Self.maximumSumSources) sources")
        sources.map { Optional($0) }.withUnsafeBufferPointer {
            rm_sum_f32(min(kernels, Self.best).rawValue, $0.baseAddress, Int32(sources.count), destination, count)
        }
    }

    /// `buffer[i] *= factor` for `count` elements of `type`.
    public static func scale(
        _ buffer: UnsafeMutableRawPointer, count: Int, type: DataType, by factor: Float,
        kernels: Kernels = Reduction.best
    ) {
        rm_scale(type.code, min(kernels, Self.best).rawValue, buffer, count, factor)
    }
}

extension Reduction.Kernels: Comparable {
    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
}

extension DataType {
    /// The type's number in `CReduction`.
    var code: Int32 {
        switch self {
        case .float32: return Int32(RM_FLOAT32)
        case .float16: return Int32(RM_FLOAT16)
        case .bfloat16: return Int32(RM_BFLOAT16)
        }
    }
}

/// bfloat16 conversions: a bfloat16 is the top 16 bits of a binary32.
public enum BFloat16 {
    /// The Float32 value of bfloat16 bits.
    @inline(__always)
    public static func float(_ bits: UInt16) -> Float {
        Float(bitPattern: UInt32(bits) << 16)
    }

    /// bfloat16 bits of a Float32, rounded to nearest, ties to even (NaN stays NaN).
    @inline(__always)
    public static func bits(_ value: Float) -> UInt16 {
        let raw = value.bitPattern
        if value.isNaN { return UInt16(raw >> 16) | 0x40 }
        let rounded = raw &+ 0x7FFF &+ ((raw >> 16) & 1)
        return UInt16(rounded >> 16)
    }
}
