import Foundation
import XCTest
@testable import TensorCore

/// Every backward op against central finite differences of an independent Float64 forward.
///
/// For an op y = f(x₁, …), the scalar L = Σ y ⊙ R with a fixed random R is differentiated two ways: our
/// Float32 backward with dout = R, and (L(x + h) - L(x - h)) / 2h with f re-implemented in Double, h = 1e-6.
/// The error measure is max |analytic - numeric| / max |numeric| over each input; Float32 backward arithmetic
/// bounds it near 1e-6, so the tolerance is 1e-4 everywhere. Observed worst errors: linear + mask 7.2e-8,
/// embedding 1.8e-10, RMSNorm 1.0e-7, LayerNorm 1.0e-7, rotary 6.6e-8, attention 2.8e-7, SwiGLU 9.3e-8,
/// GELU 4.3e-8 (erf) / 5.4e-7 (tanh), cross-entropy 7.2e-8, KL 1.0e-7 (τ = 1) / 1.9e-7 (τ = 2.5).
final class GradientTests: XCTestCase {
    var rng = SplitMix64(seed: 2024)

    func values(_ n: Int, scale: Double = 1) -> [Double] { (0..<n).map { _ in scale * Double(2 * rng.nextFloat() - 1) } }

    /// Finite-difference gradient of Σ f(inputs) ⊙ R with respect to input `which`.
    func numeric(_ inputs: [[Double]], _ which: Int, _ R: [Double], _ f: ([[Double]]) -> [Double], at indices: [Int]) -> [Double] {
        var x = inputs
        let h = 1e-6
        return indices.map { i in
            let x0 = x[which][i]
            x[which][i] = x0 + h
            let lp = zip(f(x), R).reduce(0) { $0 + $1.0 * $1.1 }
            x[which][i] = x0 - h
            let lm = zip(f(x), R).reduce(0) { $0 + $1.0 * $1.1 }
            x[which][i] = x0
            return (lp - lm) / (2 * h)
        }
    }

    func relativeError(_ analytic: [Float], _ numeric: [Double]) -> Double {
        XCTAssertEqual(analytic.count, numeric.count)
        let scale = max(numeric.map(abs).max() ?? 0, 1e-12)
        return zip(analytic, numeric).map { abs(Double($0) - $1) }.max()! / scale
    }

    /// Checks each listed input's analytic gradient; returns the worst relative error.
    @discardableResult
    func check(_ op: String, _ inputs: [[Double]], outputs: Int, wrt: [Int], tolerance: Double = 1e-4, samples: Int? = nil,
               forward: ([[Double]]) -> [Double], backward: ([Tensor], Tensor) -> [Tensor]) -> Double {
        let R = values(outputs)
        let ts = inputs.map { Tensor(shape: [$0.count], values: $0.map(Float.init)) }
        let grads = backward(ts, Tensor(shape: [outputs], values: R.map(Float.init)))
        var worst = 0.0
        for (slot, which) in wrt.enumerated() {
            // All entries, or a fixed random sample of them for the larger shapes.
            var indices = Array(0..<inputs[which].count)
            if let samples, samples < indices.count { indices.shuffle(using: &rng); indices = Array(indices.prefix(samples)) }
            let err = relativeError(indices.map { grads[slot][$0] }, numeric(inputs, which, R, forward, at: indices))
            XCTAssertLessThan(err, tolerance, "\(op): gradient of input \(which)")
            worst = max(worst, err)
        }
        return worst
    }

    func f32(_ t: Tensor) -> UnsafeMutablePointer<Float> { t.data }

