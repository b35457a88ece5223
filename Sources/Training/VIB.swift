// Variational-information-bottleneck (VIB) masks on a student's structural units, trained under a parameter
// budget: the training side of VTrans (Passes/VTrans.swift).
//
// Papers: O. S. Dutta, R. Gupta, S. Agarwal, "VTrans: Accelerating Transformer Compression with Variational
// Information Bottleneck based Pruning", 2024 (arXiv 2406.05276); the VIB layer after B. Dai, C. Zhu, B. Guo,
// D. Wipf, "Compressing Neural Networks using the Variational Information Bottleneck", ICML 2018.
//
// Each unit i (a hidden channel, a query head, an MLP neuron, a decoder layer) has a mask
//   z_i = μ_i + σ_i · ε_i,   ε_i ~ N(0, 1) in training,   z_i = μ_i at evaluation,   σ_i² = exp(log σ_i²)
// multiplying its output through the forward's gates (Model/TransformerDecoder.swift: one channel mask shared by the
// embedding and every sublayer output; a layer's mask multiplies both of its sublayers). Gradients reach μ and
// log σ² by reparameterisation: ∂L/∂μ = ∂L/∂z, ∂L/∂log σ² = ∂L/∂z · ε · σ / 2.
// KL term (Dai et al.'s upper bound of the mask's information, per unit):
//   KL_i = ½ log(1 + μ_i² / σ_i²),   ∂KL/∂μ = μ / (σ² + μ²),   ∂KL/∂log σ² = -½ μ² / (σ² + μ²)
// weighted L_KL = γ / N · Σ_masks w_m Σ_i KL_i, N the number of units, w = `embeddingMultiplier` on the hidden
// channel mask (VTrans weighs the embedding mask more) and 1 elsewhere.
// Keep rule: unit i is kept when log α_i = log σ_i² - log μ_i² is below the threshold (0 by default).
// Budget: p_i = sigmoid(-β log α_i) is the unit's expected keep; the expected parameter count E[P] follows the
// model's parameter formula with the expected unit counts (Σ p over channels, heads, neurons, layers):
//   P = V·C'·(tied ? 1 : 2) + C' + Σ_l q_l · (n·C' + 2·D·C'·h_l + 2·G_l·D·C' + 3·C'·f_l)
// (n = 2 norms of C per layer, 4 with post-sublayer norms)
// with s = E[P] / P_full and the target t(step) = 1 - (1 - t_final) · min(1, step / warm-up), the Lagrangian
//   L_budget = λ₁ (s - t) + λ₂ (s - t)²
// is minimised over the masks and maximised over (λ₁, λ₂) (their gradients are negated, so the optimizer's
// descent is ascent on λ).
//
// Deviations: log μ² is computed as log(μ² + 1e-8) so a mask at exactly 0 stays finite. The expectation keeps a
// layer's norms and K/V projections while its layer mask is on, even when every head's p is small (the exact
// count removes them; the pass meets the target on the exact count). The KL is averaged over units (γ is then
// independent of the model size).

import Foundation
import Model
import TensorCore

/// Axes of structural units the VIB masks cover.
public enum VIBAxis: String, CaseIterable, Codable, Sendable {
    /// Hidden (embedding) channels: one mask shared by every layer.
    case hidden
    /// Query heads (per layer; the pass keeps the same number in every KV group).
    case heads
    /// MLP neurons (per layer).
    case mlp
    /// Whole decoder layers (one mask multiplying both sublayers).
    case layers
}

/// One mask's values in Float64 (for the objective's math and its tests).
public struct VIBMaskValues: Equatable, Sendable {
    public var axis: VIBAxis
    /// Layer for heads and neurons; nil for hidden channels and layers.
    public var layer: Int?
    public var mu: [Double]
    public var logVar: [Double]
    public init(axis: VIBAxis, layer: Int?, mu: [Double], logVar: [Double]) {
        self.axis = axis; self.layer = layer; self.mu = mu; self.logVar = logVar
    }
}

/// The parameter count of a decoder as a function of its (possibly fractional) unit counts (biases and q/k norms,
/// under 0.01 % of a layer, are not counted; post-sublayer norms are, as two more norms of C per layer).
public struct VIBSizeModel: Codable, Equatable, Sendable {
    public var vocab: Int, channels: Int, headDim: Int, tied: Bool
    public var heads: [Int], kvHeads: [Int], neurons: [Int]
    /// Norm vectors of C channels per layer: 2, or 4 with post-sublayer norms.
    public var normsPerLayer = 2

