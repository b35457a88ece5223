import CKernels
import DNNLBridge
import XCTest
@testable import TensorCore

/// CKernels' SIMD kernels against their portable Swift loops: every element the same float, sums within a few ulps
/// per term (only the order of the terms differs). Skipped, with the reason, on a CPU with neither AVX-512F nor AVX2.
final class SIMDKernelTests: XCTestCase {
    override func setUpWithError() throws {
        if SIMDKernels.lanes == 0 { throw XCTSkip("no AVX-512F or AVX2 on this CPU (or COMPRESS_KERNELS=0)") }
    }

    func testExpRowMatchesTheSwiftLoop() {
        var rng = SplitMix64(seed: 29)
        // Lengths around every lane count and tail; scores spread like attention's, plus a range that underflows.
        for n in [1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 100, 128, 129, 1000, 2048] {
            for spread: Float in [1, 30, 200] {
                let x = (0..<n).map { _ in Float.random(in: -spread...spread, using: &rng) }
                var simd = x, portable = x
                let r = portable.withUnsafeMutableBufferPointer { expRowReference($0.baseAddress!, count: n) }
                for lanes in [16, 8] where lanes <= SIMDKernels.lanes {
                    simd = x
                    let s = simd.withUnsafeMutableBufferPointer {
                        compress_exp_row_lanes($0.baseAddress!, n, Int32(lanes))
                    }
                    let what = "\(lanes) lanes, n \(n), spread \(spread)"
                    XCTAssertEqual(simd.map(\.bitPattern), portable.map(\.bitPattern), what)
                    XCTAssertEqual(s, r, accuracy: r * Float(n) * 2 * Float.ulpOfOne, "sum, \(what)")
                }
                // And against libm in Double: the row's max maps to exactly 1, every element within 2.5e-7 relative.
                let m = x.max()!
                for j in 0..<n {
                    let e = Foundation.exp(Double(x[j] - m))
                    XCTAssertEqual(Double(simd[j]), e, accuracy: 2.5e-7 * e + 1e-37, "element \(j) of \(n)")
                }
            }
        }
    }

    /// The bf16-writing exp row (attention's probabilities in bf16) against the float kernel plus the bf16
    /// conversion the products use: every element bitwise, the sum bitwise (same terms, same order), x unchanged.
    func testExpRowBF16IsTheFloatKernelRounded() throws {
        guard SIMDKernels.expRowBF16 else {
            throw XCTSkip("compress_exp_row_bf16 needs AVX-512F and AVX512-BF16; this CPU lacks one")
        }
        var rng = SplitMix64(seed: 31)
        for n in [1, 2, 15, 16, 17, 31, 33, 128, 129, 1000, 2048] {
            for spread: Float in [1, 30, 200] {
                let x = (0..<n).map { _ in Float.random(in: -spread...spread, using: &rng) }
                var floats = x, rounded = [UInt16](repeating: 0, count: n)
                var fused = [UInt16](repeating: 0xAAAA, count: n + 1)
                let s = floats.withUnsafeMutableBufferPointer { compress_exp_row_lanes($0.baseAddress!, n, 16) }
                compress_to_bf16(floats, 1, Int64(n), Int64(n), &rounded)
                let sf = compress_exp_row_bf16(x, n, &fused)
                XCTAssertEqual(Array(fused[0..<n]), rounded, "n \(n), spread \(spread)")
                XCTAssertEqual(fused[n], 0xAAAA, "wrote past n \(n)")
                XCTAssertEqual(sf.bitPattern, s.bitPattern, "sum, n \(n), spread \(spread)")
            }
        }
    }

    /// The quantizer's group error and refit sums (`compress_group_error`, Quantizer.swift's clipping search)
    /// against the Swift loop it replaces, bit for bit: symmetric and asymmetric grids, tails, exact ties
    /// (x = (c + ½)·s), weights beyond the grid's range (clamped).
    func testGroupErrorMatchesTheSwiftLoop() throws {
        guard SIMDKernels.lanes >= 16 else { throw XCTSkip("compress_group_error needs the AVX-512 kernel set") }
        var rng = SplitMix64(seed: 32)
        for n in [1, 7, 16, 17, 32, 33, 64] {
            for trial in 0..<50 {
                let symmetric = trial % 2 == 0, bits = [3, 4, 8][trial % 3], half = 1 << (bits - 1)
                let (qlo, qhi) = symmetric ? (-half, half - 1) : (0, (1 << bits) - 1)
                let s = Float.random(in: 0.001...0.1, using: &rng) * (symmetric && trial % 4 == 0 ? -1 : 1)
                let lo: Float = symmetric ? 0 : Float.random(in: -0.5...0, using: &rng)
                var x = (0..<n).map { _ in Float.random(in: -0.6...0.6, using: &rng) }
                for k in stride(from: 0, to: n, by: 3) { x[k] = lo + (Float(Int.random(in: -10...10, using: &rng)) + 0.5) * s }
                let h = (0..<n).map { _ in Float.random(in: 0...3, using: &rng) }
                var e: Float = 0, xq: Float = 0, qq: Float = 0
                for k in 0..<n {
                    let v = symmetric ? x[k] / s : (x[k] - lo) / s
                    let q = Float(max(qlo, min(qhi, Int(v.rounded()))))
                    let d = x[k] - (lo + s * q)
                    e += h[k] * d * d; xq += h[k] * x[k] * q; qq += h[k] * q * q
                }
                var ke: Float = 0, kxq: Float = 0, kqq: Float = 0
                XCTAssertEqual(compress_group_error(x, h, n, s, lo, Float(qlo), Float(qhi), 1, &ke, &kxq, &kqq), 0)
                let what = "n \(n), trial \(trial), symmetric \(symmetric), \(bits) bits"
                XCTAssertEqual(ke.bitPattern, e.bitPattern, "error, \(what)")
                XCTAssertEqual(kxq.bitPattern, xq.bitPattern, "xq, \(what)")
                XCTAssertEqual(kqq.bitPattern, qq.bitPattern, "qq, \(what)")
            }
        }
    }

