@testable import Quantization
import TensorCore
import XCTest

final class QuantizerTests: XCTestCase {
    func weights(_ rows: Int, _ cols: Int, seed: UInt64, scale: Float = 0.3) -> [Float] {
        var rng = SplitMix64(seed: seed)
        return (0..<(rows * cols)).map { _ in (rng.nextFloat() * 2 - 1) * scale }
    }

    func testPackUnpackRoundTripsEveryWidthAndOddSizes() {
        var rng = SplitMix64(seed: 5)
        for bits in QuantFormat.supportedBits {
            for count in [1, 2, 3, 5, 7, 8, 9, 31, 33, 100, 1001] {
                let codes = (0..<count).map { _ in UInt8(rng.next() % UInt64(1 << bits)) }
                let packed = packCodes(codes, bits: bits)
                XCTAssertEqual(packed.count, (count * bits + 7) / 8)
                XCTAssertEqual(unpackCodes(packed, bits: bits, count: count), codes, "\(bits) bits, \(count) codes")
            }
        }
        // Layout: little-endian bit stream.
        XCTAssertEqual(packCodes([1, 2, 3], bits: 3), [0b1101_0001, 0b0000_0000])
        XCTAssertEqual(packCodes([0xA, 0x5], bits: 4), [0x5A])
    }

    /// Round-to-nearest: every weight within half a step of its dequantized value, codes in range, in every
    /// integer format (odd group sizes included); float16 within half an ulp.
    func testRoundToNearestErrorIsAtMostHalfAStep() throws {
        for (rows, cols, group) in [(4, 64, 32), (3, 35, 7), (2, 12, 12)] {
            let w = weights(rows, cols, seed: UInt64(rows * cols))
            for bits in QuantFormat.supportedBits {
                for symmetric in [false, true] {
                    let f = try QuantFormat(bits: bits, groupSize: group, symmetric: symmetric)
                    let q = try QuantizedTensor(weights: w, shape: [rows, cols], format: f)
                    XCTAssertEqual(q.bytes, f.storageBytes(rows: rows, columns: cols))
                    let back = q.dequantized()
                    for i in w.indices {
                        let s = q.scale(ofGroup: i / group)
                        // Observed: the bound holds to float rounding (≤ 1 ulp of the weight). Symmetric: half a
                        // step except above the top level 2^(b−1) − 1 (the far side of the extreme), one step there.
                        let half = Float(1 << (bits - 1))
                        let step = symmetric && w[i] / s > half - 0.5 ? abs(s) : abs(s) / 2
                        XCTAssertLessThanOrEqual(abs(w[i] - back[i]), step * (1 + 1e-5) + 1e-7, "\(f) weight \(i)")
                        if symmetric { XCTAssertLessThanOrEqual(abs(w[i] / s), half * (1 + 1e-5), "\(f) weight \(i)") }
                    }
                }
            }
            let h = try QuantizedTensor(weights: w, shape: [rows, cols], format: .float16)
            for (a, b) in zip(w, h.dequantized()) { XCTAssertLessThanOrEqual(abs(a - b), abs(a) * 0x1p-11 + 1e-8) }
        }
    }