    /// Every layer must hold both sublayers.
    public init(config c: ModelConfig) throws {
        if let l = c.blocks.firstIndex(where: { !$0.attention || !$0.mlp }) {
            throw ConfigError("layer \(l) lacks a sublayer; VIB masks need full decoder layers")
        }
        vocab = c.vocabSize; channels = c.hiddenSize; headDim = c.headDim; tied = c.tieWordEmbeddings
        heads = c.blocks.map(\.numAttentionHeads)
        kvHeads = c.blocks.map(\.numKeyValueHeads)
        neurons = c.blocks.map(\.intermediateSize)
        normsPerLayer = c.postNorms ? 4 : 2
    }

    public var layers: Int { heads.count }

    /// P(C', h, f, q) and its partial derivatives (see the file header).
    public func count(channels cp: Double, heads h: [Double], neurons f: [Double], layers q: [Double])
        -> (value: Double, dChannels: Double, dHeads: [Double], dNeurons: [Double], dLayers: [Double]) {
        let D = Double(headDim), embed = Double(vocab) * (tied ? 1 : 2) + 1
        var value = embed * cp, dC = embed
        var dH = [Double](repeating: 0, count: layers), dF = dH, dQ = dH
        for l in 0..<layers {
            let perC = Double(normsPerLayer) + 2 * D * h[l] + 2 * Double(kvHeads[l]) * D + 3 * f[l]
            value += q[l] * cp * perC
            dC += q[l] * perC
            dQ[l] = cp * perC
            dH[l] = q[l] * cp * 2 * D
            dF[l] = q[l] * cp * 3
        }
        return (value, dC, dH, dF, dQ)
    }

    /// Parameters of the full model.
    public var full: Double {
        count(channels: Double(channels), heads: heads.map(Double.init), neurons: neurons.map(Double.init),
              layers: [Double](repeating: 1, count: layers)).value
    }
}

/// The VIB objective's pieces in Float64, free of tensors (tested against central differences).
public enum VIB {
    public static let muEpsilon = 1e-8

    /// log α = log σ² - log(μ² + 1e-8).
    public static func logAlpha(mu: Double, logVar: Double) -> Double { logVar - Foundation.log(mu * mu + muEpsilon) }

    static func sigmoid(_ x: Double) -> Double { x >= 0 ? 1 / (1 + exp(-x)) : exp(x) / (1 + exp(x)) }

    /// γ / N · Σ_m w_m Σ_i ½ log(1 + μ²/σ²) and its gradients (per mask, per unit).
    public static func kl(_ masks: [VIBMaskValues], weight: Double, embeddingMultiplier: Double)
        -> (value: Double, dMu: [[Double]], dLogVar: [[Double]]) {
        let n = Double(max(1, masks.reduce(0) { $0 + $1.mu.count }))
        var value = 0.0, dMu: [[Double]] = [], dLogVar: [[Double]] = []
        for m in masks {
            let w = weight * (m.axis == .hidden ? embeddingMultiplier : 1) / n
            var a = [Double](repeating: 0, count: m.mu.count), b = a
            for i in 0..<m.mu.count {
                let mu = m.mu[i], s2 = exp(m.logVar[i]), r = mu * mu / s2
                // ½ log(1 + r), r = μ² e^{-log σ²}
                value += w * 0.5 * Foundation.log1p(r)
                a[i] = w * mu / (s2 + mu * mu)
                b[i] = -w * 0.5 * mu * mu / (s2 + mu * mu)
            }
            dMu.append(a); dLogVar.append(b)
        }
        return (value, dMu, dLogVar)
    }

