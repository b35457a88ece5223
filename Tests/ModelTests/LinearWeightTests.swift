import Foundation
import Quantization
import TensorCore
import XCTest
@testable import Model

/// Every `LinearWeight` representation: the fast forward against its plain reference and against an
/// independent Float64 product; the backward (input gradient and every trainable tensor's gradient) against
/// central finite differences of that Float64 product, L = Σ y ⊙ R with a fixed random R, h = 1e-6.
/// Observed worst relative errors: fast forward vs Float64 ≤ 1e-7 of the output scale; gradients ≤ 1.1e-7
/// (quantized input gradient; tolerance 1e-4).
final class LinearWeightTests: XCTestCase {
    var rng = SplitMix64(seed: 77)
    let T = 5, C = 16, OC = 6, k = 5

    func values(_ n: Int) -> [Double] { (0..<n).map { _ in Double(2 * rng.nextFloat() - 1) } }
    func tensor(_ shape: [Int], _ v: [Double]) -> Tensor { Tensor(shape: shape, values: v.map(Float.init)) }

    /// The representations under test, each with the Float64 matrix it stands for.
    func cases() throws -> [(String, LinearWeight)] {
        let w = tensor([OC, C], values(OC * C))
        let nm = try SparsityMask(pattern: .nm(n: 2, m: 4), rows: OC, cols: C) { ($0 / 4 + $0) % 4 < 2 }
        let un = try SparsityMask(pattern: .unstructured, rows: OC, cols: C) { _ in self.rng.next() % 3 != 0 }
        let q = try QuantizedTensor(weights: w.array, shape: [OC, C], format: try QuantFormat(bits: 4, groupSize: 8, symmetric: false))
        let d = tensor([OC, k], values(OC * k)), s = tensor([k, C], values(k * C))
        let sMask = try SparsityMask(pattern: .unstructured, rows: k, cols: C) { i in (i / C + i % C) % 5 < 2 }
        return [
            ("dense", .dense(w)),
            ("sparse 2:4", .sparse(SparseWeight(masking: w, mask: nm))),
            ("sparse unstructured", .sparse(SparseWeight(masking: w, mask: un))),
            ("quantized", .quantized(QuantizedWeight(q))),
            ("factorized", .factorized(try FactorizedWeight(dense: d, sparse: SparseWeight(masking: s, mask: sMask)))),
            // D stored quantized: the codes of Dᵀ (k, OC), groups of 3 and 6 output rows of one atom.
            ("factorized, D q4_g3_sym", .factorized(try FactorizedWeight(
                quantizedDense: try QuantizedTensor(weights: transposed(d), shape: [k, OC], format: try QuantFormat(bits: 4, groupSize: 3, symmetric: true)),
                sparse: SparseWeight(masking: s, mask: sMask)))),
            ("factorized, D q3_g6_asym", .factorized(try FactorizedWeight(
                quantizedDense: try QuantizedTensor(weights: transposed(d), shape: [k, OC], format: try QuantFormat(bits: 3, groupSize: 6, symmetric: false)),
                sparse: SparseWeight(masking: s, mask: sMask)))),
            // S's kept values stored quantized too (32 of them, column by column), groups of 8 spanning columns.
            ("factorized, D q4_g3_sym, S q3_g8_asym", .factorized(try {
                let f = try FactorizedWeight(
                    quantizedDense: try QuantizedTensor(weights: transposed(d), shape: [k, OC], format: try QuantFormat(bits: 4, groupSize: 3, symmetric: true)),
                    sparse: SparseWeight(masking: s, mask: sMask))
                return try f.quantizingSparseValues(try QuantizedTensor(weights: keptColumnByColumn(s, sMask), shape: [1, sMask.nonzeros],
                                                                        format: try QuantFormat(bits: 3, groupSize: 8, symmetric: false)))
            }())),
        ]
    }

    /// The kept entries of a (k, C) matrix, column by column (ascending row), by plain loops.
    func keptColumnByColumn(_ s: Tensor, _ mask: SparsityMask) -> [Float] {
        var out: [Float] = []
        for c in 0..<C { for r in 0..<k where mask[r * C + c] { out.append(s[r * C + c]) } }
        return out
    }