    /// Full-range symmetric codes (issue 19): all 2^b levels; per group the weight of largest magnitude gets
    /// code 0 (level −2^(b−1)) and the scale's sign is the opposite of that weight's; every code equals a plain
    /// Double computation of clamp(round(w / s), −2^(b−1), 2^(b−1) − 1) + 2^(b−1) with the stored scale, and
    /// |s| is the smallest float16 ≥ max|w| / 2^(b−1).
    func testSymmetricCodesUseTheFullRangeWithTheExtremeOnTheNegativeEnd() throws {
        let (rows, cols, group) = (6, 64, 16)
        var w = weights(rows, cols, seed: 21)
        w[3] = -0.7; w[70] = 0.9  // negative and positive extremes in two groups
        for bits in QuantFormat.supportedBits {
            let f = try QuantFormat(bits: bits, groupSize: group, symmetric: true)
            let q = try QuantizedTensor(weights: w, shape: [rows, cols], format: f)
            let codes = unpackCodes(q.codes, bits: bits, count: w.count).map(Int.init)
            let half = 1 << (bits - 1)
            var levels = Set<Int>()
            for g in 0..<(w.count / group) {
                let x = Array(w[(g * group)..<((g + 1) * group)])
                let m = x.max { abs($0) < abs($1) }!
                let s = Double(q.scale(ofGroup: g))
                XCTAssertEqual(s.sign == .minus, m > 0, "\(f) group \(g): scale sign")
                XCTAssertGreaterThanOrEqual(abs(s), Double(abs(m)) / Double(half), "\(f) group \(g)")
                XCTAssertLessThan(Double(Float16(abs(s)).nextDown), Double(abs(m)) / Double(half), "\(f) group \(g): not the smallest float16")
                for k in 0..<group {
                    let ref = Swift.max(-half, Swift.min(half - 1, Int((Double(x[k]) / s).rounded()))) + half
                    XCTAssertEqual(codes[g * group + k], ref, "\(f) group \(g) weight \(k)")
                    if x[k] == m { XCTAssertEqual(codes[g * group + k], 0, "\(f) group \(g): the extreme is on the negative end") }
                }
                levels.formUnion(codes[(g * group)..<((g + 1) * group)])
            }
            if bits <= 4 { XCTAssertEqual(levels, Set(0..<(1 << bits)), "\(f): every level is used") }
            XCTAssertTrue(levels.contains(0))
        }
    }

    /// Asymmetric: a constant group quantizes exactly (scale 0). Both: a zero group is exact. (A symmetric
    /// constant group is only within half a step: its float16 scale is rounded up.)
    func testDegenerateGroups() throws {
        let w: [Float] = Array(repeating: 0.25, count: 8) + Array(repeating: 0, count: 8)
        let asym = try QuantizedTensor(weights: w, shape: [2, 8], format: try QuantFormat(bits: 3, groupSize: 8, symmetric: false))
        XCTAssertEqual(asym.dequantized(), w)
        let sym = try QuantizedTensor(weights: w, shape: [2, 8], format: try QuantFormat(bits: 3, groupSize: 8, symmetric: true))
        XCTAssertEqual(Array(sym.dequantized()[8...]), Array(w[8...]))
    }

    /// The clipping search never does worse than RTN on the error it minimizes (importance-weighted), and
    /// does strictly better where an outlier stretches the grid.
    func testScaleSearchMinimizesWeightedErrorNoWorseThanRTN() throws {
        var w = weights(8, 64, seed: 11, scale: 0.05)
        for r in 0..<8 { w[r * 64 + 5] = 0.4 }  // one outlier per row
        let importance = (0..<64).map { k in k == 5 ? Float(0.01) : Float(1 + k % 3) }
        func weightedError(_ q: QuantizedTensor) -> Float {
            zip(w.indices, q.dequantized()).reduce(0) { e, p in let d = w[p.0] - p.1; return e + importance[p.0 % 64] * d * d }
        }
        for bits in [2, 3, 4] {
            for symmetric in [false, true] {
                let f = try QuantFormat(bits: bits, groupSize: 32, symmetric: symmetric)
                let rtn = try QuantizedTensor(weights: w, shape: [8, 64], format: f, importance: importance)
                let search = try QuantizedTensor(weights: w, shape: [8, 64], format: f, importance: importance, search: true)
                XCTAssertLessThan(weightedError(search), weightedError(rtn), "\(f)")
            }
        }
    }

