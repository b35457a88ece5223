import Foundation
import Model
import TensorCore
import XCTest
@testable import Training

/// VIB masks: the KL term, the expected size and the Lagrangian against central differences in Float64; the
/// reparameterised gradients of μ and log σ² through the decoder against central differences of the forward;
/// the size model against the model's own parameter count; ε deterministic per (seed, step, micro-batch).
final class VIBTests: XCTestCase {
    var rng = SplitMix64(seed: 5)
    func uniform(_ lo: Double, _ hi: Double) -> Double { lo + (hi - lo) * Double(rng.nextFloat()) }

    /// A GQA config with differing layers (3 layers: 6/4/2 heads in 2 KV groups, MLP 12/10/8).
    func config(tied: Bool) -> ModelConfig {
        var c = ModelConfig(vocabSize: 23, hiddenSize: 8, intermediateSize: 12, numHiddenLayers: 3, numAttentionHeads: 6,
                            numKeyValueHeads: 2, headDim: 4)
        c.tieWordEmbeddings = tied
        c.blocks[1] = BlockConfig(numAttentionHeads: 4, numKeyValueHeads: 2, intermediateSize: 10)
        c.blocks[2] = BlockConfig(numAttentionHeads: 2, numKeyValueHeads: 2, intermediateSize: 8)
        return c
    }

    /// Random masks over every axis of `c`: μ around ±(0.05 ... 1.5), log σ² in [-4, 1] (log α on both sides of 0).
    func masks(_ c: ModelConfig) -> [VIBMaskValues] {
        func m(_ axis: VIBAxis, _ layer: Int?, _ n: Int) -> VIBMaskValues {
            VIBMaskValues(axis: axis, layer: layer, mu: (0..<n).map { _ in (rng.next() % 5 == 0 ? -1 : 1) * uniform(0.05, 1.5) },
                          logVar: (0..<n).map { _ in uniform(-4, 1) })
        }
        var out = [m(.hidden, nil, c.hiddenSize)]
        for (l, b) in c.blocks.enumerated() { out.append(m(.heads, l, b.numAttentionHeads)) }
        for (l, b) in c.blocks.enumerated() { out.append(m(.mlp, l, b.intermediateSize)) }
        out.append(m(.layers, nil, c.blocks.count))
        return out
    }

    /// Central differences of f over every μ and log σ² entry (h = 1e-6), worst relative error against the
    /// analytic gradients.
    func check(_ masks: [VIBMaskValues], _ f: ([VIBMaskValues]) -> Double, dMu: [[Double]], dLogVar: [[Double]],
               file: StaticString = #filePath, line: UInt = #line) {
        let h = 1e-6
        var worst = 0.0, scale = 0.0
        for k in masks.indices {
            for i in masks[k].mu.indices {
                for which in 0..<2 {
                    var p = masks, m = masks
                    if which == 0 { p[k].mu[i] += h; m[k].mu[i] -= h } else { p[k].logVar[i] += h; m[k].logVar[i] -= h }
                    let numeric = (f(p) - f(m)) / (2 * h)
                    let analytic = which == 0 ? dMu[k][i] : dLogVar[k][i]
                    worst = max(worst, abs(numeric - analytic))
                    scale = max(scale, abs(numeric))
                }
            }
        }
        XCTAssertGreaterThan(scale, 0, file: file, line: line)
        XCTAssertLessThan(worst / scale, 1e-6, "worst absolute error \(worst) of gradients up to \(scale)", file: file, line: line)
    }

    func testKLGradientAgainstCentralDifferences() {
        let c = config(tied: false), ms = masks(c)
        let kl = VIB.kl(ms, weight: 0.7, embeddingMultiplier: 5)
        check(ms, { VIB.kl($0, weight: 0.7, embeddingMultiplier: 5).value }, dMu: kl.dMu, dLogVar: kl.dLogVar)
        // The value by the plain formula: γ/N Σ w ½ log(1 + μ²/σ²).
        let n = Double(ms.reduce(0) { $0 + $1.mu.count })
        var plain = 0.0
        for m in ms { for (mu, lv) in zip(m.mu, m.logVar) { plain += (m.axis == .hidden ? 5 : 1) * 0.7 / n * 0.5 * log(1 + mu * mu / exp(lv)) } }
        XCTAssertEqual(kl.value, plain, accuracy: 1e-12 * plain)
    }

