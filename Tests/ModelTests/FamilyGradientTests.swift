import Checkpoint
import Foundation
import TensorCore
import XCTest
@testable import Model

/// The family features' gradients through the whole decoder backward (Qwen2's q/k/v biases, Qwen3's per-head
/// q/k RMSNorm with head_dim 16 != hidden / heads) against central finite differences of an independent Float64
/// forward written here (GradientTests checks the ops alone; PyTorchParityTests checks every gradient against
/// PyTorch's). L = Σ hidden ⊙ R over 2 windows of 8, hidden the final-normed states; every entry of every bias
/// and q/k norm tensor is checked, h = 1e-5.
final class FamilyGradientTests: XCTestCase {
    var rng = SplitMix64(seed: 41)

    /// The decoder of `model.config` in Float64 on weights by checkpoint name: final-normed hidden states (B·W, C),
    /// each window on its own (positions 0..<W).
    static func hidden64(_ w: [String: [Double]], config c: ModelConfig, ids: [Int32], batch B: Int, window W: Int) -> [Double] {
        let C = c.hiddenSize, D = c.headDim, eps = c.rmsNormEps, N = B * W
        let offset = c.normKind == .rmsUnitOffset ? 1.0 : 0.0
        func rms(_ x: [Double], _ weight: [Double], rows: Int, channels n: Int) -> [Double] {
            var out = x
            for r in 0..<rows {
                let row = x[(r * n)..<(r * n + n)]
                let s = 1 / (row.reduce(0) { $0 + $1 * $1 } / Double(n) + eps).squareRoot()
                for j in 0..<n { out[r * n + j] = x[r * n + j] * s * (offset + weight[j]) }
            }
            return out
        }
        func normW(_ l: Int, _ site: NormSite) -> [Double] { w[c.name(.norm(layer: l, site))]! }
        func linear(_ x: [Double], _ name: String, rows: Int, inp: Int, bias: String? = nil) -> [Double] {
            let m = w[name]!, outF = m.count / inp, b = bias.flatMap { w[$0] }
            var y = [Double](repeating: 0, count: rows * outF)
            for r in 0..<rows {
                for o in 0..<outF {
                    var s = b?[o] ?? 0
                    for i in 0..<inp { s += x[r * inp + i] * m[o * inp + i] }
                    y[r * outF + o] = s
                }
            }
            return y
        }
        func rope(_ x: inout [Double], heads H: Int, theta: Double) {
            for n in 0..<N {
                let t = n % W
                for h in 0..<H {
                    let base = (n * H + h) * D
                    for i in 0..<(D / 2) {
                        let a = Double(t) * Foundation.pow(theta, -Double(2 * i) / Double(D))
                        let x0 = x[base + i], x1 = x[base + i + D / 2]
                        x[base + i] = x0 * Foundation.cos(a) - x1 * Foundation.sin(a)
                        x[base + i + D / 2] = x1 * Foundation.cos(a) + x0 * Foundation.sin(a)
                    }
                }
            }
        }
        let embed = w["model.embed_tokens.weight"]!
        let es = Double(Float(c.embeddingScale))
        var x = ids.flatMap { id in embed[(Int(id) * C)..<(Int(id) * C + C)].map { $0 * es } }
        for (l, block) in c.blocks.enumerated() {
            let p = "model.layers.\(l)."
            let H = block.numAttentionHeads, G = block.numKeyValueHeads
            let n = rms(x, normW(l, .attentionIn), rows: N, channels: C)
            func proj(_ k: String) -> [Double] { linear(n, p + "self_attn.\(k)_proj.weight", rows: N, inp: C, bias: p + "self_attn.\(k)_proj.bias") }
            var q = proj("q"), k = proj("k")
            let v = proj("v")
            if c.qkNorm {
                q = rms(q, normW(l, .q), rows: N * H, channels: D)
                k = rms(k, normW(l, .k), rows: N * G, channels: D)
            }
            rope(&q, heads: H, theta: c.ropeTheta(layer: l))
            rope(&k, heads: G, theta: c.ropeTheta(layer: l))
            let window = c.attentionWindow(layer: l), scale = c.attentionScale ?? 1 / Double(D).squareRoot()
            var att = [Double](repeating: 0, count: N * H * D)
            for b in 0..<B {
                for t in 0..<W {
                    for h in 0..<H {
                        let g = h / (H / G), qi = ((b * W + t) * H + h) * D
                        let first = window.map { max(0, t - $0 + 1) } ?? 0
                        var s = (first...t).map { u -> Double in
                            let ki = ((b * W + u) * G + g) * D
                            return (0..<D).reduce(0) { $0 + q[qi + $1] * k[ki + $1] } * scale
                        }
                        let mx = s.max()!
                        s = s.map { Foundation.exp($0 - mx) }
                        let z = s.reduce(0, +)
                        for u in first...t {
                            let vi = ((b * W + u) * G + g) * D
                            for d in 0..<D { att[qi + d] += s[u - first] / z * v[vi + d] }
                        }
                    }
                }
            }
            var o = linear(att, p + "self_attn.o_proj.weight", rows: N, inp: H * D, bias: p + "self_attn.o_proj.bias")
            if c.postNorms { o = rms(o, normW(l, .attentionOut), rows: N, channels: C) }
            for i in 0..<x.count { x[i] += o[i] }
            let F = block.intermediateSize
            let m = rms(x, normW(l, .mlpIn), rows: N, channels: C)
            let gate = linear(m, p + "mlp.gate_proj.weight", rows: N, inp: C), up = linear(m, p + "mlp.up_proj.weight", rows: N, inp: C)
            let act = (0..<(N * F)).map { i -> Double in
                let x = gate[i]
                switch c.activation {
                case .silu: return x / (1 + Foundation.exp(-x)) * up[i]
                case .geluTanh: return 0.5 * x * (1 + Foundation.tanh((2 / Double.pi).squareRoot() * (x + 0.044715 * x * x * x))) * up[i]
                }
            }
            var down = linear(act, p + "mlp.down_proj.weight", rows: N, inp: F)
            if c.postNorms { down = rms(down, normW(l, .mlpOut), rows: N, channels: C) }
            for i in 0..<x.count { x[i] += down[i] }
        }
        return rms(x, w["model.norm.weight"]!, rows: N, channels: C)
    }