    func testLinearAndMaskedLinear() {
        let T = 5, C = 7, OC = 6
        let x = values(T * C), w = values(OC * C), b = values(OC), m = (0..<(OC * C)).map { _ in Double(rng.next() % 2) }
        func fwd(_ i: [[Double]]) -> [Double] {
            var y = [Double](repeating: 0, count: T * OC)
            for t in 0..<T { for o in 0..<OC {
                var s = i[2][o]
                for c in 0..<C { s += i[0][t * C + c] * i[1][o * C + c] * i[3][o * C + c] }
                y[t * OC + o] = s
            } }
            return y
        }
        let err = check("linear", [x, w, b, m], outputs: T * OC, wrt: [0, 1, 2, 3], forward: fwd) { i, dout in
            let eff = Tensor(shape: [OC * C]), deff = Tensor(shape: [OC * C])
            let dx = Tensor(shape: [T * C]), dw = Tensor(shape: [OC * C]), db = Tensor(shape: [OC]), dm = Tensor(shape: [OC * C])
            maskedWeightForward(effective: eff.data, weight: i[1].data, mask: i[3].data, count: OC * C)
            linearBackward(dinp: dx.data, dweight: deff.data, dbias: db.data, dout: dout.data, inp: i[0].data,
                           weight: eff.data, rows: T, inFeatures: C, outFeatures: OC)
            maskedWeightBackward(dweight: dw.data, dmask: dm.data, deffective: deff.data, weight: i[1].data, mask: i[3].data, count: OC * C)
            return [dx, dw, db, dm]
        }
        XCTAssertLessThan(err, 1e-4)  // observed 7.2e-8
    }

    func testEmbedding() {
        let V = 6, C = 5, ids: [Int32] = [3, 0, 3, 5, 3]
        let table = values(V * C)
        check("embedding", [table], outputs: ids.count * C, wrt: [0], forward: { i in
            ids.flatMap { id in (0..<C).map { i[0][Int(id) * C + $0] } }
        }) { i, dout in
            let d = Tensor(shape: [V * C])
            ids.withUnsafeBufferPointer { embeddingBackward(dtable: d.data, dout: dout.data, ids: $0.baseAddress!, rows: ids.count, channels: C) }
            return [d]
        }
    }

    func testRMSNorm() {
        let T = 4, C = 9, eps = 1e-5
        let x = values(T * C, scale: 2), w = values(C)
        let err = check("rmsnorm", [x, w], outputs: T * C, wrt: [0, 1], forward: { i in
            (0..<T).flatMap { t -> [Double] in
                let row = i[0][(t * C)..<((t + 1) * C)]
                let r = 1 / (row.reduce(0) { $0 + $1 * $1 } / Double(C) + eps).squareRoot()
                return (0..<C).map { i[1][$0] * row[t * C + $0] * r }
            }
        }) { i, dout in
            let y = Tensor(shape: [T * C]), rstd = Tensor(shape: [T]), dx = Tensor(shape: [T * C]), dw = Tensor(shape: [C])
            rmsnormForward(out: y.data, inp: i[0].data, weight: i[1].data, eps: Float(eps), rows: T, channels: C, rstd: rstd.data)
            rmsnormBackward(dinp: dx.data, dweight: dw.data, dout: dout.data, inp: i[0].data, weight: i[1].data, rstd: rstd.data, rows: T, channels: C)
            return [dx, dw]
        }
        XCTAssertLessThan(err, 1e-4)  // observed 1.0e-7
    }

    func testBias() {
        let R = 5, J = 7
        let x = values(R * J), b = values(J)
        let err = check("bias", [x, b], outputs: R * J, wrt: [0, 1], forward: { i in
            (0..<(R * J)).map { i[0][$0] + i[1][$0 % J] }
        }) { i, dout in
            let y = Tensor(shape: [R * J]), db = Tensor(shape: [J])
            y.data.update(from: i[0].data, count: R * J)
            biasForward(out: y.data, bias: i[1].data, rows: R, columns: J)
            biasBackward(dbias: db.data, dout: dout.data, rows: R, columns: J)
            return [Tensor(shape: [R * J], values: (0..<(R * J)).map { dout[$0] }), db]  // dx = dout: passes through
        }
        XCTAssertLessThan(err, 1e-4)
        // The forward against its plain reference.
        let y = Tensor(shape: [R * J], values: x.map(Float.init)), yr = Tensor(shape: [R * J], values: x.map(Float.init))
        let bt = Tensor(shape: [J], values: b.map(Float.init))
        biasForward(out: y.data, bias: bt.data, rows: R, columns: J)
        biasForwardReference(out: yr.data, bias: bt.data, rows: R, columns: J)
        XCTAssertEqual((0..<(R * J)).map { y[$0] }, (0..<(R * J)).map { yr[$0] })
    }

