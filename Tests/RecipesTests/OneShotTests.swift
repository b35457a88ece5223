import Foundation
import Model
import Quantization
import Recipes
import TensorCore
import XCTest
@testable import Passes

/// Plain Float64 references of the optimal-brain-surgeon updates (no Cholesky, no blocks of lazy updates,
/// no BLAS): the inverse of H restricted to the columns not yet fixed is recomputed for every column.
enum OBSReference {
    /// Inverse of a symmetric positive-definite matrix by Gauss-Jordan elimination with partial pivoting.
    static func inverse(_ a: [[Double]]) -> [[Double]] {
        let n = a.count
        var m = a, inv = (0..<n).map { i in (0..<n).map { $0 == i ? 1.0 : 0.0 } }
        for col in 0..<n {
            let p = (col..<n).max { abs(m[$0][col]) < abs(m[$1][col]) }!
            m.swapAt(col, p); inv.swapAt(col, p)
            let d = m[col][col]
            for j in 0..<n { m[col][j] /= d; inv[col][j] /= d }
            for i in 0..<n where i != col {
                let f = m[i][col]
                if f == 0 { continue }
                for j in 0..<n { m[i][j] -= f * m[col][j]; inv[i][j] -= f * inv[col][j] }
            }
        }
        return inv
    }

    /// H with dead columns set to 1 and λ = damp · mean diag added.
    static func damped(_ h: [[Double]], damp: Double) -> [[Double]] {
        var h = h
        let n = h.count
        for j in 0..<n where h[j][j] == 0 { h[j][j] = 1 }
        let lambda = damp * (0..<n).reduce(0.0) { $0 + h[$1][$1] } / Double(n)
        for j in 0..<n { h[j][j] += lambda }
        return h
    }

    /// H_F⁻¹ for F = {j, …, n−1}.
    static func trailingInverse(_ h: [[Double]], from j: Int) -> [[Double]] {
        inverse(h[j...].map { Array($0[j...]) })
    }

    /// Sequential OBS over columns 0..<limit: at column j, `decide(r, j, w, invDiag)` gives the value row r's
    /// weight j is fixed to (w: the row's current values; invDiag[c] = [H_{c…}⁻¹]_{cc}); the later columns
    /// absorb the error: w_F −= (w_j − q_j) / [H_F'⁻¹]_jj · [H_F'⁻¹]_{j,F}. `beginBlock(j, W, invDiag)` runs
    /// when j is a multiple of `block`.
    static func solve(_ w0: [[Double]], hessian h: [[Double]], limit: Int? = nil, block: Int = .max,
                      beginBlock: (Int, [[Double]], [Double]) -> Void = { _, _, _ in },
                      decide: (Int, Int, [Double], [Double]) -> Double) -> [[Double]] {
        var w = w0
        let n = h.count
        let invDiag = (0..<n).map { trailingInverse(h, from: $0)[0][0] }
        for j in 0..<min(limit ?? n, n) {
            if j % block == 0 { beginBlock(j, w, invDiag) }
            let hinv = trailingInverse(h, from: j)
            for r in w.indices {
                let x = w[r][j], q = decide(r, j, w[r], invDiag)
                let e = (x - q) / hinv[0][0]
                w[r][j] = q
                for c in (j + 1)..<n { w[r][c] -= e * hinv[0][c - j] }
            }
        }
        return w
    }
}