    func testExpectedSizeGradientAgainstCentralDifferences() throws {
        for tied in [false, true] {
            let c = config(tied: tied), ms = masks(c), size = try VIBSizeModel(config: c)
            let e = VIB.expectedParameters(ms, size: size, beta: 1.5)
            check(ms, { VIB.expectedParameters($0, size: size, beta: 1.5).value }, dMu: e.dMu, dLogVar: e.dLogVar)
        }
    }

    /// The budget objective as the trainable composes it: λ₁(s - t) + λ₂(s - t)², s = E[P]/P_full, with its
    /// gradients in the masks and in λ.
    func testLagrangianGradientAgainstCentralDifferences() throws {
        let c = config(tied: false), ms = masks(c), size = try VIBSizeModel(config: c), full = size.full
        let t = 0.55, l1 = 0.8, l2 = 2.5
        func f(_ m: [VIBMaskValues], _ a: Double = l1, _ b: Double = l2) -> Double {
            VIB.lagrangian(s: VIB.expectedParameters(m, size: size, beta: 1).value / full, t: t, lambda1: a, lambda2: b).value
        }
        let e = VIB.expectedParameters(ms, size: size, beta: 1)
        let lg = VIB.lagrangian(s: e.value / full, t: t, lambda1: l1, lambda2: l2)
        check(ms, { f($0) }, dMu: e.dMu.map { $0.map { lg.ds * $0 / full } }, dLogVar: e.dLogVar.map { $0.map { lg.ds * $0 / full } })
        let h = 1e-6
        XCTAssertEqual(lg.dLambda1, (f(ms, l1 + h) - f(ms, l1 - h)) / (2 * h), accuracy: 1e-8)
        XCTAssertEqual(lg.dLambda2, (f(ms, l1, l2 + h) - f(ms, l1, l2 - h)) / (2 * h), accuracy: 1e-8)
        XCTAssertEqual(VIB.target(final: 0.4, step: 0, warmup: 10), 1)
        XCTAssertEqual(VIB.target(final: 0.4, step: 5, warmup: 10), 0.7, accuracy: 1e-12)
        XCTAssertEqual(VIB.target(final: 0.4, step: 30, warmup: 10), 0.4)
    }

    /// The size model at full and at integer unit counts equals the parameter count of the corresponding config.
    func testSizeModelEqualsTheModelsParameterCount() throws {
        for tied in [false, true] {
            let c = config(tied: tied), size = try VIBSizeModel(config: c)
            XCTAssertEqual(size.full, Double(DecoderModel.parameterCount(c)))
            var small = c
            small.hiddenSize = 5
            small.blocks = [BlockConfig(numAttentionHeads: 2, numKeyValueHeads: 2, intermediateSize: 3),
                            BlockConfig(numAttentionHeads: 4, numKeyValueHeads: 2, intermediateSize: 1)]
            small.numHiddenLayers = 2
            let n = size.count(channels: 5, heads: [2, 0, 4], neurons: [3, 0, 1], layers: [1, 0, 1]).value
            XCTAssertEqual(n, Double(DecoderModel.parameterCount(small)))
        }
    }