    /// Qwen3's q/k norm: y = rmsnorm over each head's D channels of (x·Wᵀ + b), one weight (D) shared by the
    /// heads; the decoder runs it as an RMSNorm of T·H rows of D. Checked through the whole chain.
    func testBiasedProjectionWithPerHeadRMSNorm() {
        let T = 3, K = 5, H = 2, D = 4, eps = 1e-6
        let x = values(T * K), w = values(H * D * K), b = values(H * D), g = values(D)
        let err = check("linear + bias + per-head rmsnorm", [x, w, b, g], outputs: T * H * D, wrt: [0, 1, 2, 3], forward: { i in
            var out: [Double] = []
            for t in 0..<T {
                for h in 0..<H {
                    let pre = (0..<D).map { d -> Double in
                        let row = h * D + d
                        return (0..<K).reduce(i[2][row]) { $0 + i[0][t * K + $1] * i[1][row * K + $1] }
                    }
                    let r = 1 / (pre.reduce(0) { $0 + $1 * $1 } / Double(D) + eps).squareRoot()
                    out += (0..<D).map { i[3][$0] * pre[$0] * r }
                }
            }
            return out
        }) { i, dout in
            let pre = Tensor(shape: [T * H * D]), y = Tensor(shape: [T * H * D]), rstd = Tensor(shape: [T * H])
            linearForward(out: pre.data, inp: i[0].data, weight: i[1].data, rows: T, inFeatures: K, outFeatures: H * D)
            biasForward(out: pre.data, bias: i[2].data, rows: T, columns: H * D)
            rmsnormForward(out: y.data, inp: pre.data, weight: i[3].data, eps: Float(eps), rows: T * H, channels: D, rstd: rstd.data)
            let dpre = Tensor(shape: [T * H * D]), dg = Tensor(shape: [D]), db = Tensor(shape: [H * D])
            let dx = Tensor(shape: [T * K]), dw = Tensor(shape: [H * D * K])
            rmsnormBackward(dinp: dpre.data, dweight: dg.data, dout: dout.data, inp: pre.data, weight: i[3].data, rstd: rstd.data,
                            rows: T * H, channels: D)
            biasBackward(dbias: db.data, dout: dpre.data, rows: T, columns: H * D)
            linearBackward(dinp: dx.data, dweight: dw.data, dout: dpre.data, inp: i[0].data, weight: i[1].data,
                           rows: T, inFeatures: K, outFeatures: H * D)
            return [dx, dw, db, dg]
        }
        XCTAssertLessThan(err, 1e-4)
    }

    func testLayerNorm() {
        let T = 4, C = 9, eps = 1e-5
        let x = values(T * C, scale: 2), w = values(C), b = values(C)
        let err = check("layernorm", [x, w, b], outputs: T * C, wrt: [0, 1, 2], forward: { i in
            (0..<T).flatMap { t -> [Double] in
                let row = Array(i[0][(t * C)..<((t + 1) * C)])
                let m = row.reduce(0, +) / Double(C)
                let v = row.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Double(C)
                return (0..<C).map { (row[$0] - m) / (v + eps).squareRoot() * i[1][$0] + i[2][$0] }
            }
        }) { i, dout in
            let y = Tensor(shape: [T * C]), mean = Tensor(shape: [T]), rstd = Tensor(shape: [T])
            let dx = Tensor(shape: [T * C]), dw = Tensor(shape: [C]), db = Tensor(shape: [C])
            layernormForward(out: y.data, inp: i[0].data, weight: i[1].data, bias: i[2].data, eps: Float(eps), rows: T, channels: C,
                             mean: mean.data, rstd: rstd.data)
            layernormBackward(dinp: dx.data, dweight: dw.data, dbias: db.data, dout: dout.data, inp: i[0].data, weight: i[1].data,
                              mean: mean.data, rstd: rstd.data, rows: T, channels: C)
            return [dx, dw, db]
        }
        XCTAssertLessThan(err, 1e-4)  // observed 1.0e-7
    }

