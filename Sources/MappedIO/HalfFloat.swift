/// Exact IEEE binary16 -> binary32 conversion (handles subnormals, infinities and NaN payloads).
@inline(__always)
public func floatFromHalf(_ h: UInt16) -> Float {
    let sign = UInt32(h & 0x8000) << 16
    let exponent = UInt32(h >> 10) & 0x1F
    let mantissa = UInt32(h & 0x3FF)
    if exponent == 0x1F { return Float(bitPattern: sign | 0x7F80_0000 | (mantissa << 13)) }
    if exponent == 0 {
        let magnitude = Float(mantissa) * 0x1p-24
        return sign == 0 ? magnitude : -magnitude
    }
    return Float(bitPattern: sign | ((exponent + 112) << 23) | (mantissa << 13))
}

/// Exact bfloat16 -> binary32 conversion.
@inline(__always)
public func floatFromBFloat16(_ b: UInt16) -> Float {
    Float(bitPattern: UInt32(b) << 16)
}

/// Converts `count` little-endian binary16 values at `src` into `dst`.
public func convertHalfs(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
    for i in 0..<count {
        dst[i] = floatFromHalf(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 &* i, as: UInt16.self)))
    }
}

/// Converts `count` little-endian bfloat16 values at `src` into `dst`.
public func convertBFloat16s(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
    for i in 0..<count {
        dst[i] = floatFromBFloat16(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 &* i, as: UInt16.self)))
    }
}

/// Copies `count` little-endian binary32 values at `src` into `dst`.
public func convertFloats(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
    #if _endian(little)
    UnsafeMutableRawPointer(dst).copyMemory(from: src, byteCount: 4 &* count)
    #else
    for i in 0..<count {
        dst[i] = Float(bitPattern: UInt32(littleEndian: src.loadUnaligned(fromByteOffset: 4 &* i, as: UInt32.self)))
    }
    #endif
}