    /// Dᵀ of a (OC, k) tensor, row-major (k, OC), by plain loops.
    func transposed(_ d: Tensor) -> [Float] {
        let (rows, cols) = (d.shape[0], d.shape[1])
        return (0..<(rows * cols)).map { i in d[(i % rows) * cols + i / rows] }
    }

    /// y = x · Wᵀ in Double, with W built from the trainable tensors `p` the way each representation does (a
    /// quantized D from its packed codes: D[o, r] = Dᵀ[r, o]).
    func product(_ w: LinearWeight, x: [Double], p: [[Double]]) -> [Double] {
        let matrix: [Double]
        switch w {
        case .dense: matrix = p[0]
        case .sparse(let s): matrix = (0..<(OC * C)).map { s.mask[$0] ? p[0][$0] : 0 }
        case .quantized(let q): matrix = q.packed.dequantized().map(Double.init)
        case .factorized(let f):
            var m = [Double](repeating: 0, count: OC * C)
            if let q = f.quantizedDense {
                let dt = q.dequantized().map(Double.init)
                var sv = f.sparse.values.array.map(Double.init)
                if let qs = f.quantizedSparse {  // S from its codes, in storage order
                    let kept = qs.dequantized()
                    var j = 0
                    sv = [Double](repeating: 0, count: k * C)
                    for c in 0..<C { for r in 0..<k where f.sparse.mask[r * C + c] { sv[r * C + c] = Double(kept[j]); j += 1 } }
                }
                for o in 0..<OC { for c in 0..<C { for r in 0..<k where f.sparse.mask[r * C + c] { m[o * C + c] += dt[r * OC + o] * sv[r * C + c] } } }
            } else {
                for o in 0..<OC { for c in 0..<C { for r in 0..<k where f.sparse.mask[r * C + c] { m[o * C + c] += p[0][o * k + r] * p[1][r * C + c] } } }
            }
            matrix = m
        }
        var y = [Double](repeating: 0, count: T * OC)
        for t in 0..<T { for o in 0..<OC { for c in 0..<C { y[t * OC + o] += x[t * C + c] * matrix[o * C + c] } } }
        return y
    }

    func testForwardEqualsReferenceAndTheFloat64Product() throws {
        for (name, w) in try cases() {
            let x = values(T * C), xt = tensor([T, C], x)
            let fast = Tensor(shape: [T, OC]), ref = Tensor(shape: [T, OC])
            w.forward(out: fast.data, inp: xt.data, rows: T)
            w.forwardReference(out: ref.data, inp: xt.data, rows: T)
            let exact = product(w, x: x, p: w.trainableTensors.map { $0.array.map(Double.init) })
            let scale = exact.map(abs).max()!
            for i in 0..<(T * OC) {
                XCTAssertEqual(Double(fast[i]), exact[i], accuracy: 1e-5 * scale, "\(name) fast")
                XCTAssertEqual(Double(ref[i]), exact[i], accuracy: 1e-6 * scale, "\(name) reference")
            }
            // beta = 1 accumulates.
            let acc = Tensor(shape: [T, OC], values: fast.array)
            w.forward(out: acc.data, inp: xt.data, rows: T, beta: 1)
            for i in 0..<(T * OC) { XCTAssertEqual(acc[i], 2 * fast[i], accuracy: 1e-5 * Float(scale)) }
            // The dense matrix it stands for.
            let m = w.dequantized()
            XCTAssertEqual(m.shape, [OC, C])
            let viaDense = Tensor(shape: [T, OC])
            linearForwardReference(out: viaDense.data, inp: xt.data, weight: m.data, rows: T, inFeatures: C, outFeatures: OC)
            for i in 0..<(T * OC) { XCTAssertEqual(viaDense[i], ref[i], accuracy: 1e-5 * Float(scale), "\(name) dequantized") }
        }
    }