    func testRotary() {
        let T = 5, H = 3, D = 8, theta = 10000.0
        let x = values(T * H * D)
        let table = RotaryTable(headDim: D, theta: theta, positions: T)
        check("rotary", [x], outputs: T * H * D, wrt: [0], forward: { i in
            var y = i[0]
            for t in 0..<T { for h in 0..<H { for j in 0..<(D / 2) {
                let a = Double(Float(t) * (1 / Foundation.pow(Float(theta), Float(2 * j) / Float(D))))
                let o = (t * H + h) * D, u = i[0][o + j], v = i[0][o + j + D / 2]
                y[o + j] = u * Foundation.cos(a) - v * Foundation.sin(a)
                y[o + j + D / 2] = v * Foundation.cos(a) + u * Foundation.sin(a)
            } } }
            return y
        }) { _, dout in
            let g = dout.copy()
            rotaryBackward(g.data, rows: T, heads: H, table: table)
            return [g]
        }
    }

    /// Double causal GQA attention over flat q (T,H,D), k, v (T,G,D).
    /// Causal GQA attention in Float64; `window` w lets query i see keys i − w + 1 ... i; `scale` default 1/√D.
    static func attention64(_ q: [Double], _ k: [Double], _ v: [Double], T: Int, H: Int, G: Int, D: Int,
                            window: Int? = nil, scale: Double? = nil) -> [Double] {
        var out = [Double](repeating: 0, count: T * H * D), e = [Double](repeating: 0, count: T)
        let s = scale ?? 1 / Double(D).squareRoot()
        for h in 0..<H {
            let g = h / (H / G)
            for i in 0..<T {
                var m = -Double.infinity
                let first = window.map { max(0, i - $0 + 1) } ?? 0
                for j in first...i {
                    var dot = 0.0
                    for d in 0..<D { dot += q[(i * H + h) * D + d] * k[(j * G + g) * D + d] }
                    e[j] = dot * s
                    m = max(m, e[j])
                }
                var z = 0.0
                for j in first...i { e[j] = Foundation.exp(e[j] - m); z += e[j] }
                for d in 0..<D {
                    var acc = 0.0
                    for j in first...i { acc += e[j] * v[(j * G + g) * D + d] }
                    out[(i * H + h) * D + d] = acc / z
                }
            }
        }
        return out
    }

    func testCausalGroupedQueryAttention() {
        // T spans two query blocks to exercise the block loop and the per-worker dk/dv partials.
        let blockRows = AttentionForward.blockRows
        for (T, H, G, D) in [(6, 4, 2, 4), (blockRows + 3, 2, 1, 2)] {
            let q = values(T * H * D), k = values(T * G * D), v = values(T * G * D)
            let err = check("attention", [q, k, v], outputs: T * H * D, wrt: [0, 1, 2], samples: 24, forward: { i in
                Self.attention64(i[0], i[1], i[2], T: T, H: H, G: G, D: D)
            }) { i, dout in
                let dq = Tensor(shape: [T * H * D]), dk = Tensor(shape: [T * G * D]), dv = Tensor(shape: [T * G * D])
                let scratch = Tensor(shape: [AttentionBackward.scratchCount(tokens: T, kvHeads: G, headDim: D)])
                attentionBackward(dq: dq.data, dk: dk.data, dv: dv.data, dout: dout.data, q: i[0].data, k: i[1].data, v: i[2].data,
                                  rows: T, heads: H, kvHeads: G, headDim: D, scratch: scratch.data)
                return [dq, dk, dv]
            }
            XCTAssertLessThan(err, 1e-4)  // observed 1.8e-7 (T = 6), 2.8e-7 (T = 131)
        }
    }