/// Correlated calibration inputs with uneven feature scales (a few outlier features, as in LLMs).
struct LayerData {
    let OC: Int, C: Int, n: Int
    let w: [Float]      // (OC, C)
    let x: [Float]      // (n, C)
    init(OC: Int, C: Int, n: Int, seed: UInt64) {
        self.OC = OC; self.C = C; self.n = n
        var rng = SplitMix64(seed: seed)
        func gauss() -> Float {
            let u1 = Double(rng.next() % (1 << 52) + 1) / Double(1 << 52), u2 = Double(rng.next() % (1 << 52)) / Double(1 << 52)
            return Float((-2 * log(u1)).squareRoot() * cos(2 * .pi * u2))
        }
        w = (0..<(OC * C)).map { _ in gauss() }
        let mix = (0..<(C * C)).map { _ in gauss() / Float(C).squareRoot() }
        let scale = (0..<C).map { j in j % 7 == 3 ? Float(6) : Float(1) }
        var x = [Float](repeating: 0, count: n * C)
        for t in 0..<n {
            let z = (0..<C).map { _ in gauss() }
            for j in 0..<C {
                var v = z[j]
                for k in 0..<C { v += 0.8 * mix[j * C + k] * z[k] }
                x[t * C + j] = v * scale[j]
            }
        }
        self.x = x
    }
    var stats: InputStatistics {
        let s = InputStatistics(features: C, full: true)
        x.withUnsafeBufferPointer { s.add($0.baseAddress!, rows: n) }
        return s
    }
    var weight: Tensor { Tensor(shape: [OC, C], values: w) }
    var rows: [[Double]] { (0..<OC).map { r in (0..<C).map { Double(w[r * C + $0]) } } }
    /// (2/n) X Xᵀ computed directly.
    var hessian: [[Double]] {
        (0..<C).map { i in (0..<C).map { j in 2 * (0..<n).reduce(0.0) { $0 + Double(x[$1 * C + i]) * Double(x[$1 * C + j]) } / Double(n) } }
    }
    /// ‖(W − Ŵ) X‖² over the calibration tokens.
    func outputError(_ what: [Float]) -> Double {
        var total = 0.0
        for t in 0..<n {
            for r in 0..<OC {
                var d = 0.0
                for j in 0..<C { d += (Double(w[r * C + j]) - Double(what[r * C + j])) * Double(x[t * C + j]) }
                total += d * d
            }
        }
        return total
    }
}

final class OneShotTests: XCTestCase {
    func target(_ json: String) throws -> SparsityTarget { try SparsityTarget(config: try Tiny.stage(json)) }

    /// The statistics' Hessian is (2/n) X Xᵀ, and the factor U satisfies Uᵀ U = (H + λI)⁻¹.
    func testHessianAndInverseCholeskyFactor() throws {
        let d = LayerData(OC: 4, C: 12, n: 40, seed: 1)
        let stats = d.stats, ref = d.hessian, C = d.C
        let h = stats.hessian()
        for i in 0..<C { for j in 0..<C { XCTAssertEqual(h[i * C + j], ref[i][j], accuracy: 1e-4 * abs(ref[i][j]) + 1e-5) } }
        let f = try stats.factorization(damp: 0.01, actOrder: false)
        let inv = OBSReference.inverse(OBSReference.damped(ref, damp: 0.01))
        for i in 0..<C {
            for j in 0..<C {
                let utu = (0..<C).reduce(0.0) { $0 + Double(f.u[$1 * C + i]) * Double(f.u[$1 * C + j]) }
                XCTAssertEqual(utu, inv[i][j], accuracy: 1e-4 * abs(inv[i][i]))
            }
            for j in 0..<i { XCTAssertEqual(f.u[i * C + j], 0) }
        }
    }