    /// Expected parameter count under keep probabilities p = sigmoid(-β log α) (axes without masks count in
    /// full), and its gradients with respect to every mask's μ and log σ².
    public static func expectedParameters(_ masks: [VIBMaskValues], size: VIBSizeModel, beta: Double)
        -> (value: Double, dMu: [[Double]], dLogVar: [[Double]]) {
        let L = size.layers
        var cp = Double(size.channels), h = size.heads.map(Double.init), f = size.neurons.map(Double.init)
        var q = [Double](repeating: 1, count: L)
        var probs: [[Double]] = []
        for m in masks {
            let p = zip(m.mu, m.logVar).map { sigmoid(-beta * logAlpha(mu: $0, logVar: $1)) }
            probs.append(p)
            let sum = p.reduce(0, +)
            switch m.axis {
            case .hidden: cp = sum
            case .heads: h[m.layer!] = sum
            case .mlp: f[m.layer!] = sum
            case .layers: q = p
            }
        }
        let P = size.count(channels: cp, heads: h, neurons: f, layers: q)
        var dMu: [[Double]] = [], dLogVar: [[Double]] = []
        for (m, p) in zip(masks, probs) {
            var a = [Double](repeating: 0, count: p.count), b = a
            for i in 0..<p.count {
                let dP: Double
                switch m.axis {
                case .hidden: dP = P.dChannels
                case .heads: dP = P.dHeads[m.layer!]
                case .mlp: dP = P.dNeurons[m.layer!]
                case .layers: dP = P.dLayers[i]
                }
                let mu = m.mu[i]
                let dLogAlpha = dP * (-beta * p[i] * (1 - p[i]))   // ∂P/∂p · ∂p/∂log α
                a[i] = dLogAlpha * (-2 * mu / (mu * mu + muEpsilon))
                b[i] = dLogAlpha
            }
            dMu.append(a); dLogVar.append(b)
        }
        return (P.value, dMu, dLogVar)
    }

    /// λ₁ (s - t) + λ₂ (s - t)² and its partial derivatives in s, λ₁, λ₂.
    public static func lagrangian(s: Double, t: Double, lambda1: Double, lambda2: Double)
        -> (value: Double, ds: Double, dLambda1: Double, dLambda2: Double) {
        let d = s - t
        return (lambda1 * d + lambda2 * d * d, lambda1 + 2 * lambda2 * d, d, d * d)
    }

    /// The target fraction at `step`: from 1 (the full model) linearly to `final` over `warmup` steps.
    public static func target(final: Double, step: Int, warmup: Int) -> Double {
        guard warmup > 0 else { return final }
        return 1 - (1 - final) * min(1, Double(step) / Double(warmup))
    }
}

/// Settings of the VIB masks and their budget.
public struct VIBSettings: Codable, Equatable, Sendable {
    public var axes: [VIBAxis] = VIBAxis.allCases
    /// The parameter count the masks are driven to.
    public var targetParameters = 0
    /// Steps over which the target goes from the full size to `targetParameters`.
    public var targetWarmup = 0
    /// Learning rates (AdamW, with the distillation's schedule) of μ and log σ², and of (λ₁, λ₂).
    public var maskLR = 0.05
    public var lambdaLR = 0.05
    /// γ of the KL term and the embedding (hidden-channel) mask's extra multiplier.
    public var klWeight = 1.0
    public var embeddingMultiplier = 10.0
    /// β of p = sigmoid(-β log α), and the keep threshold of log α.
    public var beta = 1.0
    public var threshold = 0.0
    /// Initial μ and log σ² of every unit.
    public var muInit = 1.0
    public var logVarInit = -6.0
    /// Seed of ε (step, micro-batch and mask give the stream, so a resumed run draws the same noise).
    public var seed: UInt64 = 0
    public init() {}
}

/// VIB masks as a `Trainable`: `willForward` writes z = μ + σ·ε into the student's gates, `didBackward` turns
/// the gate gradients into μ / log σ² gradients, `regularize` adds the KL term and the budget Lagrangian.
/// Parameters (state-saved): "vib.mu.<mask>", "vib.logvar.<mask>", "vib.lambda" (λ₁, λ₂).
public final class VIBTrainable: Trainable {
    public let name: String
    public let settings: VIBSettings
    public let size: VIBSizeModel
    public let config: ModelConfig
    /// The gates installed in the student's forward.
    public let gates: Gates
    public struct Mask {
        public let axis: VIBAxis
        public let layer: Int?
        public let mu: Tensor, logVar: Tensor
        let dMu: Tensor, dLogVar: Tensor
        /// ε of the current micro-batch.
        var eps: [Float]
        public var label: String { layer.map { "\(axis.rawValue).\($0)" } ?? axis.rawValue }
    }
    public private(set) var masks: [Mask] = []
    /// (λ₁, λ₂).
    public let lambda = Tensor(shape: [2])
    let dLambda = Tensor(shape: [2])
    public private(set) var parameters: [Parameter] = []
    weak var student: Trainer?
    /// z = μ (no noise) when false.
    public var sampling = true
    /// Last regularize's expected parameter count, target (parameters) and values.
    public private(set) var lastExpected = 0.0, lastTarget = 0.0, lastKL = 0.0, lastLagrangian = 0.0