    /// Symmetric search against a brute-force reference: per group, the weighted error of the best of 4,001
    /// scales of either sign between 0.3 and 1.3 × |m| / 2^(b−1) (Float64, nearest clamped codes). The search's
    /// α grid with the least-squares refit must come within 1 % of that optimum in total, never above RTN.
    func testSymmetricSearchIsNearTheBestScale() throws {
        var rng = SplitMix64(seed: 21)
        let rows = 16, cols = 64, G = 32
        let w: [Float] = (0..<(rows * cols)).map { _ in (0..<4).reduce(Float(0)) { a, _ in a + rng.nextFloat() - 0.5 } * 0.1 }
        let h: [Float] = (0..<cols).map { _ in 0.5 + 2.5 * rng.nextFloat() }
        // Per-weight error weights: h_k, or with `magnitudeWeighted` h_k·√(σ² + w_k²), σ² the row's mean w².
        let meanSquare = (0..<rows).map { r in (0..<cols).reduce(0.0) { $0 + Double(w[r * cols + $1] * w[r * cols + $1]) } / Double(cols) }
        let weights = [false, true].map { magnitude in
            w.indices.map { i in Double(h[i % cols]) * (magnitude ? (meanSquare[i / cols] + Double(w[i] * w[i])).squareRoot() : 1) }
        }
        for magnitude in [false, true] {
        func weight(_ i: Int, _ magnitude: Bool) -> Double { weights[magnitude ? 1 : 0][i] }
        func error(_ v: [Float]) -> Double {
            w.indices.reduce(0.0) { e, i in let d = Double(w[i] - v[i]); return e + weight(i, magnitude) * d * d }
        }
        for bits in [3, 4] {
            let half = 1 << (bits - 1)
            var optimum = 0.0
            for g in 0..<(w.count / G) {
                let x = (0..<G).map { Double(w[g * G + $0]) }, c0 = (g * G) % cols
                let m = x.map(abs).max()!
                var best = Double.infinity
                for i in 0...4000 {
                    for sign in [-1.0, 1.0] {
                        let s = sign * (0.3 + Double(i) / 4000) * m / Double(half)
                        var e = 0.0
                        for k in 0..<G {
                            let q = max(-Double(half), min(Double(half - 1), (x[k] / s).rounded()))
                            e += weight(g * G + k, magnitude) * (x[k] - s * q) * (x[k] - s * q)
                        }
                        best = min(best, e)
                    }
                }
                optimum += best
            }
            let f = try QuantFormat(bits: bits, groupSize: G, symmetric: true)
            let search = error(try QuantizedTensor(weights: w, shape: [rows, cols], format: f, importance: h, search: true,
                                                   magnitudeWeighted: magnitude).dequantized())
            let rtn = error(try QuantizedTensor(weights: w, shape: [rows, cols], format: f, importance: h).dequantized())
            XCTAssertLessThanOrEqual(search, 1.01 * optimum, "\(bits) bits, magnitude \(magnitude): search \(search), brute force \(optimum), rtn \(rtn)")
            XCTAssertLessThan(search, rtn, "\(bits) bits")
            print("symmetric \(bits) bits, magnitude-weighted \(magnitude): rtn \(rtn / optimum), search \(search / optimum) x the brute-force optimum")
        }
        }
    }