    /// With `gramPrecision` bf16 (`hessian_precision`) the statistics' Hessian is (2/n) X̃ X̃ᵀ of the bf16-rounded
    /// inputs, accumulated over two windows: within float32 accumulation's rounding of the Float64 reference, and
    /// farther than that from the float32 statistics (the rounding is real). Σ x² per column stays the exact Float64
    /// sum of the unrounded inputs. A run in bf16 precision keeps float32 Hessians unless asked (the default).
    func testHessianInBF16IsThatOfTheRoundedInputs() throws {
        if let reason = MatrixProduct.bf16Unsupported() { throw XCTSkip(reason) }
        let d = LayerData(OC: 4, C: 130, n: 300, seed: 4), C = d.C, n = d.n
        func statistics(_ p: Precision, run: Precision = .fp32) -> InputStatistics {
            let s = InputStatistics(features: C, full: true, gramPrecision: p)
            MatrixProduct.withPrecision(run) {
                d.x.withUnsafeBufferPointer {
                    s.add($0.baseAddress!, rows: 100)
                    s.add($0.baseAddress! + 100 * C, rows: n - 100)
                }
            }
            return s
        }
        let b = statistics(.bf16), f = statistics(.fp32), hb = b.hessian(), hf = f.hessian()
        XCTAssertEqual(statistics(.fp32, run: .bf16).hessian(), hf, "a bf16 run's default Hessian is float32's")
        func bf16(_ x: Float) -> Double {
            let u = x.bitPattern
            return Double(Float(bitPattern: (u &+ 0x7FFF &+ ((u >> 16) & 1)) & 0xFFFF_0000))
        }
        let u = 0x1p-24, gamma = Double(n + 1) * u / (1 - Double(n + 1) * u)
        var bad = 0, apart = 0
        for i in 0..<C {
            for j in 0..<C {
                var dot = 0.0, abs = 0.0
                for t in 0..<n { let p = bf16(d.x[t * C + i]) * bf16(d.x[t * C + j]); dot += p; abs += Swift.abs(p) }
                let bound = 2 * gamma * abs / Double(n)
                if Swift.abs(hb[i * C + j] - 2 * dot / Double(n)) > bound { bad += 1 }
                if Swift.abs(hf[i * C + j] - 2 * dot / Double(n)) > bound { apart += 1 }
            }
        }
        XCTAssertEqual(bad, 0)
        XCTAssertGreaterThan(apart, C * C / 2)
        XCTAssertEqual(b.squares, f.squares)
        XCTAssertEqual(b.tokens, n)
    }

    /// Windows added side by side (`add(windows:rows:)`, the layer-wise pass's batches) give the statistics of the
    /// windows added one at a time with each window's Gram product one single-threaded ssyrk: Σ x² and the Hessian
    /// the same doubles, summed in window order; batches of one, of the worker count and of more.
    func testStatisticsOfWindowsSideBySideAreThoseOfOneAtATime() throws {
        let d = LayerData(OC: 2, C: 160, n: 500, seed: 5), C = d.C, rows = 100
        let windows = d.n / rows
        func statistics(batch: Int, blasThreads: Int) -> InputStatistics {
            let s = InputStatistics(features: C, full: true)
            let saved = BLAS.threads
            BLAS.threads = blasThreads
            defer { BLAS.threads = saved }
            d.x.withUnsafeBufferPointer { x in
                for w0 in stride(from: 0, to: windows, by: batch) {
                    s.add(windows: (w0..<min(windows, w0 + batch)).map { x.baseAddress! + $0 * rows * C }, rows: rows)
                }
            }
            return s
        }
        let reference = statistics(batch: 1, blasThreads: 1)
        XCTAssertEqual(reference.tokens, d.n)
        for batch in [2, Parallel.threads, windows] {
            let s = statistics(batch: batch, blasThreads: BLAS.threads)
            XCTAssertEqual(s.tokens, d.n)
            XCTAssertEqual(s.squares, reference.squares, "batches of \(batch)")
            XCTAssertEqual(s.hessian(), reference.hessian(), "batches of \(batch)")
        }
        let h = reference.hessian(), ref = d.hessian
        for i in 0..<C { for j in 0..<C { XCTAssertEqual(h[i * C + j], ref[i][j], accuracy: 1e-4 * abs(ref[i][j]) + 1e-5) } }
    }

