import Foundation

/// Float32 values encoded as little-endian float32, float16 or bfloat16 bytes (round to nearest even), with the
/// conversion error measured against the float32 values.
enum FloatEncoding {
    /// bfloat16 bits of x, rounded to nearest even (x finite).
    @inline(__always) static func bfloat16Bits(_ x: Float) -> UInt16 {
        let b = x.bitPattern
        return UInt16(truncatingIfNeeded: (b &+ 0x7FFF &+ ((b >> 16) & 1)) >> 16)
    }

    /// The values in `dtype`; throws (naming `what`) when a value overflows the type.
    static func encode(
        _ values: UnsafeBufferPointer<Float>, as dtype: ExportDType, what: String
    ) throws -> (bytes: [UInt8], error: ConversionError) {
        var err = ConversionError()
        switch dtype {
        case .f32:
            return (Array(UnsafeRawBufferPointer(values)), err)
        case .f16:
            var out = [UInt8](repeating: 0, count: 2 * values.count)
            try out.withUnsafeMutableBytes { raw in
                for (i, x) in values.enumerated() {
                    let h = Float16(x)
                    guard h.isFinite else {
                        throw ExportError(
                            "\(what): value \(x) at element \(i) overflows float16 (largest 65504); export with "
                                + "--dtype f32 or bf16")
                    }
                    raw.storeBytes(of: h.bitPattern.littleEndian, toByteOffset: 2 * i, as: UInt16.self)
                    if Float(h) != x {
                        err.add(exported: Float(h), ours: x)
                    } else {
                        err.sumSquared += Double(x) * Double(x)
                    }
                }
            }
            return (out, err)
        case .bf16:
            var out = [UInt8](repeating: 0, count: 2 * values.count)
            try out.withUnsafeMutableBytes { raw in
                for (i, x) in values.enumerated() {
                    let bits = bfloat16Bits(x)
                    let back = Float(bitPattern: UInt32(bits) << 16)
                    guard back.isFinite else {
                        throw ExportError("\(what): value \(x) at element \(i) overflows bfloat16")
                    }
                    raw.storeBytes(of: bits.littleEndian, toByteOffset: 2 * i, as: UInt16.self)
                    if back != x { err.add(exported: back, ours: x) } else { err.sumSquared += Double(x) * Double(x) }
                }
            }
            return (out, err)
        }
    }

    static func encode(
        _ values: [Float], as dtype: ExportDType, what: String
    ) throws -> (bytes: [UInt8], error: ConversionError) {
        try values.withUnsafeBufferPointer { try encode($0, as: dtype, what: what) }
    }
}