    /// The decoder's gradients of L = Σ hidden ⊙ R (2 windows of 8, R random) on `fixture` against central
    /// differences (h = 1e-5) of `hidden64`, after checking that L agrees between the Float32 decoder and the Float64
    /// forward. `entries` picks, per tensor name (of the family's names), which entries to check (nil: skip the
    /// tensor); every picked tensor must have a gradient, within 1e-4 relative; `requireGradient` also demands a
    /// gradient larger than 1e-3. Returns the checked tensor names.
    @discardableResult
    func checkGradients(_ fixture: String, requireGradient: Bool = false,
                        entries: (_ name: String, _ count: Int, _ config: ModelConfig) -> [Int]?) throws -> [String] {
        let m = try Checkpoint.read(Fixtures.path("\(fixture).h5")).model, c = m.config, B = 2, W = 8
        let x = (0..<(B * W)).map { _ in Int32(rng.next() % UInt64(c.vocabSize)) }
        let d = TransformerDecoder(model: m, batch: B, window: W, training: true)
        let R = Tensor(shape: [B * W, c.hiddenSize])
        R.fillUniform(scale: 1, rng: &rng)
        d.forward(x)
        let grads = ModelGradients(model: m)
        d.backward(dHidden: R.data, grads: grads)
        let analytic = Dictionary(uniqueKeysWithValues: grads.named.map { ($0.name, $0.tensor.array) })

        var w = Dictionary(uniqueKeysWithValues: m.namedTensors.map { ($0.name, $0.tensor.array.map(Double.init)) })
        let Rd = R.array.map(Double.init)
        func loss() -> Double { zip(Self.hidden64(w, config: c, ids: x, batch: B, window: W), Rd).reduce(0) { $0 + $1.0 * $1.1 } }
        // The Float64 forward is the decoder's function: L agrees with the Float32 forward's.
        let l32 = zip(d.hidden.array, Rd).reduce(0.0) { $0 + Double($1.0) * $1.1 }, l64 = loss()
        XCTAssertEqual(l32, l64, accuracy: 1e-4 * max(1, abs(l64)), fixture)  // observed 3.3e-6 (qwen2, L 11.6), 4.0e-6 (qwen3, L 0.70)

        let h = 1e-5
        var checked: [String] = [], worst = 0.0
        for name in w.keys.sorted() {
            guard let indices = entries(name, w[name]!.count, c) else { continue }
            checked.append(name)
            let g = try XCTUnwrap(analytic[name], "\(fixture): no gradient for \(name)")
            var numeric: [Double] = []
            for i in indices {
                let v = w[name]![i]
                w[name]![i] = v + h; let lp = loss()
                w[name]![i] = v - h; let lm = loss()
                w[name]![i] = v
                numeric.append((lp - lm) / (2 * h))
            }
            let scale = max(numeric.map(abs).max()!, 1e-12)
            let err = zip(indices.map { g[$0] }, numeric).map { abs(Double($0) - $1) }.max()! / scale
            XCTAssertLessThan(err, 1e-4, "\(fixture): \(name)")
            if requireGradient { XCTAssertGreaterThan(scale, 1e-3, "\(fixture): \(name) has a gradient") }
            worst = max(worst, err)
        }
        print("\(fixture) worst relative gradient error \(worst)")
        return checked
    }

