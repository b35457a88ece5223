import CKernels
import Foundation
import RealModule

/// exp(x) in Float32 by range reduction and a degree-6 polynomial, written with plain arithmetic and bit
/// operations only so that loops over it vectorise (no libm call per element). Relative error ≤ 2.5e-7 over
/// the range where exp is finite and normal; returns 0 below -87.33 and saturates at exp(88.3).
@inlinable @inline(__always)
public func fastExp(_ x: Float) -> Float {
    let xc = min(max(x, -87.33), 88.3)
    // n = round(x / ln 2) with the 1.5·2^23 trick (round-to-nearest without a libm call).
    let magic: Float = 12_582_912
    let shifted = xc * 1.442_695_04 + magic
    let n = shifted - magic
    // r = x - n ln2, split into a high and a low part of ln2 for accuracy.
    let r = (xc - n * 0.693_145_75) - n * 1.428_606_8e-6
    // exp(r) on |r| ≤ ln2/2: Taylor coefficients up to r^6.
    var p: Float = 1.0 / 720
    p = p * r + 1.0 / 120
    p = p * r + 1.0 / 24
    p = p * r + 1.0 / 6
    p = p * r + 0.5
    p = p * r + 1
    p = p * r + 1
    let k = Int32(bitPattern: shifted.bitPattern) &- 0x4B40_0000
    let scale = Float(bitPattern: UInt32(bitPattern: (k &+ 127) << 23))
    return x < -87.33 ? 0 : p * scale
}

/// max_j x[j] over `count` ≥ 1 floats, 16 lanes at a time (a scalar `max` loop is one long dependency chain
/// of compare-and-select; this compiles to `maxps` on the baseline x86-64 target). NaN-free input assumed.
@inlinable @inline(__always)
public func rowMax(_ x: UnsafePointer<Float>, count n: Int) -> Float {
    var m16 = SIMD16<Float>(repeating: -.infinity)
    var j = 0
    while j + 16 <= n {
        let v = UnsafeRawPointer(x + j).loadUnaligned(as: SIMD16<Float>.self)
        m16 = m16.replacing(with: v, where: v .> m16)
        j += 16
    }
    var m = m16.max()
    while j < n { m = max(m, x[j]); j += 1 }
    return m
}

/// Reference of `rowMax`: the plain loop.
public func rowMaxReference(_ x: UnsafePointer<Float>, count n: Int) -> Float {
    var m = -Float.infinity
    for j in 0..<n { m = max(m, x[j]) }
    return m
}

/// Softmax numerator of a row, in place: x[j] = fastExp(x[j] − max x) for j < n ≥ 1; returns Σ_j x[j]. Runs
/// CKernels' AVX-512F or AVX2 kernel when the CPU has one (every element the same float as this loop gives; the
/// sum's terms in another order), else `expRowReference`. NaN-free input assumed.
@inlinable @inline(__always)
public func expRow(_ x: UnsafeMutablePointer<Float>, count n: Int) -> Float {
    if SIMDKernels.lanes > 0 { return compress_exp_row(x, n) }
    return expRowReference(x, count: n)
}

/// The portable loop of `expRow`.
@inlinable
public func expRowReference(_ x: UnsafeMutablePointer<Float>, count n: Int) -> Float {
    let m = rowMax(x, count: n)
    var s: Float = 0
    for j in 0..<n { let e = fastExp(x[j] - m); x[j] = e; s = Relaxed.sum(s, e) }
    return s
}

/// The SIMD kernel set this CPU runs (CKernels): 16 lanes (AVX-512F), 8 (AVX2), or 0 (the Swift loops; also when
/// `COMPRESS_KERNELS=0`).
public enum SIMDKernels {
    public static let lanes = Int(compress_kernels_lanes())

    /// Whether `compress_exp_row_bf16` runs here (AVX512-BF16 and the AVX-512 kernel set).
    public static let expRowBF16 = {
        var probe: Float = 0, out: UInt16 = 0
        return compress_exp_row_bf16(&probe, 1, &out) >= 0
    }()

    /// out[r] = act(gate[r]) ⊙ up[r] by CKernels (SiLU, or GELU-tanh when `gelu`); false (nothing written) when this
    /// CPU has no kernel set, and the caller runs its Swift loop.
    @inlinable
    public static func gated(out: UnsafeMutablePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>,
                             range r: Range<Int>, gelu: Bool) -> Bool {
        lanes > 0 && compress_gated_lanes(
            out + r.lowerBound, gate + r.lowerBound, up + r.lowerBound, r.count, gelu ? 1 : 0, Int32(lanes)) == 0
    }
}