    /// Masks for `config`'s units along `settings.axes` (each axis at most once).
    public init(name: String = "vib", config: ModelConfig, settings: VIBSettings) throws {
        guard !settings.axes.isEmpty, Set(settings.axes).count == settings.axes.count else {
            throw ConfigError("VIB axes must be a non-empty list without repeats")
        }
        self.name = name; self.settings = settings; self.config = config
        size = try VIBSizeModel(config: config)
        gates = Gates(config: config)
        func mask(_ axis: VIBAxis, _ layer: Int?, _ n: Int) -> Mask {
            Mask(axis: axis, layer: layer,
                 mu: Tensor(shape: [n], values: [Float](repeating: Float(settings.muInit), count: n)),
                 logVar: Tensor(shape: [n], values: [Float](repeating: Float(settings.logVarInit), count: n)),
                 dMu: Tensor(shape: [n]), dLogVar: Tensor(shape: [n]), eps: [Float](repeating: 0, count: n))
        }
        let L = config.blocks.count
        for axis in VIBAxis.allCases where settings.axes.contains(axis) {
            switch axis {
            case .hidden:
                masks.append(mask(.hidden, nil, config.hiddenSize))
                gates.channels = Tensor(shape: [config.hiddenSize])
            case .heads:
                for l in 0..<L {
                    masks.append(mask(.heads, l, config.blocks[l].numAttentionHeads))
                    gates.heads[l] = Tensor(shape: [config.blocks[l].numAttentionHeads])
                }
            case .mlp:
                for l in 0..<L {
                    masks.append(mask(.mlp, l, config.blocks[l].intermediateSize))
                    gates.neurons[l] = Tensor(shape: [config.blocks[l].intermediateSize])
                }
            case .layers: masks.append(mask(.layers, nil, L)); gates.sublayers = Tensor(shape: [2 * L])
            }
        }
        writeGates()
    }

    public func bind(to student: Trainer) throws {
        try gates.validate(student.model.config)
        student.setGates(gates)
        self.student = student
        parameters = masks.flatMap { m in
            [Parameter(name: "\(name).mu.\(m.label)", value: m.mu, grad: m.dMu, lr: settings.maskLR, weightDecay: 0),
             Parameter(name: "\(name).logvar.\(m.label)", value: m.logVar, grad: m.dLogVar, lr: settings.maskLR,
                       weightDecay: 0)]
        } + [Parameter(name: "\(name).lambda", value: lambda, grad: dLambda, lr: settings.lambdaLR, weightDecay: 0)]
    }

    /// The settings as sorted-key JSON (a resumed run must use the same).
    public var stateSettings: String {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return (try? String(decoding: e.encode(settings), as: UTF8.self)) ?? ""
    }

    /// Writes z (μ + σ·ε when sampling, else μ) of every mask into the gates.
    func writeGates() {
        for m in masks {
            let z: [Float] = (0..<m.mu.count).map { i in
                sampling ? m.mu[i] + (0.5 * m.logVar[i]).exp() * m.eps[i] : m.mu[i]
            }
            switch m.axis {
            case .hidden: gates.channels!.copy(from: z)
            case .heads: gates.heads[m.layer!]!.copy(from: z)
            case .mlp: gates.neurons[m.layer!]!.copy(from: z)
            case .layers:
                let s = gates.sublayers!
                for (l, v) in z.enumerated() { s[2 * l] = v; s[2 * l + 1] = v }
            }
        }
    }