    func testBackwardAgainstFiniteDifferences() throws {
        for (name, w) in try cases() {
            let x = values(T * C), R = values(T * OC), xt = tensor([T, C], x)
            let p = w.trainableTensors.map { $0.array.map(Double.init) }
            let dx = Tensor(shape: [T, C]), grads = w.trainableTensors.map { Tensor(shape: $0.shape) }, dout = tensor([T, OC], R)
            w.backward(dinp: dx.data, grads: grads.map { $0.data }, dout: dout.data, inp: xt.data, rows: T)
            withExtendedLifetime((dout, xt)) {}
            func loss(_ x: [Double], _ p: [[Double]]) -> Double { zip(product(w, x: x, p: p), R).reduce(0) { $0 + $1.0 * $1.1 } }
            let h = 1e-6
            func fd(_ f: (Double) -> Double) -> Double { (f(h) - f(-h)) / (2 * h) }
            var numeric = (0..<x.count).map { i in fd { e in var xx = x; xx[i] += e; return loss(xx, p) } }
            XCTAssertLessThan(relativeError(dx.array, numeric), 1e-4, "\(name): input gradient")
            for (j, g) in grads.enumerated() {
                numeric = (0..<p[j].count).map { i in fd { e in var pp = p; pp[j][i] += e; return loss(x, pp) } }
                XCTAssertLessThan(relativeError(g.array, numeric), 1e-4, "\(name): gradient of trainable tensor \(j)")
            }
            // Sparse values never get a gradient where the mask drops them: training keeps the pattern.
            if case .sparse(let s) = w { for i in 0..<s.values.count where !s.mask[i] { XCTAssertEqual(grads[0][i], 0) } }
            if case .factorized(let f) = w, !f.isQuantized { for i in 0..<f.sparse.values.count where !f.sparse.mask[i] { XCTAssertEqual(grads[1][i], 0) } }
            if case .quantized = w { XCTAssertTrue(grads.isEmpty, "a quantized weight is frozen by construction") }
            if case .factorized(let f) = w, f.isQuantized { XCTAssertTrue(grads.isEmpty, "a factorized weight with a quantized factor is frozen") }
        }
    }

    func relativeError(_ a: [Float], _ n: [Double]) -> Double {
        let scale = max(n.map(abs).max() ?? 0, 1e-12)
        return zip(a, n).map { abs(Double($0) - $1) }.max()! / scale
    }

    /// Bytes as stored and parameters: dense 4 per element; sparse 4 per kept value + 1 bit per element;
    /// quantized its packed bytes; factorized D + (4 + 1-byte index) per kept value of S.
    func testStorageAccounting() throws {
        for (name, w) in try cases() {
            switch w {
            case .dense: XCTAssertEqual(w.storageBytes, 4 * OC * C, name)
            case .sparse(let s):
                XCTAssertEqual(w.storageBytes, 4 * s.mask.nonzeros + (OC * C + 7) / 8, name)
                XCTAssertEqual(w.parameterCount, s.mask.nonzeros)
                if case .nm = s.mask.pattern { XCTAssertEqual(s.mask.nonzeros, OC * C / 2); XCTAssertLessThan(w.storageBytes, 4 * OC * C) }
            case .quantized(let q): XCTAssertEqual(w.storageBytes, q.packed.bytes, name)
            case .factorized(let f):
                if let q = f.quantizedDense {
                    // Codes of k·OC weights at b bits, packed, plus a float16 scale (and minimum) per group.
                    let b = q.format.bits, g = q.format.groupSize, perGroup = q.format.symmetric ? 1 : 2
                    var sBytes = 5 * f.sparse.mask.nonzeros
                    if let qs = f.quantizedSparse {  // codes and scales of the kept values, plus 1-byte indices
                        let n = f.sparse.mask.nonzeros, sb = qs.format.bits, sg = qs.format.groupSize, sp = qs.format.symmetric ? 1 : 2
                        sBytes = (n * sb + 7) / 8 + 2 * sp * (n / sg) + n
                    }
                    XCTAssertEqual(w.storageBytes, (k * OC * b + 7) / 8 + 2 * perGroup * (k * OC / g) + sBytes, name)
                    XCTAssertEqual(w.kinds, [.factorized, .quantized], name)
                } else {
                    XCTAssertEqual(w.storageBytes, 4 * OC * k + 5 * f.sparse.mask.nonzeros, name)
                    XCTAssertEqual(w.kinds, [.factorized], name)
                }
                XCTAssertEqual(w.parameterCount, OC * k + f.sparse.mask.nonzeros)
            }
        }
    }