    func testGatedActivationsMatchTheSwiftExpressions() {
        var rng = SplitMix64(seed: 30)
        for n in [1, 7, 8, 9, 16, 17, 100, 1537] {
            let gate = (0..<n).map { _ in Float.random(in: -12...12, using: &rng) }
            let up = (0..<n).map { _ in Float.random(in: -3...3, using: &rng) }
            // The expressions of swigluForward's and geluTanhGatedForward's loops.
            let silu = (0..<n).map { i in gate[i] / (1 + fastExp(-gate[i])) * up[i] }
            let gelu = (0..<n).map { i -> Float in
                let x = gate[i], u = 0.797_884_56 * (x + 0.044_715 * x * x * x)
                return 0.5 * x * (2 - 2 / (fastExp(2 * u) + 1)) * up[i]
            }
            for lanes in [16, 8] where lanes <= SIMDKernels.lanes {
                for (isGelu, want) in [(false, silu), (true, gelu)] {
                    var out = [Float](repeating: .nan, count: n)
                    let status = compress_gated_lanes(&out, gate, up, n, isGelu ? 1 : 0, Int32(lanes))
                    XCTAssertEqual(status, 0)
                    XCTAssertEqual(out.map(\.bitPattern), want.map(\.bitPattern), "\(lanes) lanes, n \(n), gelu \(isGelu)")
                }
            }
        }
    }

    func testExpSumMatchesTheSwiftLoop() {
        var rng = SplitMix64(seed: 31)
        for n in [1, 9, 16, 33, 49_152] {
            let x = (0..<n).map { _ in Float.random(in: -20...20, using: &rng) }
            let m = x.max()!
            var want: Double = 0
            for j in 0..<n { want += Double(fastExp(x[j] - m)) }
            for lanes in [16, 8] where lanes <= SIMDKernels.lanes {
                let s = compress_exp_sum_lanes(x, n, m, Int32(lanes))
                XCTAssertEqual(s, want, accuracy: want * Double(n) * 2 * Double.ulpOfOne, "\(lanes) lanes, n \(n)")
            }
        }
    }

    /// The Float64 accumulators of the calibration statistics: every double the Swift loop's (lanes 0), for widths
    /// around each vector width, a leading dimension with padding, and values from tiny to large.
    func testDoubleAccumulationMatchesTheSwiftLoop() {
        var rng = SplitMix64(seed: 31)
        for (rows, cols, pad) in [(1, 1, 0), (3, 7, 2), (17, 8, 0), (64, 33, 5), (100, 130, 1)] {
            let ld = cols + pad
            let x = (0..<(rows * ld)).map { _ in
                Float.random(in: -1...1, using: &rng) * Float(sign: .plus, exponent: Int.random(in: -30...30, using: &rng),
                                                               significand: 1)
            }
            let start = (0..<cols).map { _ in Double.random(in: 0...10, using: &rng) }
            var portable = start, flat = start
            x.withUnsafeBufferPointer { xp in
                DoubleAccumulation.addSquares(xp.baseAddress!, rows: rows, cols: cols, ld: ld, into: &portable, lanes: 0)
                DoubleAccumulation.add(xp.baseAddress!, count: cols, into: &flat, lanes: 0)
            }
            for lanes in [16, 8] where lanes <= SIMDKernels.lanes {
                var simd = start, simdFlat = start
                x.withUnsafeBufferPointer { xp in
                    DoubleAccumulation.addSquares(xp.baseAddress!, rows: rows, cols: cols, ld: ld, into: &simd,
                                                  lanes: lanes)
                    DoubleAccumulation.add(xp.baseAddress!, count: cols, into: &simdFlat, lanes: lanes)
                }
                let what = "\(lanes) lanes, \(rows) × \(cols), ld \(ld)"
                XCTAssertEqual(simd.map(\.bitPattern), portable.map(\.bitPattern), "squares, " + what)
                XCTAssertEqual(simdFlat.map(\.bitPattern), flat.map(\.bitPattern), "sum, " + what)
            }
            // And the Swift loop against its definition.
            for j in 0..<cols {
                var want = start[j]
                for t in 0..<rows { want += Double(x[t * ld + j]) * Double(x[t * ld + j]) }
                XCTAssertEqual(portable[j], want)
            }
        }
    }
}
