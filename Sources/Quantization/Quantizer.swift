// Weight-only integer quantization, group-wise along the input dimension (issue 6 groundwork).
//
// A row of K weights is cut into groups of G consecutive weights (K a multiple of G). Per group:
//   asymmetric, b bits:  s = (max - min) / (2^b - 1),  q = clamp(round((w - min) / s), 0, 2^b - 1),  w' = min + s·q
//   symmetric, b bits:   s = max|w| / (2^(b-1) - 1),   q = clamp(round(w / s), -(2^(b-1) - 1), 2^(b-1) - 1),
//                        stored as q + 2^(b-1),        w' = s·q
// Round-to-nearest gives |w - w'| ≤ s/2 for every weight of the group. Codes are bit-packed little-endian:
// code i occupies bits [i·b, (i+1)·b) of the byte stream.

/// A quantization scheme: bits per code, group size, symmetric or asymmetric.
public struct QuantFormat: Equatable, Hashable, Sendable, CustomStringConvertible {
    public static let supportedBits = [2, 3, 4, 5, 6, 8]
    public let bits: Int
    public let groupSize: Int
    public let symmetric: Bool

    public init(bits: Int, groupSize: Int, symmetric: Bool) throws {
        guard Self.supportedBits.contains(bits) else {
            throw QuantizationError("bits \(bits) is not supported (supported: \(Self.supportedBits.map(String.init).joined(separator: ", ")))")
        }
        guard groupSize >= 1 else { throw QuantizationError("group size must be positive, got \(groupSize)") }
        self.bits = bits; self.groupSize = groupSize; self.symmetric = symmetric
    }

    public var description: String { "q\(bits)_g\(groupSize)_\(symmetric ? "sym" : "asym")" }
    /// Largest stored code.
    public var maxCode: Int { (1 << bits) - 1 }
    /// Bytes of packed codes for `count` weights.
    public func codeBytes(_ count: Int) -> Int { (count * bits + 7) / 8 }
}

public struct QuantizationError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Packs `codes` (each < 2^bits) into a little-endian bit stream.
public func packCodes(_ codes: [UInt8], bits: Int) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: (codes.count * bits + 7) / 8)
    var bit = 0
    for c in codes {
        precondition(Int(c) < 1 << bits, "code \(c) does not fit in \(bits) bits")
        var v = UInt16(c) << UInt16(bit % 8)
        var byte = bit / 8
        while v != 0 { out[byte] |= UInt8(v & 0xff); v >>= 8; byte += 1 }
        bit += bits
    }
    return out
}

/// The first `count` codes of a packed stream.
public func unpackCodes(_ packed: [UInt8], bits: Int, count: Int) -> [UInt8] {
    precondition(packed.count * 8 >= count * bits, "\(packed.count) bytes hold fewer than \(count) codes of \(bits) bits")
    let mask = UInt16((1 << bits) - 1)
    return (0..<count).map { i in
        let bit = i * bits, byte = bit / 8
        var v = UInt16(packed[byte])
        if byte + 1 < packed.count { v |= UInt16(packed[byte + 1]) << 8 }
        return UInt8((v >> UInt16(bit % 8)) & mask)
    }
}

/// Round-to-nearest quantization of `weights` (count a multiple of the group size): codes (unpacked),
/// and per group a scale and a minimum (the minimum is 0 for symmetric formats).
public func quantizeRTN(_ weights: [Float], format f: QuantFormat) throws -> (codes: [UInt8], scales: [Float], mins: [Float]) {
    guard weights.count % f.groupSize == 0 else {
        throw QuantizationError("\(weights.count) weights are not a whole number of groups of \(f.groupSize)")
    }
    let groups = weights.count / f.groupSize
    var codes = [UInt8](repeating: 0, count: weights.count), scales = [Float](repeating: 0, count: groups), mins = scales
    for g in 0..<groups {
        let w = weights[(g * f.groupSize)..<((g + 1) * f.groupSize)]
        if f.symmetric {
            let half = (1 << (f.bits - 1)) - 1
            let s = (w.map(abs).max() ?? 0) / Float(half)
            scales[g] = s
            for (i, x) in zip(w.indices, w) {
                let q = s > 0 ? max(-half, min(half, Int((x / s).rounded()))) : 0
                codes[i] = UInt8(q + half + 1)
            }
        } else {
            let lo = w.min() ?? 0, hi = w.max() ?? 0
            let s = (hi - lo) / Float(f.maxCode)
            scales[g] = s; mins[g] = lo
            for (i, x) in zip(w.indices, w) {
                codes[i] = UInt8(s > 0 ? max(0, min(f.maxCode, Int(((x - lo) / s).rounded()))) : 0)
            }
        }
    }
    return (codes, scales, mins)
}

/// Weights from codes, scales and minimums (the inverse map of `quantizeRTN`).
public func dequantize(codes: [UInt8], scales: [Float], mins: [Float], format f: QuantFormat) -> [Float] {
    let offset = f.symmetric ? 1 << (f.bits - 1) : 0
    return codes.indices.map { i in
        let g = i / f.groupSize
        return mins[g] + scales[g] * Float(Int(codes[i]) - offset)
    }
}