    /// Sliding-window attention with a score scale other than 1/√D (Gemma 3: 1/√query_pre_attn_scalar). Windows
    /// shorter than a block, spanning a block boundary, and wider than the sequence (= causal); T crosses blocks.
    func testSlidingWindowAttentionWithScale() {
        let blockRows = AttentionForward.blockRows
        for (T, H, G, D, window) in [(9, 4, 1, 4, 3), (blockRows + 40, 2, 1, 2, 50), (blockRows + 3, 2, 2, 2, 1), (7, 2, 1, 4, 100)] {
            let q = values(T * H * D), k = values(T * G * D), v = values(T * G * D), scale = 0.37
            let err = check("attention window \(window)", [q, k, v], outputs: T * H * D, wrt: [0, 1, 2], samples: 24, forward: { i in
                Self.attention64(i[0], i[1], i[2], T: T, H: H, G: G, D: D, window: window, scale: scale)
            }) { i, dout in
                let dq = Tensor(shape: [T * H * D]), dk = Tensor(shape: [T * G * D]), dv = Tensor(shape: [T * G * D])
                let scratch = Tensor(shape: [AttentionBackward.scratchCount(tokens: T, kvHeads: G, headDim: D)])
                attentionBackward(dq: dq.data, dk: dk.data, dv: dv.data, dout: dout.data, q: i[0].data, k: i[1].data, v: i[2].data,
                                  rows: T, heads: H, kvHeads: G, headDim: D, scratch: scratch.data, window: window, scale: Float(scale))
                return [dq, dk, dv]
            }
            XCTAssertLessThan(err, 1e-4)
            // The fast forward against the Float64 function and against its plain reference.
            let qt = Tensor(shape: [T * H * D], values: q.map(Float.init)), kt = Tensor(shape: [T * G * D], values: k.map(Float.init))
            let vt = Tensor(shape: [T * G * D], values: v.map(Float.init))
            let fast = Tensor(shape: [T * H * D]), ref = Tensor(shape: [T * H * D])
            let scores = Tensor(shape: [AttentionForward.scratchCount(tokens: T)])
            attentionForward(out: fast.data, q: qt.data, k: kt.data, v: vt.data, rows: T, heads: H, kvHeads: G, headDim: D,
                             scores: scores.data, window: window, scale: Float(scale))
            attentionForwardReference(out: ref.data, q: qt.data, k: kt.data, v: vt.data, rows: T, heads: H, kvHeads: G, headDim: D,
                                      window: window, scale: Float(scale))
            let exact = Self.attention64(qt.array.map(Double.init), kt.array.map(Double.init), vt.array.map(Double.init),
                                         T: T, H: H, G: G, D: D, window: window, scale: Double(Float(scale)))
            for i in 0..<(T * H * D) {
                XCTAssertEqual(Double(fast[i]), exact[i], accuracy: 2e-6)
                XCTAssertEqual(Double(ref[i]), exact[i], accuracy: 1e-6)
            }
        }
    }

    /// Gemma's RMSNorm, x · r ⊙ (1 + w).
    func testRMSNormWithUnitOffset() {
        let T = 4, C = 9, eps = 1e-6
        let x = values(T * C, scale: 2), w = values(C, scale: 0.5)
        func f(_ i: [[Double]]) -> [Double] {
            (0..<T).flatMap { t -> [Double] in
                let row = i[0][(t * C)..<((t + 1) * C)]
                let r = 1 / (row.reduce(0) { $0 + $1 * $1 } / Double(C) + eps).squareRoot()
                return (0..<C).map { (1 + i[1][$0]) * row[t * C + $0] * r }
            }
        }
        let err = check("rmsnorm (1 + w)", [x, w], outputs: T * C, wrt: [0, 1], forward: f) { i, dout in
            let y = Tensor(shape: [T * C]), rstd = Tensor(shape: [T]), dx = Tensor(shape: [T * C]), dw = Tensor(shape: [C])
            rmsnormForward(out: y.data, inp: i[0].data, weight: i[1].data, eps: Float(eps), rows: T, channels: C, rstd: rstd.data, offset: 1)
            rmsnormBackward(dinp: dx.data, dweight: dw.data, dout: dout.data, inp: i[0].data, weight: i[1].data, rstd: rstd.data,
                            rows: T, channels: C, offset: 1)
            return [dx, dw]
        }
        XCTAssertLessThan(err, 1e-4)
        let xt = Tensor(shape: [T * C], values: x.map(Float.init)), wt = Tensor(shape: [C], values: w.map(Float.init))
        let fast = Tensor(shape: [T * C]), ref = Tensor(shape: [T * C])
        rmsnormForward(out: fast.data, inp: xt.data, weight: wt.data, eps: Float(eps), rows: T, channels: C, offset: 1)
        rmsnormForwardReference(out: ref.data, inp: xt.data, weight: wt.data, eps: Float(eps), rows: T, channels: C, offset: 1)
        let exact = f([xt.array.map(Double.init), wt.array.map(Double.init)])
        for i in 0..<(T * C) {
            XCTAssertEqual(Double(fast[i]), exact[i], accuracy: 2e-6 * max(1, abs(exact[i])))
            XCTAssertEqual(Double(ref[i]), exact[i], accuracy: 1e-6 * max(1, abs(exact[i])))
        }
    }