    /// Gemma 3 (tiny-gemma3: sliding window 5 on layers 0 and 2 with rotary base 1e4, full layer 1 with 1e6,
    /// scores × 24^(−1/2), (1 + w) norms, post-sublayer norms, GELU-tanh gating, embedding × √C) over 2 windows of
    /// 8 tokens (so the window cuts): every entry of every norm vector, and 12 sampled entries of the embedding and
    /// of each projection. Observed worst 1.7e-6.
    func testGemma3GradientsThroughTheDecoderAgainstFloat64FiniteDifferences() throws {
        let c = try Checkpoint.read(Fixtures.path("tiny-gemma3.h5")).model.config
        XCTAssertEqual(c.slidingWindow, 5)
        XCTAssertLessThan(try XCTUnwrap(c.slidingWindow), 8, "the window must cut inside a training window")
        var norms = 0
        let checked = try checkGradients("tiny-gemma3") { _, count, c in
            if count == c.hiddenSize || count == c.headDim { norms += 1; return Array(0..<count) }
            var all = Array(0..<count)
            all.shuffle(using: &self.rng)
            return Array(all.prefix(12))
        }
        XCTAssertEqual(norms, 3 * 6 + 1)
        XCTAssertEqual(checked.count, 3 * 13 + 2, "every tensor checked")
    }

    /// Every entry of every bias (Qwen2 q/k/v) and q/k norm (Qwen3). Observed ≤ 1.0e-6 (qwen2 biases), ≤ 6.6e-7
    /// (qwen3 q/k norms).
    func testBiasAndQKNormGradientsThroughTheDecoderAgainstFloat64FiniteDifferences() throws {
        for (fixture, expected) in [("tiny-qwen2", 6), ("tiny-qwen3", 4)] {
            let checked = try checkGradients(fixture, requireGradient: true) { name, count, _ in
                name.hasSuffix(".bias") || name.hasSuffix("q_norm.weight") || name.hasSuffix("k_norm.weight") ? Array(0..<count) : nil
            }
            XCTAssertEqual(checked.count, expected, fixture)
        }
    }
}