    /// ∂L/∂μ and ∂L/∂log σ² from the trainable's reparameterisation (ε fixed for the micro-batch) against central
    /// differences of L = Σ hidden ⊙ R over μ and log σ² of the forward with z = μ + σ ε (Float32 forward,
    /// h = 1e-2 as the decoder's own gate test).
    func testReparameterisedGradientsThroughTheDecoder() throws {
        var c = ModelConfig(vocabSize: 31, hiddenSize: 16, intermediateSize: 24, numHiddenLayers: 2, numAttentionHeads: 4,
                            numKeyValueHeads: 2, headDim: 4)
        c.tieWordEmbeddings = false
        let model = DecoderModel.random(config: c, seed: 11)
        var s = VIBSettings()
        s.logVarInit = -1.5  // noise that matters
        let vib = try VIBTrainable(config: c, settings: s)
        let B = 2, W = 6
        let trainer = Trainer(model: model, batch: B, window: W, frozen: Set(model.weights.map(\.id)))
        try vib.bind(to: trainer)
        for m in vib.masks { for i in 0..<m.mu.count { m.mu[i] = Float(uniform(0.5, 1.5)); m.logVar[i] = Float(uniform(-3, -1)) } }
        let ids = (0..<(B * W)).map { _ in Int32(rng.next() % 31) }
        let R = Tensor(shape: [B * W, c.hiddenSize])
        R.fillUniform(scale: 1, rng: &rng)
        vib.willForward(step: 3, micro: 1)
        trainer.zeroGradients()
        for p in vib.parameters { p.grad.zero() }
        trainer.forward(ids)
        trainer.backward(dHidden: R.data)
        vib.didBackward(step: 3, micro: 1)
        func loss() -> Double {
            vib.writeGates()  // same ε
            trainer.forward(ids)
            return (0..<R.count).reduce(0.0) { $0 + Double(trainer.hidden[$1]) * Double(R[$1]) }
        }
        let h: Float = 1e-2
        var worst = 0.0
        for m in vib.masks {
            for (t, g) in [(m.mu, m.dMu), (m.logVar, m.dLogVar)] {
                for i in [0, t.count / 2, t.count - 1] {
                    let v = t[i]
                    t[i] = v + h; let lp = loss()
                    t[i] = v - h; let lm = loss()
                    t[i] = v
                    let numeric = (lp - lm) / Double(2 * h)
                    let err = abs(Double(g[i]) - numeric) / max(abs(numeric), 1e-2)
                    XCTAssertLessThan(err, 2e-2, "\(m.label)[\(i)]: analytic \(g[i]), numeric \(numeric)")
                    worst = max(worst, err)
                }
            }
        }
        XCTAssertGreaterThan(worst, 0)
        // ε is a function of (seed, step, micro-batch): drawn again, the gates are the same; another step differs.
        vib.willForward(step: 3, micro: 1)
        let before = vib.gates.named.map { $0.tensor.array }
        vib.willForward(step: 9, micro: 0)
        vib.willForward(step: 3, micro: 1)
        XCTAssertEqual(vib.gates.named.map { $0.tensor.array }, before)
        vib.willForward(step: 4, micro: 1)
        XCTAssertNotEqual(vib.gates.named.map { $0.tensor.array }, before)
        // Without sampling, z = μ.
        vib.sampling = false
        vib.willForward(step: 4, micro: 1)
        XCTAssertEqual(vib.gates.channels!.array, vib.masks[0].mu.array)
    }

    /// regularize adds the Float64 objective's gradients: the KL's and ds/dz · λ-terms, and -(s - t), -(s - t)² to λ.
    func testRegularizeAddsTheObjectivesGradients() throws {
        let c = config(tied: true)
        var s = VIBSettings()
        s.targetParameters = Int(0.6 * Double(DecoderModel.parameterCount(c)))
        s.targetWarmup = 4
        let vib = try VIBTrainable(config: c, settings: s)
        let trainer = Trainer(model: DecoderModel.random(config: c, seed: 2), batch: 1, window: 4)
        try vib.bind(to: trainer)
        for m in vib.masks { for i in 0..<m.mu.count { m.mu[i] = Float(uniform(0.1, 1.2)); m.logVar[i] = Float(uniform(-3, 0)) } }
        vib.lambda[0] = 0.3; vib.lambda[1] = 1.7
        let values = vib.values
        _ = vib.regularize(step: 2)
        let kl = VIB.kl(values, weight: s.klWeight, embeddingMultiplier: s.embeddingMultiplier)
        let e = VIB.expectedParameters(values, size: vib.size, beta: s.beta)
        let full = vib.size.full, t = 1 - (1 - Double(s.targetParameters) / full) * 0.5
        let lg = VIB.lagrangian(s: e.value / full, t: t, lambda1: 0.3, lambda2: Double(Float(1.7)))
        for (k, m) in vib.masks.enumerated() {
            for i in 0..<m.mu.count {
                XCTAssertEqual(Double(m.dMu[i]), kl.dMu[k][i] + lg.ds * e.dMu[k][i] / full, accuracy: 1e-6)
                XCTAssertEqual(Double(m.dLogVar[i]), kl.dLogVar[k][i] + lg.ds * e.dLogVar[k][i] / full, accuracy: 1e-6)
            }
        }
        XCTAssertEqual(Double(vib.dLambda[0]), -lg.dLambda1, accuracy: 1e-6)
        XCTAssertEqual(Double(vib.dLambda[1]), -lg.dLambda2, accuracy: 1e-6)
        XCTAssertEqual(vib.lastTarget, t * full, accuracy: 1e-6 * full)
    }
}