    /// Masks: bits round-trip, N:M groups are checked, a mask of the wrong size or a group keeping the
    /// wrong number is refused; a factorized weight needs the same count in every column of S.
    func testMaskValidation() throws {
        let m = try SparsityMask(pattern: .nm(n: 2, m: 4), rows: 2, cols: 8) { $0 % 4 == 0 || $0 % 4 == 3 }
        XCTAssertEqual(try SparsityMask(pattern: .nm(n: 2, m: 4), rows: 2, cols: 8, bits: m.bits), m)
        XCTAssertEqual(m.density, 0.5)
        XCTAssertThrowsError(try SparsityMask(pattern: .nm(n: 2, m: 4), rows: 2, cols: 8) { $0 % 4 == 0 }) {
            XCTAssertTrue("\($0)".contains("keeps 1, not 2"), "\($0)")
        }
        XCTAssertThrowsError(try SparsityMask(pattern: .nm(n: 2, m: 4), rows: 2, cols: 6) { _ in true }) {
            XCTAssertTrue("\($0)".contains("multiple of 4"), "\($0)")
        }
        XCTAssertThrowsError(try SparsityMask(pattern: .unstructured, rows: 2, cols: 8, bits: [0xFF])) {
            XCTAssertTrue("\($0)".contains("needs 2 bytes"), "\($0)")
        }
        XCTAssertThrowsError(try SparsityMask(pattern: .unstructured, rows: 1, cols: 3, bits: [0xFF])) {
            XCTAssertTrue("\($0)".contains("beyond its 3 elements"), "\($0)")
        }
        XCTAssertNil(SparsityMask.Pattern("4:4"))
        XCTAssertEqual(SparsityMask.Pattern("2:4"), .nm(n: 2, m: 4))
        let ragged = try SparsityMask(pattern: .unstructured, rows: 3, cols: 2) { $0 != 5 }
        XCTAssertThrowsError(try FactorizedWeight(dense: Tensor(shape: [4, 3]), sparse: SparseWeight(masking: Tensor(shape: [3, 2]), mask: ragged))) {
            XCTAssertTrue("\($0)".contains("same number"), "\($0)")
        }
        XCTAssertThrowsError(try SparseWeight(values: Tensor(shape: [2, 8], values: [Float](repeating: 1, count: 16)), mask: m)) {
            XCTAssertTrue("\($0)".contains("where the mask drops it"), "\($0)")
        }
    }

    /// A factorized weight whose D is stored quantized: D̂ is exactly Dᵀ's dequantized codes transposed (and not
    /// D: quantization happened), a copy keeps the codes, quantizing D keeps S, and shapes are checked.
    func testQuantizedDenseFactor() throws {
        let d = tensor([OC, k], values(OC * k)), s = tensor([k, C], values(k * C))
        let sMask = try SparsityMask(pattern: .unstructured, rows: k, cols: C) { i in (i / C + i % C) % 5 < 2 }
        let plain = try FactorizedWeight(dense: d, sparse: SparseWeight(masking: s, mask: sMask))
        let q = try QuantizedTensor(weights: transposed(d), shape: [k, OC], format: try QuantFormat(bits: 2, groupSize: 3, symmetric: false))
        let f = try plain.quantizingDense(q)
        XCTAssertEqual(f.quantizedDense, q)
        let dt = q.dequantized()
        for o in 0..<OC { for r in 0..<k { XCTAssertEqual(f.dense[o * k + r], dt[r * OC + o]) } }
        XCTAssertNotEqual(f.dense.array, d.array, "2-bit codes cannot hold D exactly")
        XCTAssertEqual(f.sparse.values.array, plain.sparse.values.array)
        XCTAssertEqual(f.sparse.mask, plain.sparse.mask)
        guard case .factorized(let g) = LinearWeight.factorized(f).copy() else { return XCTFail("copy changed the representation") }
        XCTAssertEqual(g.quantizedDense, q)
        XCTAssertEqual(g.dense.array, f.dense.array)
        XCTAssertEqual(ModelWeight.matrix(.factorized(f)).parameterNames(.linear(LinearID(layer: 0, kind: .up))), [])
        // D itself (OC, k) is not Dᵀ: refused unless OC = k.
        let wrong = try QuantizedTensor(weights: d.array, shape: [OC, k], format: try QuantFormat(bits: 4, groupSize: 5, symmetric: true))
        XCTAssertThrowsError(try plain.quantizingDense(wrong)) { XCTAssertTrue("\($0)".contains("Dᵀ of shape [\(k), \(OC)]"), "\($0)") }
        XCTAssertThrowsError(try FactorizedWeight(quantizedDense: wrong, sparse: plain.sparse)) { XCTAssertTrue("\($0)".contains("(rank, out)"), "\($0)") }
    }
}
