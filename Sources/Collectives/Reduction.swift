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

/// Vectorised elementwise kernels: `destination[i] += source[i]` and scaling, for each data
/// type. Half types are widened to Float32 lanes, added, and rounded back (to nearest, ties to
/// even), so each addition is one rounding. Loops work on 16 lanes at a time with unaligned
/// loads, then finish element by element.
public enum Reduction {
    /// `destination[i] += source[i]` for `count` elements of `type`.
    public static func add(
        _ source: UnsafeRawPointer,
        into destination: UnsafeMutableRawPointer,
        count: Int,
        type: DataType
    ) {
        switch type {
        case .float32: self.addFloat32(source, destination, count)
        case .float16: self.addFloat16(source, destination, count)
        case .bfloat16: self.addBFloat16(source, destination, count)
        }
    }

    /// `buffer[i] *= factor` for `count` elements of `type`.
    public static func scale(_ buffer: UnsafeMutableRawPointer, count: Int, type: DataType, by factor: Float) {
        switch type {
        case .float32:
            var index = 0
            let lanes = SIMD16<Float>(repeating: factor)
            while index + 16 <= count {
                let pointer = buffer + index * 4
                pointer.storeBytes(of: pointer.loadUnaligned(as: SIMD16<Float>.self) * lanes, as: SIMD16<Float>.self)
                index += 16
            }
            while index < count {
                let pointer = buffer + index * 4
                pointer.storeBytes(of: pointer.loadUnaligned(as: Float.self) * factor, as: Float.self)
                index += 1
            }
        case .float16:
            for index in 0..<count {
                let pointer = buffer + index * 2
                pointer.storeBytes(of: Float16(Float(pointer.loadUnaligned(as: Float16.self)) * factor), as: Float16.self)
            }
        case .bfloat16:
            for index in 0..<count {
                let pointer = buffer + index * 2
                let value = BFloat16.float(pointer.loadUnaligned(as: UInt16.self)) * factor
                pointer.storeBytes(of: BFloat16.bits(value), as: UInt16.self)
            }
        }
    }

    static func addFloat32(_ source: UnsafeRawPointer, _ destination: UnsafeMutableRawPointer, _ count: Int) {
        var index = 0
        while index + 16 <= count {
            let offset = index * 4
            let sum = (destination + offset).loadUnaligned(as: SIMD16<Float>.self) + (source + offset).loadUnaligned(as: SIMD16<Float>.self)
            (destination + offset).storeBytes(of: sum, as: SIMD16<Float>.self)
            index += 16
        }
        while index < count {
            let offset = index * 4
            let sum = (destination + offset).loadUnaligned(as: Float.self) + (source + offset).loadUnaligned(as: Float.self)
            (destination + offset).storeBytes(of: sum, as: Float.self)
            index += 1
        }
    }

    static func addFloat16(_ source: UnsafeRawPointer, _ destination: UnsafeMutableRawPointer, _ count: Int) {
        var index = 0
        while index + 16 <= count {
            let offset = index * 2
            let a = SIMD16<Float>((destination + offset).loadUnaligned(as: SIMD16<Float16>.self))
            let b = SIMD16<Float>((source + offset).loadUnaligned(as: SIMD16<Float16>.self))
            (destination + offset).storeBytes(of: SIMD16<Float16>(a + b), as: SIMD16<Float16>.self)
            index += 16
        }
        while index < count {
            let offset = index * 2
            let sum = Float((destination + offset).loadUnaligned(as: Float16.self)) + Float((source + offset).loadUnaligned(as: Float16.self))
            (destination + offset).storeBytes(of: Float16(sum), as: Float16.self)
            index += 1
        }
    }

    static func addBFloat16(_ source: UnsafeRawPointer, _ destination: UnsafeMutableRawPointer, _ count: Int) {
        var index = 0
        while index + 16 <= count {
            let offset = index * 2
            let a = BFloat16.floats((destination + offset).loadUnaligned(as: SIMD16<UInt16>.self))
            let b = BFloat16.floats((source + offset).loadUnaligned(as: SIMD16<UInt16>.self))
            (destination + offset).storeBytes(of: BFloat16.bits(a + b), as: SIMD16<UInt16>.self)
            index += 16
        }
        while index < count {
            let offset = index * 2
            let sum = BFloat16.float((destination + offset).loadUnaligned(as: UInt16.self))
                + BFloat16.float((source + offset).loadUnaligned(as: UInt16.self))
            (destination + offset).storeBytes(of: BFloat16.bits(sum), as: UInt16.self)
            index += 1
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

    @inline(__always)
    static func floats(_ bits: SIMD16<UInt16>) -> SIMD16<Float> {
        unsafeBitCast(SIMD16<UInt32>(truncatingIfNeeded: bits) &<< 16, to: SIMD16<Float>.self)
    }

    @inline(__always)
    static func bits(_ values: SIMD16<Float>) -> SIMD16<UInt16> {
        let raw = unsafeBitCast(values, to: SIMD16<UInt32>.self)
        var rounded = raw &+ 0x7FFF &+ ((raw &>> 16) & 1)
        // NaN lanes stay NaN (rounding could carry a NaN payload into infinity).
        let nan = values .!= values
        if any(nan) {
            rounded.replace(with: raw | 0x0040_0000, where: nan)
        }
        return SIMD16<UInt16>(truncatingIfNeeded: rounded &>> 16)
    }
}