    /// Gemma's GeGLU: gelu_tanh(gate) ⊙ up.
    func testGELUTanhGated() {
        let n = 40
        func f(_ i: [[Double]]) -> [Double] {
            (0..<n).map { j in
                let x = i[0][j]
                return 0.5 * x * (1 + Foundation.tanh((2 / Double.pi).squareRoot() * (x + 0.044715 * x * x * x))) * i[1][j]
            }
        }
        let g = values(n, scale: 4), u = values(n)
        let err = check("gelu-tanh gated", [g, u], outputs: n, wrt: [0, 1], forward: f) { i, dout in
            let dg = Tensor(shape: [n]), du = Tensor(shape: [n])
            geluTanhGatedBackward(dgate: dg.data, dup: du.data, dout: dout.data, gate: i[0].data, up: i[1].data, count: n)
            return [dg, du]
        }
        XCTAssertLessThan(err, 1e-4)
        let gt = Tensor(shape: [n], values: g.map(Float.init)), ut = Tensor(shape: [n], values: u.map(Float.init))
        let fast = Tensor(shape: [n]), ref = Tensor(shape: [n])
        geluTanhGatedForward(out: fast.data, gate: gt.data, up: ut.data, count: n)
        geluTanhGatedForwardReference(out: ref.data, gate: gt.data, up: ut.data, count: n)
        let exact = f([gt.array.map(Double.init), ut.array.map(Double.init)])
        for i in 0..<n {
            XCTAssertEqual(Double(fast[i]), exact[i], accuracy: 4e-6)
            XCTAssertEqual(Double(ref[i]), exact[i], accuracy: 1e-6)
        }
    }

    func testSwiGLU() {
        let n = 40
        check("swiglu", [values(n, scale: 4), values(n)], outputs: n, wrt: [0, 1], forward: { i in
            (0..<n).map { i[0][$0] / (1 + Foundation.exp(-i[0][$0])) * i[1][$0] }
        }) { i, dout in
            let dg = Tensor(shape: [n]), du = Tensor(shape: [n])
            swigluBackward(dgate: dg.data, dup: du.data, dout: dout.data, gate: i[0].data, up: i[1].data, count: n)
            return [dg, du]
        }
    }

    func testGELU() {
        let n = 40
        for kind in [GELUKind.exact, .tanh] {
            check("gelu \(kind)", [values(n, scale: 4)], outputs: n, wrt: [0], forward: { i in
                i[0].map { x in
                    kind == .exact ? 0.5 * x * (1 + Foundation.erf(x / 2.0.squareRoot()))
                        : 0.5 * x * (1 + Foundation.tanh((2 / Double.pi).squareRoot() * (x + 0.044715 * x * x * x)))
                }
            }) { i, dout in
                let d = Tensor(shape: [n])
                geluBackward(dinp: d.data, dout: dout.data, inp: i[0].data, count: n, kind: kind)
                return [d]
            }
        }
    }

    func testCrossEntropy() {
        let T = 3, V = 11
        let targets: [Int32] = [4, 0, 10]
        // The output here is the NLL per row; R weights the rows.
        check("cross-entropy", [values(T * V, scale: 3)], outputs: T, wrt: [0], forward: { i in
            (0..<T).map { t in
                let z = Array(i[0][(t * V)..<((t + 1) * V)]), m = z.max()!
                return m + Foundation.log(z.reduce(0) { $0 + Foundation.exp($1 - m) }) - z[Int(targets[t])]
            }
        }) { i, dout in
            // Per-row weights are applied through `scale` one row at a time.
            let d = Tensor(shape: [T * V])
            targets.withUnsafeBufferPointer { tp in
                for t in 0..<T {
                    crossEntropyBackward(dlogits: d.data + t * V, nll: nil, logits: i[0].data + t * V, targets: tp.baseAddress! + t,
                                         scale: dout[t], rows: 1, columns: V)
                }
            }
            return [d]
        }
    }