    /// Asymmetric search (least-squares refit of scale and minimum): against a brute-force scan of (s, lo) per
    /// group, and exact on weights that already lie on a float16 asymmetric grid (a dequantized Q4_1 group).
    func testAsymmetricSearchIsNearTheBestGrid() throws {
        var rng = SplitMix64(seed: 33)
        let rows = 8, cols = 64, G = 32
        let w: [Float] = (0..<(rows * cols)).map { _ in (0..<4).reduce(Float(0)) { a, _ in a + rng.nextFloat() - 0.5 } * 0.1 + 0.01 }
        let h: [Float] = (0..<cols).map { _ in 0.5 + 2.5 * rng.nextFloat() }
        func error(_ v: [Float]) -> Double {
            w.indices.reduce(0.0) { e, i in let d = Double(w[i] - v[i]); return e + Double(h[i % cols]) * d * d }
        }
        for bits in [3, 4] {
            let top = Double((1 << bits) - 1)
            var optimum = 0.0
            for g in 0..<(w.count / G) {
                let x = (0..<G).map { Double(w[g * G + $0]) }, c0 = (g * G) % cols
                let (lo, hi) = (x.min()!, x.max()!)
                var best = Double.infinity
                // Scales from 0.5 to 1.1 of the min-max step, minimums across the range's lower part.
                for i in 0...240 {
                    let s = (0.5 + 0.6 * Double(i) / 240) * (hi - lo) / top
                    for j in 0...240 {
                        let m = lo + (Double(j) / 240 - 0.5) * 2 * s
                        var e = 0.0
                        for k in 0..<G {
                            let q = max(0, min(top, ((x[k] - m) / s).rounded()))
                            e += Double(h[c0 + k]) * (x[k] - m - s * q) * (x[k] - m - s * q)
                        }
                        best = min(best, e)
                    }
                }
                optimum += best
            }
            let f = try QuantFormat(bits: bits, groupSize: G, symmetric: false)
            let search = error(try QuantizedTensor(weights: w, shape: [rows, cols], format: f, importance: h, search: true).dequantized())
            let rtn = error(try QuantizedTensor(weights: w, shape: [rows, cols], format: f, importance: h).dequantized())
            XCTAssertLessThanOrEqual(search, 1.02 * optimum, "\(bits) bits: search \(search), brute force \(optimum), rtn \(rtn)")
            XCTAssertLessThan(search, rtn, "\(bits) bits")
            print("asymmetric \(bits) bits: rtn \(rtn / optimum), search \(search / optimum) x the brute-force optimum")
        }
        // Weights on a float16 grid lo + s·q (codes 0 and 15 present in every group): the search keeps them exactly
        // (round to nearest need not: it rounds the scale up).
        let grid: [Float] = (0..<(2 * 32)).map { i in
            let g = i / 32, s = Float(Float16(0.0123 + 0.004 * Float(g))), lo = Float(Float16(-0.07 - 0.01 * Float(g)))
            let q = i % 32 == 0 ? 0 : i % 32 == 1 ? 15 : Int(rng.next() % 16)
            return lo + s * Float(q)
        }
        let f4 = try QuantFormat(bits: 4, groupSize: 32, symmetric: false)
        XCTAssertEqual(try QuantizedTensor(weights: grid, shape: [2, 32], format: f4, importance: Array(h.prefix(32)), search: true).dequantized(), grid)
    }

    /// The quantizer's rounding without libm (`roundedHalfAway`) against `Float.rounded()`, bit for bit: random bit
    /// patterns of every magnitude and sign, every half-integer tie and its neighbours, the largest values below
    /// 2^23 and beyond, ±0, infinities.
    func testRoundingIsFloatRounded() {
        var rng = SplitMix64(seed: 45)
        var xs: [Float] = [0, -0.0, 0.5, -0.5, 1.5, -1.5, 2.5, 0.49999997, -0.49999997, 8_388_607.5, 8_388_608,
                           -8_388_607.5, 16_777_217, .infinity, -.infinity, .greatestFiniteMagnitude,
                           .leastNonzeroMagnitude]
        for k in -40...40 {
            let tie = Float(k) + 0.5
            xs += [tie, tie.nextUp, tie.nextDown]
        }
        for _ in 0..<100_000 {
            let x = Float(bitPattern: UInt32(truncatingIfNeeded: rng.next()))
            if x.isFinite { xs.append(x) }
            xs.append(Float.random(in: -20...20, using: &rng))
        }
        for x in xs {
            XCTAssertEqual(roundedHalfAway(x).bitPattern, x.rounded().bitPattern, "\(x)")
        }
    }