    /// SparseGPT 2:4 and 50 % unstructured (several blocks, block mask selection) on a small layer equal the
    /// sequential OBS with explicit inverses and the same mask rules.
    func testSparseGPTEqualsDirectOBSUpdates() throws {
        let d = LayerData(OC: 6, C: 24, n: 64, seed: 2)
        let h = OBSReference.damped(d.hessian, damp: 0.01)
        let factor = try d.stats.factorization(damp: 0.01, actOrder: false)
        for (json, block) in [(#"{"pattern": "2:4"}"#, 8), (#"{"pattern": "4:8"}"#, 16), (#"{"sparsity": 0.5}"#, 8), (#"{"sparsity": 0.3}"#, 24)] {
            let t = try target(json)
            let (values, keep, _) = SparseGPTPass.prune(d.weight, factor: factor, target: t, blockSize: block)
            var refKeep = [[Bool]](repeating: [Bool](repeating: true, count: d.C), count: d.OC)
            let ref = OBSReference.solve(d.rows, hessian: h, block: block, beginBlock: { j0, w, invDiag in
                guard case .unstructured = t.pattern else { return }
                let cols = j0..<min(j0 + block, d.C)
                var cells = [(Double, Int, Int)]()
                for r in 0..<d.OC { for c in cols { cells.append((w[r][c] * w[r][c] / invDiag[c], r, c)) } }
                cells.sort { $0.0 < $1.0 }
                for (_, r, c) in cells.prefix(Int((t.sparsity * Double(cells.count)).rounded())) { refKeep[r][c] = false }
            }, decide: { r, j, w, invDiag in
                if case .nm(let n, let m) = t.pattern, j % m == 0 {
                    let group = (j..<(j + m)).sorted { w[$0] * w[$0] / invDiag[$0] < w[$1] * w[$1] / invDiag[$1] }
                    for (i, c) in group.enumerated() { refKeep[r][c] = i >= m - n }
                }
                return refKeep[r][j] ? w[j] : 0
            })
            for r in 0..<d.OC {
                for c in 0..<d.C {
                    XCTAssertEqual(keep[r * d.C + c], refKeep[r][c], "\(json) mask (\(r), \(c))")
                    XCTAssertEqual(Double(values[r * d.C + c]), ref[r][c], accuracy: 2e-4 * (1 + abs(ref[r][c])), "\(json) (\(r), \(c))")
                }
            }
            if case .nm(let n, let m) = t.pattern {
                for g in stride(from: 0, to: keep.count, by: m) { XCTAssertEqual(keep[g..<(g + m)].filter { $0 }.count, n) }
            }
        }
    }

    /// On one layer, SparseGPT's output error is below Wanda's and magnitude's (2:4 and 50 %), and Wanda's
    /// kept set is the top |W_ij|·‖X_j‖ per group.
    func testSparseGPTLayerErrorBelowWandaAndMagnitude() throws {
        let d = LayerData(OC: 16, C: 32, n: 128, seed: 3)
        let stats = d.stats, factor = try stats.factorization(damp: 0.01, actOrder: false)
        for json in [#"{"pattern": "2:4"}"#, #"{"sparsity": 0.5}"#] {
            let t = try target(json)
            let magnitude = t.keepByScore(d.w.map { Double(abs($0)) }, rows: d.OC, cols: d.C, perRow: false)
            let wanda = try WandaPass.keep(d.weight, columnNorms: stats.columnNorms, target: t,
                                           id: LinearID(layer: 0, kind: .gate))
            let (sgpt, _, _) = SparseGPTPass.prune(d.weight, factor: factor, target: t, blockSize: 16)
            func zeroed(_ keep: [Bool]) -> [Float] { d.w.indices.map { keep[$0] ? d.w[$0] : 0 } }
            let errors = (magnitude: d.outputError(zeroed(magnitude)), wanda: d.outputError(zeroed(wanda)), sparsegpt: d.outputError(sgpt.array))
            XCTAssertLessThan(errors.sparsegpt, errors.wanda, "\(json) \(errors)")
            XCTAssertLessThan(errors.sparsegpt, errors.magnitude, "\(json) \(errors)")
            // Wanda's kept weights have the larger scores in each comparison group.
            if case .nm = t.pattern {
                let norms = (0..<d.C).map { j in (0..<d.n).reduce(0.0) { $0 + Double(d.x[$1 * d.C + j]) * Double(d.x[$1 * d.C + j]) }.squareRoot() }
                for g in stride(from: 0, to: d.w.count, by: 4) {
                    let s = (g..<(g + 4)).map { Double(abs(d.w[$0])) * norms[$0 % d.C] }
                    let keptMin = (0..<4).filter { wanda[g + $0] }.map { s[$0] }.min()!, droppedMax = (0..<4).filter { !wanda[g + $0] }.map { s[$0] }.max()!
                    XCTAssertGreaterThanOrEqual(keptMin, droppedMax)
                }
            }
        }
    }

    /// One GPTQ step is the closed-form OBS update: column 0 becomes its round-to-nearest value q₀ and every
    /// other column moves by −(w₀ − q₀) / [H⁻¹]₀₀ · [H⁻¹]₀ⱼ.
    func testOneGPTQStepEqualsClosedFormUpdate() throws {
        let d = LayerData(OC: 5, C: 16, n: 48, seed: 4)
        let h = OBSReference.damped(d.hessian, damp: 0.01), hinv = OBSReference.inverse(h)
        let factor = try d.stats.factorization(damp: 0.01, actOrder: false)
        for f in [try QuantFormat(bits: 4, groupSize: 8, symmetric: false), try QuantFormat(bits: 3, groupSize: 16, symmetric: true), QuantFormat.float16] {
            let one = try GPTQ.solve(d.weight, factor: factor, format: f, blockSize: 4, limit: 1)
            let rtn = try QuantizedTensor(weights: d.w, shape: [d.OC, d.C], format: f).dequantized()
            for r in 0..<d.OC {
                let q0 = Double(rtn[r * d.C]), w0 = Double(d.w[r * d.C])
                XCTAssertEqual(Double(one.values[r * d.C]), q0, "\(f) row \(r): column 0 is its RTN value")
                for j in 1..<d.C {
                    let expected = Double(d.w[r * d.C + j]) - (w0 - q0) / hinv[0][0] * hinv[0][j]
                    XCTAssertEqual(Double(one.values[r * d.C + j]), expected, accuracy: 1e-4 * (1 + abs(expected)), "\(f) (\(r), \(j))")
                }
            }
        }
    }

    /// Full GPTQ (asymmetric 4-bit, groups of 8, blocks of 4 so groups straddle blocks) equals the sequential
    /// OBS with explicit inverses, each group's grid fixed by RTN on its current values when first reached;
    /// the stored tensor dequantizes to those values.
    func testGPTQEqualsDirectOBSUpdates() throws {
        let d = LayerData(OC: 4, C: 16, n: 48, seed: 5)
        let h = OBSReference.damped(d.hessian, damp: 0.01)
        let f = try QuantFormat(bits: 4, groupSize: 8, symmetric: false), G = 8
        var grids = [Int: (Double, Double)]()
        let ref = OBSReference.solve(d.rows, hessian: h) { r, j, w, _ in
            if j % G == 0 {
                let group = try! QuantizedTensor(weights: w[j..<(j + G)].map { Float($0) }, shape: [1, G], format: f)
                grids[r] = (Double(group.scales[0]), Double(group.mins[0]))
            }
            let (s, lo) = grids[r]!
            return lo + s * min(15, max(0, ((w[j] - lo) / s).rounded()))
        }
        let factor = try d.stats.factorization(damp: 0.01, actOrder: false)
        let (stored, _) = try GPTQ.quantize(d.weight, factor: factor, format: f, blockSize: 4)
        let values = stored.dequantized()
        for r in 0..<d.OC {
            for c in 0..<d.C { XCTAssertEqual(Double(values[r * d.C + c]), ref[r][c], accuracy: 1e-4 * (1 + abs(ref[r][c])), "(\(r), \(c))") }
        }
    }

    /// With `staticGroups` every group's grid comes from the original weights: the same OBS reference, its
    /// grids taken from the untouched rows.
    func testGPTQStaticGroupsEqualsDirectOBSUpdates() throws {
        let d = LayerData(OC: 4, C: 16, n: 48, seed: 7)
        let h = OBSReference.damped(d.hessian, damp: 0.01)
        let f = try QuantFormat(bits: 3, groupSize: 8, symmetric: true), G = 8
        let ref = OBSReference.solve(d.rows, hessian: h) { r, j, w, _ in
            let g = j / G
            let group = try! QuantizedTensor(weights: d.rows[r][(g * G)..<((g + 1) * G)].map { Float($0) }, shape: [1, G], format: f)
            let s = Double(group.scales[0])
            return s * min(3, max(-4, (w[j] / s).rounded()))
        }
        let factor = try d.stats.factorization(damp: 0.01, actOrder: false)
        let values = try GPTQ.quantize(d.weight, factor: factor, format: f, blockSize: 4, staticGroups: true).0.dequantized()
        let dynamic = try GPTQ.quantize(d.weight, factor: factor, format: f, blockSize: 4).0.dequantized()
        XCTAssertNotEqual(values, dynamic, "static and dynamic grids should differ on this data")
        for r in 0..<d.OC {
            for c in 0..<d.C { XCTAssertEqual(Double(values[r * d.C + c]), ref[r][c], accuracy: 1e-4 * (1 + abs(ref[r][c])), "(\(r), \(c))") }
        }
    }

    /// GPTQ's layer-output error is below RTN's and the clipping search's (weighted by E[x²]) on the same
    /// data, for symmetric and asymmetric widths, with and without activation order: with round-to-nearest
    /// grids below RTN, with searched grids below both.
    func testGPTQLayerErrorBelowRTNAndSearch() throws {
        let d = LayerData(OC: 16, C: 64, n: 256, seed: 6)
        let stats = d.stats
        let importance = stats.squares.map { Float($0 / Double(d.n)) }
        for (bits, symmetric) in [(4, false), (3, true), (3, false), (2, false), (8, true)] {
            let f = try QuantFormat(bits: bits, groupSize: 16, symmetric: symmetric)
            let rtn = d.outputError(try QuantizedTensor(weights: d.w, shape: [d.OC, d.C], format: f).dequantized())
            let search = d.outputError(try QuantizedTensor(weights: d.w, shape: [d.OC, d.C], format: f, importance: importance, search: true).dequantized())
            for actOrder in [false, true] {
                let factor = try stats.factorization(damp: 0.01, actOrder: actOrder)
                let plain = d.outputError(try GPTQ.quantize(d.weight, factor: factor, format: f, blockSize: 32).0.dequantized())
                let searched = d.outputError(try GPTQ.quantize(d.weight, factor: factor, format: f, blockSize: 32, importance: importance).0.dequantized())
                XCTAssertLessThan(plain, rtn, "\(f) act order \(actOrder): gptq (rtn grids) \(plain), rtn \(rtn)")
                XCTAssertLessThan(searched, rtn, "\(f) act order \(actOrder): gptq (searched grids) \(searched), rtn \(rtn)")
                XCTAssertLessThan(searched, search, "\(f) act order \(actOrder): gptq (searched grids) \(searched), search \(search)")
            }
        }
    }

    /// The layer-wise driver hands every linear the statistics of its inputs in the model compressed so far:
    /// compared with (2/n) Σ x xᵀ of the final model's inputs computed by the plain reference forward.
    func testLayerwiseStatisticsAreThoseOfTheCompressedModelsInputs() throws {
        let m = Tiny.model(), windows = Tiny.windows(3, length: 12)
        var seen: [LinearID: [Double]] = [:]
        let t = try target(#"{"pattern": "2:4"}"#)
        let result = try Layerwise.run(model: m, windows: windows, targets: Set(LinearKind.allCases), fullHessian: true) { id, weight, input in
            seen[id] = input.hessian()
            let w = weight.denseView!
            return try t.sparse(w, keep: t.keepByScore(w.array.map { Double(abs($0)) }, rows: w.shape[0], cols: w.shape[1], perRow: false), id: id)
        }
        XCTAssertEqual(seen.count, 28)
        let traces = windows.map { ReferenceTrace(result, $0) }
        let n = Double(windows.count * 12)
        func gram(_ rows: [[Float]], width: Int) -> [Double] {
            var g = [Double](repeating: 0, count: width * width)
            for x in rows { for tok in 0..<(x.count / width) { for i in 0..<width { for j in 0..<width {
                g[i * width + j] += 2 * Double(x[tok * width + i]) * Double(x[tok * width + j]) / n } } } }
            return g
        }
        for l in 0..<4 {
            let expected: [(LinearKind, [Double])] = [
                (.q, gram(traces.map { $0.normed[2 * l] }, width: 32)), (.o, gram(traces.map { $0.headOutputs[l] }, width: 48)),
                (.up, gram(traces.map { $0.normed[2 * l + 1] }, width: 32)), (.down, gram(traces.map { $0.activations[l] }, width: 48)),
            ]
            for (kind, e) in expected {
                let got = try XCTUnwrap(seen[LinearID(layer: l, kind: kind)])
                let scale = e.map(abs).max()!
                for i in e.indices { XCTAssertEqual(got[i], e[i], accuracy: 1e-4 * scale, "layer \(l) \(kind) [\(i)]") }
            }
        }
    }
}