    func testKLDivergenceWithTemperature() {
        let T = 3, V = 11
        for tau in [1.0, 2.5] {
            let teacher = values(T * V, scale: 3)
            check("kl tau=\(tau)", [values(T * V, scale: 3)], outputs: T, wrt: [0], forward: { i in
                (0..<T).map { t in
                    klDivergenceReference(student: Array(i[0][(t * V)..<((t + 1) * V)]),
                                          teacher: Array(teacher[(t * V)..<((t + 1) * V)]), temperature: tau)
                }
            }) { i, dout in
                let d = Tensor(shape: [T * V]), zt = Tensor(shape: [T * V], values: teacher.map(Float.init))
                var kl = [Double](repeating: 0, count: T)
                for t in 0..<T {
                    klDivergenceBackward(dlogits: d.data + t * V, kl: &kl[t], student: i[0].data + t * V, teacher: zt.data + t * V,
                                         temperature: Float(tau), scale: dout[t], rows: 1, columns: V)
                    let ref = klDivergenceReference(student: (0..<V).map { Double(i[0][t * V + $0]) },
                                                    teacher: Array(teacher[(t * V)..<((t + 1) * V)]), temperature: tau)
                    XCTAssertEqual(kl[t], ref, accuracy: 1e-5)  // forward value; observed 2e-7
                }
                return [d]
            }
        }
    }
}

extension GradientTests {
    func testFeatureDistances() {
        let T = 4, C = 7
        let b = values(T * C)
        let bt = Tensor(shape: [T * C], values: b.map(Float.init))
        let cosErr = check("cosine distance", [values(T * C)], outputs: T, wrt: [0], forward: { i in
            (0..<T).map { t in
                var xy = 0.0, xx = 0.0, yy = 0.0
                for c in 0..<C { let x = i[0][t * C + c], y = b[t * C + c]; xy += x * y; xx += x * x; yy += y * y }
                return 1 - xy / (xx.squareRoot() * yy.squareRoot())
            }
        }) { i, dout in
            let d = Tensor(shape: [T * C])
            for t in 0..<T {
                cosineDistanceBackward(da: d.data + t * C, distance: nil, a: i[0].data + t * C, b: bt.data + t * C,
                                       scale: dout[t], rows: 1, channels: C)
            }
            return [d]
        }
        XCTAssertLessThan(cosErr, 1e-4)  // observed 4.7e-8
        check("squared error", [values(T * C)], outputs: T, wrt: [0], forward: { i in
            (0..<T).map { t in (0..<C).reduce(0) { $0 + (i[0][t * C + $1] - b[t * C + $1]) * (i[0][t * C + $1] - b[t * C + $1]) } }
        }) { i, dout in
            let d = Tensor(shape: [T * C])
            for t in 0..<T {
                squaredErrorBackward(da: d.data + t * C, error: nil, a: i[0].data + t * C, b: bt.data + t * C, scale: dout[t], rows: 1, channels: C)
            }
            return [d]
        }
    }

    /// Gates per group of features (heads, neurons, channels), plain and accumulating (a gated residual add).
    func testGates() {
        let T = 4, G = 3, S = 5
        for accumulate in [false, true] {
            let x = values(T * G * S), g = values(G), base = values(T * G * S)
            func fwd(_ i: [[Double]]) -> [Double] {
                (0..<(T * G * S)).map { e in (accumulate ? base[e] : 0) + i[0][e] * i[1][(e % (G * S)) / S] }
            }
            check("gates (accumulate \(accumulate))", [x, g], outputs: T * G * S, wrt: [0, 1], forward: fwd) { i, dout in
                let dx = Tensor(shape: [T * G * S]), dg = Tensor(shape: [G])
                gateBackward(dinp: dx.data, dgate: dg.data, dout: dout.data, inp: i[0].data, gate: i[1].data, rows: T, groups: G, groupSize: S)
                return [dx, dg]
            }
            // Fast forward against its reference.
            let xt = Tensor(shape: [T * G * S], values: x.map(Float.init)), gt = Tensor(shape: [G], values: g.map(Float.init))
            let a = Tensor(shape: [T * G * S], values: base.map(Float.init)), b = Tensor(shape: [T * G * S], values: base.map(Float.init))
            gateForward(out: a.data, inp: xt.data, gate: gt.data, rows: T, groups: G, groupSize: S, accumulate: accumulate)
            gateForwardReference(out: b.data, inp: xt.data, gate: gt.data, rows: T, groups: G, groupSize: S, accumulate: accumulate)
            for e in 0..<(T * G * S) { XCTAssertEqual(a[e], b[e], accuracy: 1e-6) }
        }
    }
}