    /// `groupGrid` (GPTQ's per-group grid, no tensor built) gives the scale and minimum the full quantizer gives
    /// the same group as a 1 × G tensor, with and without the weighted search, symmetric and asymmetric; and it
    /// refuses what the quantizer refuses.
    func testGroupGridIsTheQuantizersGrid() throws {
        var rng = SplitMix64(seed: 44)
        for symmetric in [true, false] {
            for bits in [3, 4, 8] {
                let f = try QuantFormat(bits: bits, groupSize: 32, symmetric: symmetric)
                for trial in 0..<40 {
                    let spread = Float(trial % 5 + 1) * 0.05
                    let x = (0..<32).map { _ in Float.random(in: -spread...spread, using: &rng) }
                    let h = (0..<32).map { _ in Float.random(in: 0.01...4, using: &rng) }
                    for (importance, search) in [(nil, false), (h, true), (nil, true)] as [([Float]?, Bool)] {
                        let q = try QuantizedTensor(weights: x, shape: [1, 32], format: f, importance: importance,
                                                    search: search)
                        let g = try x.withUnsafeBufferPointer { xp in
                            try importance.map { imp in
                                try imp.withUnsafeBufferPointer {
                                    try QuantizedTensor.groupGrid(xp, format: f, importance: $0, search: search)
                                }
                            } ?? QuantizedTensor.groupGrid(xp, format: f, importance: nil, search: search)
                        }
                        let what = "\(f), trial \(trial), search \(search), importance \(importance != nil)"
                        XCTAssertEqual(g.scale.bitPattern, q.scales[0].bitPattern, what)
                        XCTAssertEqual(g.min.bitPattern, symmetric ? 0 : q.mins[0].bitPattern, what)
                    }
                }
                var bad = [Float](repeating: 0.1, count: 32)
                bad[3] = .nan
                XCTAssertThrowsError(try bad.withUnsafeBufferPointer {
                    try QuantizedTensor.groupGrid($0, format: f, importance: nil, search: false)
                })
            }
        }
    }

    func testFormatsTableDescribesEveryFormat() throws {
        let table = try QuantFormat.table(groupSize: 64)
        XCTAssertEqual(table.count, 1 + 2 * QuantFormat.supportedBits.count)
        let w = weights(3, 128, seed: 2)
        for row in table {
            let q = try row.quantize(w, [3, 128], nil, false)
            XCTAssertEqual(Double(q.bytes), row.bytesPerGroup * Double(w.count / row.groupSize), "\(row.name)")
            XCTAssertEqual(row.dequantize(q), q.dequantized())
            XCTAssertEqual(try QuantFormat(name: row.name), row.format)
        }
        let q4 = table.first { $0.name == "q4_g64_asym" }!
        XCTAssertEqual(q4.bytesPerGroup, 36)  // 32 bytes of codes + float16 scale and minimum
        XCTAssertEqual(q4.bitsPerWeight, 4.5)
        XCTAssertEqual(table.first { $0.name == "q3_g64_sym" }!.bitsPerWeight, 3.25)
        XCTAssertEqual(table.first { $0.name == "f16" }!.bitsPerWeight, 16)
    }

    func testBadFormatsAndShapes() throws {
        XCTAssertThrowsError(try QuantFormat(bits: 7, groupSize: 32, symmetric: false)) { XCTAssertTrue("\($0)".contains("bits 7 is not supported")) }
        XCTAssertThrowsError(try QuantFormat(bits: 4, groupSize: 0, symmetric: false)) { XCTAssertTrue("\($0)".contains("group size")) }
        XCTAssertThrowsError(try QuantFormat(name: "q4_64")) { XCTAssertTrue("\($0)".contains("not a quantization format")) }
        let f = try QuantFormat(bits: 4, groupSize: 4, symmetric: true)
        XCTAssertThrowsError(try QuantizedTensor(weights: [1, 2, 3, 4, 5, 6], shape: [1, 6], format: f)) {
            XCTAssertTrue("\($0)".contains("6 input columns are not a whole number of groups of 4"), "\($0)")
        }
        XCTAssertThrowsError(try QuantizedTensor(weights: [1, .nan, 3, 4], shape: [1, 4], format: f)) { XCTAssertTrue("\($0)".contains("weight 1 is nan")) }
        XCTAssertThrowsError(try QuantizedTensor(weights: [1, 2, 3, 4], shape: [1, 4], format: f, importance: [1, 1])) {
            XCTAssertTrue("\($0)".contains("importance has 2 columns, expected 4"))
        }
        XCTAssertThrowsError(try QuantizedTensor(weights: [1e6, 2, 3, 4], shape: [1, 4], format: f)) { XCTAssertTrue("\($0)".contains("too large for a float16 scale"), "\($0)") }
        XCTAssertThrowsError(try QuantizedTensor(format: f, shape: [1, 4], codes: [0], scales: [1], mins: [])) {
            XCTAssertTrue("\($0)".contains("1 code bytes, expected 2"), "\($0)")
        }
    }
}