    /// Draws ε ~ N(0, 1) for every unit from (seed, step, micro, mask) and writes z into the gates.
    public func willForward(step: Int, micro: Int) {
        if sampling {
            for k in masks.indices {
                var rng = SplitMix64(seed: settings.seed &+ UInt64(step) &* 0x9E37_79B9_7F4A_7C15
                                     &+ UInt64(micro) &* 0xD1B5_4A32_D192_ED03
                                     &+ UInt64(k) &* 0x94D0_49BB_1331_11EB)
                masks[k].eps = (0..<masks[k].mu.count).map { _ in Self.gaussian(&rng) }
            }
        }
        writeGates()
    }

    /// A standard normal draw (Box-Muller on two 53-bit uniforms).
    static func gaussian(_ rng: inout SplitMix64) -> Float {
        let u1 = (Double(rng.next() >> 11) + 1) * 0x1p-53, u2 = Double(rng.next() >> 11) * 0x1p-53
        return Float((-2 * Foundation.log(u1)).squareRoot() * cos(2 * Double.pi * u2))
    }

    /// Chains this micro-batch's gate gradients into μ and log σ² (then clears the gate gradients, so the next
    /// micro-batch, with its own ε, starts from zero).
    public func didBackward(step: Int, micro: Int) {
        guard let g = student?.gateGrads else { return }
        for m in masks {
            let n = m.mu.count
            let dz: [Float]
            switch m.axis {
            case .hidden: dz = g.channels!.array
            case .heads: dz = g.heads[m.layer!]!.array
            case .mlp: dz = g.neurons[m.layer!]!.array
            case .layers: let s = g.sublayers!; dz = (0..<n).map { s[2 * $0] + s[2 * $0 + 1] }
            }
            for i in 0..<n {
                m.dMu[i] += dz[i]
                if sampling { m.dLogVar[i] += dz[i] * m.eps[i] * 0.5 * (0.5 * m.logVar[i]).exp() }
            }
        }
        g.zero()
    }

    /// Current μ and log σ² in Float64.
    public var values: [VIBMaskValues] {
        masks.map {
            VIBMaskValues(axis: $0.axis, layer: $0.layer, mu: $0.mu.array.map(Double.init),
                          logVar: $0.logVar.array.map(Double.init))
        }
    }

    /// The target in parameters at `step`.
    public func target(step: Int) -> Double {
        VIB.target(final: Double(settings.targetParameters) / size.full, step: step,
                   warmup: settings.targetWarmup) * size.full
    }

    /// KL term and budget Lagrangian: values returned, gradients added to μ, log σ² and (negated) λ.
    public func regularize(step: Int) -> [String: Double] {
        let v = values, full = size.full
        let kl = VIB.kl(v, weight: settings.klWeight, embeddingMultiplier: settings.embeddingMultiplier)
        let e = VIB.expectedParameters(v, size: size, beta: settings.beta)
        let t = target(step: step)
        let lg = VIB.lagrangian(s: e.value / full, t: t / full, lambda1: Double(lambda[0]), lambda2: Double(lambda[1]))
        for (k, m) in masks.enumerated() {
            for i in 0..<m.mu.count {
                m.dMu[i] += Float(kl.dMu[k][i] + lg.ds * e.dMu[k][i] / full)
                m.dLogVar[i] += Float(kl.dLogVar[k][i] + lg.ds * e.dLogVar[k][i] / full)
            }
        }
        dLambda[0] -= Float(lg.dLambda1)
        dLambda[1] -= Float(lg.dLambda2)
        lastExpected = e.value; lastTarget = t; lastKL = kl.value; lastLagrangian = lg.value
        return ["\(name).kl": kl.value, "\(name).lagrangian": lg.value]
    }

    /// Progress: the expected kept parameters (sigmoid(−β log α) model) against the current target.
    public func didUpdate(step: Int) -> [String: Double] {
        ["\(name).expected_params": lastExpected, "\(name).target_params": lastTarget]
    }

    /// log α of every unit of every mask.
    public var logAlphas: [[Double]] {
        values.map { m in zip(m.mu, m.logVar).map { VIB.logAlpha(mu: $0, logVar: $1) } }
    }
}

extension Tensor {
    fileprivate func copy(from values: [Float]) {
        precondition(values.count == count)
        values.withUnsafeBufferPointer { data.update(from: $0.baseAddress!, count: count) }
    }
}

extension Float {
    fileprivate func exp() -> Float { Foundation.exp(self) }
}
