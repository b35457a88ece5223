// MaskLLM: learnable N:M masks trained end to end through a differentiable Gumbel-softmax over the candidate
// masks of every group of M consecutive input weights.
//
// Paper: G. Fang, H. Yin, S. Muralidharan, G. Heinrich, J. Pool, J. Kautz, P. Molchanov, X. Wang, "MaskLLM:
// Learnable Semi-Structured Sparsity for Large Language Models", NeurIPS 2024 (arXiv 2409.17481).
//
// Equations (per group g of M consecutive weights of a row of W (OC, C); K = C(M, N) candidates S_1..S_K,
// each a 0/1 vector of length M with N ones):
//   logits ℓ_g ∈ R^K (learned), Gumbel noise γ_gi = −log(−log u_gi), u_gi ~ U(0, 1)
//   p_g = softmax((κ · ℓ_g + γ_g) / τ)                                   (Gumbel-softmax, scaled logits)
//   M̃_g = Σ_i p_gi · S_i                                                  (differentiable soft mask)
//   forward with W_eff = W ⊙ M̃;  dL/dM̃ = dL/dW_eff ⊙ W;  dL/dW = dL/dW_eff ⊙ M̃ (when weights train)
//   dL/dℓ_gi = (κ / τ) · p_gi · (v_gi − Σ_k p_gk v_gk),   v_gi = Σ_j S_ij · dL/dM̃_gj
// Schedules (the reference scripts' `--gumbel-temperature-range 4 0.05 --gumbel-scale-range 1e2 5e2`, linear
//   in t / T): τ from 4 to 0.05, κ from 1e2 to 5e2. Initial logits N(0, 0.01²).
// Prior (paper Sec. 3.3): ℓ_g = ℓ⁰_g + α · σ(ℓ⁰) · (S_i · M_prior,g)_i with ℓ⁰ ~ N(0, 0.01²), σ(ℓ⁰) the standard
//   deviation of the tensor's initial logits and α the prior strength (3 in the paper's recipes). The
//   paper's code subtracts 1 from the overlap S_i · M_prior; a constant per group does not change the
//   softmax, so it is left out.
// Sparse weight regularisation (paper Eq. 7; reference code NVlabs/MaskLLM, `pretrain_maskllm.py` `loss_func`
//   and `learnable_sparsity/differentiable_mask.py`):
//     L_step = (1/A) Σ_micro [ L_task(micro) − λ_t · Σ_targets Σ_ij (sg(W_ij) · M̃_ij)² ],   λ_t = λ (1 − t / T)
//   with A the micro-batches of a step (Megatron divides each micro-batch's loss by their number), sg() a
//   stop-gradient (the reference reads `weight.detach()`), M̃ that micro-batch's soft mask, L_task the mean
//   per-token loss, t the 0-based step of T. No other normalisation: not per layer, not by the number of
//   weights, not by the weights' scale; λ = 1e-5 (the reference scripts' `--weight-reg 1e-5`). The gradient
//   is −(2 λ_t / A) W² ⊙ M̃ on the soft mask only. Its value grows with Σ W² (SmolLM2-135M: Σ W² = 3.97e6 over
//   its 106.2 M projection weights, rms 0.19, so λ Σ ‖W ⊙ M̃‖² ≈ 14-16 at the start), but on SmolLM2 its
//   gradient on M̃ is 0.1-0.2 % of the KD gradient's (measured, recipes/README.md): it shifts the reported
//   loss, it does not steer the masks.
// Optimiser (the reference scripts): AdamW on the logits with lr 10 × 5e-5, cosine decay to 10 %, no warmup,
//   β = (0.9, 0.95), ε = 1e-5, decoupled weight decay 0.1, gradient norm clipped to 1; weights frozen.
// The final mask is the hard one: the argmax candidate of every group, so exactly N of every M are kept.
//
// Deviations: the default loss is KD from the dense model (the reference trains on the LM loss; `loss: "ce"`
// gives it); each micro-batch draws its own noise from a counter-based generator keyed by (seed, step,
// micro-batch, tensor), so a resumed run sees exactly the noise of an uninterrupted one (one 64-bit hash per
// two logits; u from 23 bits); log and exp in the sampler are branch-free polynomial versions (Cephes' logf
// and expf minimax polynomials, relative error ≤ 3e-7 and 5e-7, tested against libm) so the noise and
// softmax loops vectorize, and p · 65535 is rounded to nearest-even; the weight
// regulariser is averaged over the micro-batches of a step; when weights are trained, only the targeted
// linear weights train (embedding and norms stay frozen); the sampled probabilities are kept as 16-bit
// fixed point (p rounded to a multiple of 1/65535) between the forward and the backward (memory): the soft
// mask is made from the rounded p, and the backward uses the same rounded p in the softmax derivative.
//
// Cost (SmolLM2-135M, 2:4 on all 210 projections: 159 M logits): the sampler works on blocks of 512 groups in
// stages (noise bits; noise and scaled logits; group max; exp; normalization and 16-bit rounding; W ⊙ M̃), each
// stage a flat loop over the block; 2:4 has its soft mask (each position kept by three of the six candidates)
// and backward (v_i = dM̃_a + dM̃_b for the candidate keeping a and b) written out; chunks run through
// `Parallel` with scratch allocated once per trainable, so a step allocates nothing.

import Foundation
import Model
import TensorCore

/// The C(M, N) masks of one group of M weights keeping N, in lexicographic order of their kept positions
/// (for 2:4: 1100, 1010, 1001, 0110, 0101, 0011).
public struct NMCandidates: Sendable, Equatable {
    public let n: Int, m: Int
    /// (count, m) of 0 and 1, row-major.
    public let masks: [Float]
    public var count: Int { masks.count / m }
    /// Largest M supported (4:8 has 70 candidates per 8 weights).
    public static let maxM = 8

    /// Throws unless 1 ≤ n < m ≤ `maxM`.
    public init(n: Int, m: Int) throws {
        guard n >= 1, n < m else { throw ConfigError("N:M pattern \(n):\(m) needs 1 ≤ N < M") }
        guard m <= Self.maxM else {
            throw ConfigError("N:M pattern \(n):\(m): M at most \(Self.maxM) (C(M, N) logits per group)")
        }
        self.n = n; self.m = m
        var out: [Float] = []
        var chosen: [Int] = []
        func walk(_ from: Int) {
            if chosen.count == n {
                var row = [Float](repeating: 0, count: m)
                for j in chosen { row[j] = 1 }
                out += row
                return
            }
            guard from < m else { return }
            for j in from..<m {
                chosen.append(j); walk(j + 1); chosen.removeLast()
            }
        }
        walk(0)
        masks = out
    }

    /// Whether candidate `i` keeps position `j`.
    public func keeps(_ i: Int, _ j: Int) -> Bool { masks[i * m + j] != 0 }
}

/// The Gumbel-softmax N:M soft mask and its backward (see the file header for the equations).
public enum GumbelNM {
    /// A key for one tensor's noise of one micro-batch (deterministic in its inputs).
    public static func noiseKey(seed: UInt64, step: Int, micro: Int, tensor: Int) -> UInt64 {
        var r = SplitMix64(seed: seed ^ 0x4D61_736B_4C4C_4D00)
        var h = r.next()
        for v in [UInt64(step), UInt64(micro), UInt64(tensor)] {
            var s = SplitMix64(seed: h ^ (v &* 0x9E37_79B9_7F4A_7C15))
            h = s.next()
        }
        return h
    }

    /// 64 random bits for the noise of elements 2·`pair` and 2·`pair` + 1 under `key` (SplitMix64's output
    /// function of key + pair · φ).
    @inline(__always)
    public static func pairBits(key: UInt64, pair: Int) -> UInt64 {
        var z = key &+ UInt64(truncatingIfNeeded: pair) &* 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Gumbel(0, 1) noise of element `index` under `key`: `gumbel(bits32:)` of the high 32 bits of
    /// `pairBits(index / 2)` for an even index, of the low 32 bits for an odd one.
    public static func noise(key: UInt64, index: Int) -> Float {
        let z = pairBits(key: key, pair: index >> 1)
        return gumbel(bits32: UInt32(truncatingIfNeeded: index & 1 == 0 ? z >> 32 : z))
    }

    /// −log(−log u) with u = (the top 23 bits + ½) / 2²³, strictly inside (0, 1) in float32 (24 bits + ½ would
    /// round to 1 at the top and give an infinite sample): finite for every input, |g| < 17.
    @inline(__always)
    public static func gumbel(bits32 b: UInt32) -> Float {
        let u = (Float(Int32(bitPattern: b >> 9)) + 0.5) * 0x1p-23
        return -log(-log(u))
    }

    /// `gumbel(bits32:)` of the high 32 bits of `z` (its top 23 bits make u).
    public static func gumbel(bits z: UInt64) -> Float { gumbel(bits32: UInt32(truncatingIfNeeded: z >> 32)) }

    /// Natural logarithm of a positive normal float, branch-free (vectorizes): x = 2^e · m with m in [√½, √2),
    /// log x = e · ln 2 + log(1 + f), f = m − 1, by the minimax polynomial of Cephes' logf (relative error
    /// about 1e-7 on this range). Not for zero, subnormals, infinities or NaN.
    @inline(__always)
    public static func log(_ x: Float) -> Float {
        let bits = x.bitPattern
        let high = (bits & 0x007F_FFFF) > 0x0035_04F3  // mantissa above √2: halve it
        let e = Float(Int32(bitPattern: bits >> 23) &- (high ? 126 : 127))
        let m = Float(bitPattern: (bits & 0x007F_FFFF) | (high ? 0x3F00_0000 : 0x3F80_0000))
        let f = m - 1, f2 = f * f
        var y: Float = 7.0376836292e-2
        y = y * f - 1.1514610310e-1
        y = y * f + 1.1676998740e-1
        y = y * f - 1.2420140846e-1
        y = y * f + 1.4249322787e-1
        y = y * f - 1.6668057665e-1
        y = y * f + 2.0000714765e-1
        y = y * f - 2.4999993993e-1
        y = y * f + 3.3333331174e-1
        y = y * f * f2 - 2.12194440e-4 * e - 0.5 * f2
        return f + y + 0.693359375 * e
    }

    /// e^x for x ≤ 0, branch-free (vectorizes): x = n ln 2 + r, |r| ≤ ½ ln 2, e^r by the polynomial of
    /// Cephes' expf, 2^n from the exponent bits. x below −87 gives e^−87 (≈ 1.6e-38: nothing beside the
    /// group's largest term, which is 1); NaN stays NaN.
    @inline(__always)
    public static func exp(_ x: Float) -> Float {
        let xc = x < -87 ? -87 : x
        // n = round(x / ln 2) by the 1.5 · 2²³ trick: its integer sits in the low bits of the sum.
        let shifted = xc * 1.44269504088896341 + 12_582_912
        let n = shifted - 12_582_912
        let r = xc - n * 0.693359375 + n * 2.12194440e-4
        let r2 = r * r
        var y: Float = 1.9875691500e-4
        y = y * r + 1.3981999507e-3
        y = y * r + 8.3334519073e-3
        y = y * r + 4.1665795894e-2
        y = y * r + 1.6666665459e-1
        y = y * r + 5.0000001201e-1
        y = y * r2 + r + 1
        let scale = Float(bitPattern: (shifted.bitPattern &- 0x4B40_0000 &+ 127) << 23)
        return y * scale
    }

    /// Groups processed per block of a chunk (scratch: K + 1 words per group).
    static let block = 512

    /// Softmax((κℓ + γ)/τ) of groups g0..<g1 (G × K logits from `logits`, row-major) into `z` (block-local:
    /// z[(g − g0)·K + i]); `bits` is scratch of at least (g1 − g0)·K + 2 words. Stages over the block
    /// (noise bits, noise and scaled logits, max, exp, normalization) so the transcendental loops vectorize.
    @inline(__always)
    static func blockProbs(_ l: UnsafePointer<Float>, g0: Int, g1: Int, K: Int, scale: Float, invT: Float,
                           noiseKey: UInt64?,
                           bits bb: UnsafeMutablePointer<UInt32>, z: UnsafeMutablePointer<Float>) {
        let n = (g1 - g0) * K, e0 = g0 * K
        let lb = l + e0, a = scale * invT
        if let key = noiseKey {
            let off = e0 & 1, q0 = e0 >> 1, pairs = ((e0 + n - 1) >> 1) - q0 + 1
            for q in 0..<pairs {
                let h = pairBits(key: key, pair: q0 + q)
                bb[2 * q] = UInt32(truncatingIfNeeded: h >> 32); bb[2 * q + 1] = UInt32(truncatingIfNeeded: h)
            }
            let src = bb + off
            // γ = −log(−log u) in two flat passes (E = −log u, then −log E): each vectorizes, one fused loop
            // does not; the same operations as `gumbel(bits32:)`, so the same values as `noise(key:index:)`.
            for i in 0..<n { z[i] = -log((Float(Int32(bitPattern: src[i] >> 9)) + 0.5) * 0x1p-23) }
            for i in 0..<n { z[i] = a * lb[i] + -log(z[i]) * invT }
        } else {
            for i in 0..<n { z[i] = a * lb[i] }
        }
        if K == 6 {
            for g in 0..<(g1 - g0) {
                let y = z + 6 * g
                let mx = max(max(max(y[0], y[1]), max(y[2], y[3])), max(y[4], y[5]))
                y[0] -= mx; y[1] -= mx; y[2] -= mx; y[3] -= mx; y[4] -= mx; y[5] -= mx
            }
        } else {
            var o = 0
            for _ in g0..<g1 {
                var mx = z[o]
                for k in 1..<K { mx = z[o + k] > mx ? z[o + k] : mx }
                for k in 0..<K { z[o + k] -= mx }
                o += K
            }
        }
        for i in 0..<n { z[i] = exp(z[i]) }
        if K == 6 {
            for g in 0..<(g1 - g0) {
                let y = z + 6 * g
                let inv = 1 / ((y[0] + y[1]) + (y[2] + y[3]) + (y[4] + y[5]))
                y[0] *= inv; y[1] *= inv; y[2] *= inv; y[3] *= inv; y[4] *= inv; y[5] *= inv
            }
        } else {
            var o = 0
            for _ in g0..<g1 {
                var s: Float = 0
                for k in 0..<K { s += z[o + k] }
                let inv = 1 / s
                for k in 0..<K { z[o + k] *= inv }
                o += K
            }
        }
    }

    /// Soft masks of G groups: probs (G, K) = softmax((κ ℓ + γ) / τ) and mask (G, M) = probs · S. No noise when
    /// `noiseKey` is nil (γ = 0). The noise of group g, candidate i is `noise(key:index: g·K + i)`.
    public static func forward(logits: UnsafePointer<Float>, groups G: Int, candidates S: NMCandidates, scale: Float,
                               temperature: Float, noiseKey: UInt64?, probs: UnsafeMutablePointer<Float>,
                               mask: UnsafeMutablePointer<Float>) {
        let K = S.count, M = S.m, B = block
        S.masks.withUnsafeBufferPointer { sp in
            Parallel.forEachChunk(G, minChunk: 4096) { r in
                let bb = UnsafeMutablePointer<UInt32>.allocate(capacity: B * K + 2)
                defer { bb.deallocate() }
                for g0 in stride(from: r.lowerBound, to: r.upperBound, by: B) {
                    let g1 = min(g0 + B, r.upperBound)
                    blockProbs(logits, g0: g0, g1: g1, K: K, scale: scale, invT: 1 / temperature, noiseKey: noiseKey,
                               bits: bb, z: probs + g0 * K)
                    for g in g0..<g1 { groupMask(probs + g * K, S: sp.baseAddress!, K: K, M: M, out: mask + g * M) }
                }
            }
        }
    }

    /// dLogits (G, K) += (κ / τ) · p ⊙ (v − ⟨p, v⟩), v = S · dMask, for the probs of `forward`.
    public static func backward(dMask: UnsafePointer<Float>, probs: UnsafePointer<Float>, groups G: Int,
                                candidates S: NMCandidates,
                                scale: Float, temperature: Float, dLogits: UnsafeMutablePointer<Float>) {
        let K = S.count, M = S.m
        S.masks.withUnsafeBufferPointer { sp in
            Parallel.forEachChunk(G, minChunk: 4096) { r in
                let v = UnsafeMutablePointer<Float>.allocate(capacity: K)
                defer { v.deallocate() }
                for g in r {
                    groupBackward(dMask: dMask + g * M, probs: probs + g * K, S: sp.baseAddress!, K: K, M: M,
                                  factor: scale / temperature,
                                  dLogits: dLogits + g * K, v: v)
                }
            }
        }
    }

    /// The argmax candidate of every group (the first one on ties).
    public static func hardChoice(logits: UnsafePointer<Float>, groups G: Int, candidates K: Int,
                                  into out: UnsafeMutablePointer<UInt8>) {
        Parallel.forEachChunk(G, minChunk: 65536) { r in
            for g in r {
                let l = logits + g * K
                var best = 0, v = l[0]
                for i in 1..<K where l[i] > v { v = l[i]; best = i }
                out[g] = UInt8(best)
            }
        }
    }

    @inline(__always)
    static func groupMask(_ p: UnsafePointer<Float>, S: UnsafePointer<Float>, K: Int, M: Int,
                          out: UnsafeMutablePointer<Float>) {
        for j in 0..<M { out[j] = 0 }
        for i in 0..<K {
            let pi = p[i], row = S + i * M
            for j in 0..<M { out[j] += pi * row[j] }
        }
    }

    /// One group's d_i += factor · p_i (v_i − Σ_k p_k v_k), v_i = Σ_j S_ij dM_j; `v` is scratch of K floats.
    @inline(__always)
    static func groupBackward(dMask: UnsafePointer<Float>, probs p: UnsafePointer<Float>, S: UnsafePointer<Float>,
                              K: Int, M: Int,
                              factor: Float, dLogits d: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>) {
        var mean: Float = 0
        for i in 0..<K {
            var s: Float = 0
            for j in 0..<M { s += S[i * M + j] * dMask[j] }
            v[i] = s
            mean += p[i] * s
        }
        for i in 0..<K { d[i] += factor * p[i] * (v[i] - mean) }
    }
}

/// Settings of a MaskLLM run (defaults: the paper's).
public struct MaskLLMSettings: Codable, Equatable, Sendable {
    public var n = 2, m = 4
    /// Gumbel temperature τ, linear from `temperatureStart` to `temperatureEnd` over the run.
    public var temperatureStart = 4.0, temperatureEnd = 0.05
    /// Logit scale κ, linear from `scaleStart` to `scaleEnd` over the run.
    public var scaleStart = 1e2, scaleEnd = 5e2
    /// α: the prior's weight, in standard deviations of the initial logits.
    public var priorStrength = 3.0
    /// Standard deviation of the initial logits.
    public var initStd = 0.01
    /// λ of the sparse weight regularisation (removed linearly over the run).
    public var weightReg = 1e-5
    /// AdamW learning rate of the logits (the reference: 10 × 5e-5).
    public var lr = 5e-4
    /// Decoupled weight decay of the logits (the reference's `--weight-decay 0.1`, which reaches the gates:
    /// they are matrices and its optimizer exempts only biases and vectors).
    public var logitWeightDecay = 0.1
    /// Train the targeted weights too (the paper's default is mask-only).
    public var trainWeights = false
    public var weightLR = 5e-5
    public var weightDecay = 0.0
    public var seed: UInt64 = 0
    /// Steps of the run (the schedules' T) and micro-batches per step (the regulariser's average).
    public var steps = 1
    public var accumulation = 1
    public init() {}

    /// τ and κ at step t (0-based) of `steps`, and the regulariser's λ_t.
    public func schedule(step t: Int) -> (temperature: Float, scale: Float, weightReg: Double) {
        let f = min(1, Double(t) / Double(max(steps, 1)))
        return (Float(temperatureStart + (temperatureEnd - temperatureStart) * f),
                Float(scaleStart + (scaleEnd - scaleStart) * f),
                weightReg * (1 - f))
    }
}

/// The mask logits of a set of dense linear weights as a `Trainable`: before each micro-batch it writes
/// W_eff = W ⊙ M̃ (a fresh Gumbel sample) into the student's weight, after the backward it chains the
/// student's dL/dW_eff (a gradient the distiller computes but does not apply, see `weightGradients`) into the
/// logits (and into W when weights train). `hardMasks()` gives the argmax masks.
public final class MaskLLMTrainable: Trainable {
    public struct Target {
        public var id: LinearID
        /// The original (dense) weight (OC, C); never written unless `trainWeights` (then a copy is trained).
        public var weight: Tensor
        /// Prior mask (N:M of the same shape) or nil (random logits only).
        public var prior: SparsityMask?
        public init(id: LinearID, weight: Tensor, prior: SparsityMask?) {
            self.id = id
            self.weight = weight
            self.prior = prior
        }
    }

    public let name: String
    public let settings: MaskLLMSettings
    public let candidates: NMCandidates
    public let targets: [LinearID]
    /// Per target: original or trained weight W (OC, C), logits (G, K), their gradient, last probabilities.
    public let weights: [Tensor]
    public let logits: [Tensor]
    let logitGrads: [Tensor]
    let weightGrads: [Tensor?]
    /// The last sample's probabilities (G, K), kept as 16-bit fixed point (p · 65535) for the backward (memory: a 2:4
    /// target holds 1.5 logits per weight, each with value, gradient and two AdamW moments in float32).
    let probs: [UnsafeMutablePointer<UInt16>]
    /// The student's effective weights and their gradient slots (set by `bind`).
    var effective: [Tensor] = []
    var effectiveGrads: [Tensor] = []
    /// Argmax candidates after the last update (nil until the first forward), and the prior's.
    var lastChoice: [[UInt8]]? = nil
    let priorChoice: [[UInt8]?]
    var regValue = 0.0
    /// Set when a sample met non-finite logits; the step's regulariser then reports NaN, which stops the loop.
    var nonFinite = false
    public private(set) var parameters: [Parameter] = []
    /// Per parallel chunk: noise bits and probabilities of a block of groups, one group's soft mask, its
    /// gradient, probabilities and candidate dot products, the chunk's regulariser sum, non-finite flag and
    /// counts of changed argmaxes.
    /// Allocated once (`Parallel.threads` of them; more only if that setting grows), so a step allocates nothing.
    final class Scratch {
        let bits: UnsafeMutablePointer<UInt32>, z: UnsafeMutablePointer<Float>, soft: UnsafeMutablePointer<Float>
        var reg = 0.0, bad = false, changed = 0, fromPrior = 0
        init(K: Int, M: Int) {
            bits = .allocate(capacity: GumbelNM.block * K + 2); z = .allocate(capacity: GumbelNM.block * K)
            soft = .allocate(capacity: 2 * M + 2 * K)
        }
        deinit { bits.deallocate(); z.deallocate(); soft.deallocate() }
    }
    var scratch: [Scratch]

    /// One scratch per chunk `Parallel` can cut a range into.
    func ensureScratch() {
        while scratch.count < Parallel.threads { scratch.append(Scratch(K: candidates.count, M: candidates.m)) }
    }

    public var weightGradients: Set<WeightID> { Set(targets.map { .linear($0) }) }

    deinit { for p in probs { p.deallocate() } }

    public init(name: String = "maskllm", targets: [Target], settings: MaskLLMSettings) throws {
        self.name = name
        self.settings = settings
        let S = try NMCandidates(n: settings.n, m: settings.m)
        candidates = S
        let K = S.count, M = S.m
        var rng = SplitMix64(seed: settings.seed ^ 0x1A17_0000)
        var ws: [Tensor] = [], ls: [Tensor] = [], gs: [Tensor] = [], wg: [Tensor?] = [],
            ps: [UnsafeMutablePointer<UInt16>] = [], pc: [[UInt8]?] = []
        for t in targets {
            let shape = t.weight.shape
            guard shape.count == 2, shape[1] % M == 0 else {
                throw ConfigError("\(t.id): input size \(shape.count == 2 ? shape[1] : -1) is not a multiple of M " +
                                  "= \(M)")
            }
            let G = shape[0] * shape[1] / M
            let l = Tensor(shape: [G, K])
            // N(0, initStd²) by Box-Muller, deterministic in the seed.
            var i = 0
            while i < l.count {
                let u1 = max(rng.nextFloat(), 0x1p-25), u2 = rng.nextFloat()
                let r = (-2 * Foundation.log(u1)).squareRoot()
                l[i] = Float(settings.initStd) * r * Foundation.cos(2 * .pi * u2)
                if i + 1 < l.count { l[i + 1] = Float(settings.initStd) * r * Foundation.sin(2 * .pi * u2) }
                i += 2
            }
            var choice: [UInt8]? = nil
            if let prior = t.prior {
                guard prior.rows == shape[0], prior.cols == shape[1] else {
                    throw ConfigError("\(t.id): prior mask (\(prior.rows), \(prior.cols)) for a weight \(shape)")
                }
                guard prior.pattern == .nm(n: settings.n, m: M) else {
                    throw ConfigError("\(t.id): prior mask is \(prior.pattern), not \(settings.n):\(M)")
                }
                var mean = 0.0, sq = 0.0
                for j in 0..<l.count { mean += Double(l[j]); sq += Double(l[j]) * Double(l[j]) }
                mean /= Double(l.count)
                let std = Float(max(0, sq / Double(l.count) - mean * mean).squareRoot())
                let add = Float(settings.priorStrength) * std
                var c = [UInt8](repeating: 0, count: G)
                for g in 0..<G {
                    for k in 0..<K {
                        var overlap = 0, exact = true
                        for j in 0..<M {
                            let kept = prior[g * M + j]
                            if kept && S.keeps(k, j) { overlap += 1 }
                            if kept != S.keeps(k, j) { exact = false }
                        }
                        l[g * K + k] += add * Float(overlap)
                        if exact { c[g] = UInt8(k) }
                    }
                }
                choice = c
            }
            ws.append(settings.trainWeights ? t.weight.copy() : t.weight)
            ls.append(l); gs.append(Tensor(shape: [G, K]))
            let pb = UnsafeMutablePointer<UInt16>.allocate(capacity: G * K)
            pb.initialize(repeating: 0, count: G * K)
            ps.append(pb)
            wg.append(settings.trainWeights ? Tensor(shape: shape) : nil)
            pc.append(choice)
        }
        self.targets = targets.map(\.id)
        weights = ws; logits = ls; logitGrads = gs; weightGrads = wg; probs = ps; priorChoice = pc
        scratch = (0..<Parallel.threads).map { _ in Scratch(K: K, M: M) }
    }

    public func bind(to student: Trainer) throws {
        effective = []; effectiveGrads = []
        for (i, id) in targets.enumerated() {
            guard case .dense(let t)? = student.model.linear(id) else {
                throw ConfigError("\(id): MaskLLM needs a dense weight")
            }
            guard t.shape == weights[i].shape else {
                throw ConfigError("\(id): weight \(t.shape), expected \(weights[i].shape)")
            }
            guard let g = student.grads.slots[.linear(id)]?.first else {
                throw ConfigError("\(id): the distiller computes no gradient for it (list it in weightGradients)")
            }
            effective.append(t); effectiveGrads.append(g)
        }
        var ps: [Parameter] = []
        for (i, id) in targets.enumerated() {
            ps.append(Parameter(name: "\(name).logits.\(WeightID.linear(id).hfName)", value: logits[i],
                                grad: logitGrads[i], lr: settings.lr,
                                weightDecay: settings.logitWeightDecay))
            if let g = weightGrads[i] {
                ps.append(Parameter(name: "\(name).weight.\(WeightID.linear(id).hfName)", value: weights[i], grad: g,
                                    lr: settings.weightLR,
                                    weightDecay: settings.weightDecay))
            }
        }
        parameters = ps
    }

    public func willForward(step: Int, micro: Int) {
        if lastChoice == nil { lastChoice = currentChoice() }
        if micro == 0 { regValue = 0 }
        let s = settings.schedule(step: step), K = candidates.count, M = candidates.m, B = GumbelNM.block
        let invT = 1 / s.temperature, is24 = K == 6 && M == 4
        ensureScratch()
        for c in 0..<scratch.count { scratch[c].bad = false }
        candidates.masks.withUnsafeBufferPointer { sp in
            let S = sp.baseAddress!
            for i in targets.indices {
                let wd = weights[i].data, ed = effective[i].data, G = logits[i].shape[0], l = logits[i].data,
                    pb = probs[i]
                let key = GumbelNM.noiseKey(seed: settings.seed, step: step, micro: micro, tensor: i)
                // Per block of groups: p = softmax((κℓ + γ)/τ), kept as 16-bit fixed point; W_eff = W ⊙ (p · S).
                Parallel.forEachChunkIndexed(G, minChunk: 4096) { c, r in
                    let sc = scratch[c], z = sc.z
                    var bad = false
                    for g0 in stride(from: r.lowerBound, to: r.upperBound, by: B) {
                        let g1 = min(g0 + B, r.upperBound), n = (g1 - g0) * K, e0 = g0 * K
                        GumbelNM.blockProbs(l, g0: g0, g1: g1, K: K, scale: s.scale, invT: invT, noiseKey: key,
                                            bits: sc.bits, z: z)
                        var nans = 0
                        for e in 0..<n {
                            // Round p · 65535 to the nearest integer by the 1.5 · 2²³ trick (the sum's low bits are the
                            // integer); NaN (from non-finite logits) → 0 and counted. Branch-free, so it vectorizes.
                            let v = z[e] * 65535
                            nans &+= v.isNaN ? 1 : 0
                            let shifted = (v >= 0 ? (v <= 65535 ? v : 65535) : 0) + 12_582_912
                            pb[e0 + e] = UInt16(truncatingIfNeeded: shifted.bitPattern &- 0x4B40_0000)
                            z[e] = (shifted - 12_582_912) * (1 / 65535)
                        }
                        if nans > 0 { bad = true }
                        if is24 {
                            // The 2:4 candidates 1100 1010 1001 0110 0101 0011: each position is kept by three.
                            for g in g0..<g1 {
                                let p = z + (g - g0) * 6, w = wd + g * 4, o = ed + g * 4
                                o[0] = w[0] * (p[0] + p[1] + p[2]); o[1] = w[1] * (p[0] + p[3] + p[4])
                                o[2] = w[2] * (p[1] + p[3] + p[5]); o[3] = w[3] * (p[2] + p[4] + p[5])
                            }
                        } else {
                            let soft = sc.soft
                            for g in g0..<g1 {
                                GumbelNM.groupMask(z + (g - g0) * K, S: S, K: K, M: M, out: soft)
                                for j in 0..<M { ed[g * M + j] = wd[g * M + j] * soft[j] }
                            }
                        }
                    }
                    if bad { sc.bad = true }
                }
            }
        }
        if scratch.contains(where: \.bad) { nonFinite = true }
    }

    public func didBackward(step: Int, micro: Int) {
        let s = settings.schedule(step: step), K = candidates.count, M = candidates.m
        let c = Float(2 * s.weightReg / Double(settings.accumulation))
        let factor = s.scale / s.temperature, is24 = K == 6 && M == 4, q: Float = 1 / 65535
        ensureScratch()
        var reg = 0.0
        candidates.masks.withUnsafeBufferPointer { sp in
            let S = sp.baseAddress!
            for i in targets.indices {
                let G = logits[i].shape[0]
                let w = weights[i].data, gEff = effectiveGrads[i].data, pb = probs[i], dl = logitGrads[i].data,
                    dw = weightGrads[i]?.data
                for sc in scratch { sc.reg = 0 }
                Parallel.forEachChunkIndexed(G, minChunk: 4096) { ci, r in
                    let sc = scratch[ci]
                    var local = 0.0
                    if is24 {
                        for g in r {
                            let pq = pb + g * 6, wg = w + g * 4, ge = gEff + g * 4, d = dl + g * 6
                            let p0 = Float(pq[0]) * q, p1 = Float(pq[1]) * q, p2 = Float(pq[2]) * q
                            let p3 = Float(pq[3]) * q, p4 = Float(pq[4]) * q, p5 = Float(pq[5]) * q
                            let m0 = p0 + p1 + p2, m1 = p0 + p3 + p4, m2 = p1 + p3 + p5, m3 = p2 + p4 + p5
                            let w0 = wg[0], w1 = wg[1], w2 = wg[2], w3 = wg[3]
                            let e0 = w0 * m0, e1 = w1 * m1, e2 = w2 * m2, e3 = w3 * m3
                            local += Double(e0 * e0 + e1 * e1 + e2 * e2 + e3 * e3)
                            // dL/dM̃_j = dL/dW_eff,j · W_j − 2 λ_t W_j² M̃_j (per micro-batch: λ_t / accumulation).
                            let d0 = ge[0] * w0 - c * w0 * e0, d1 = ge[1] * w1 - c * w1 * e1
                            let d2 = ge[2] * w2 - c * w2 * e2, d3 = ge[3] * w3 - c * w3 * e3
                            if let dw {
                                let o = dw + g * 4
                                o[0] += ge[0] * m0; o[1] += ge[1] * m1; o[2] += ge[2] * m2; o[3] += ge[3] * m3
                            }
                            ge[0] = 0; ge[1] = 0; ge[2] = 0; ge[3] = 0
                            let v0 = d0 + d1, v1 = d0 + d2, v2 = d0 + d3, v3 = d1 + d2, v4 = d1 + d3, v5 = d2 + d3
                            let mean = p0 * v0 + p1 * v1 + p2 * v2 + p3 * v3 + p4 * v4 + p5 * v5
                            d[0] += factor * p0 * (v0 - mean)
                            d[1] += factor * p1 * (v1 - mean)
                            d[2] += factor * p2 * (v2 - mean)
                            d[3] += factor * p3 * (v3 - mean)
                            d[4] += factor * p4 * (v4 - mean)
                            d[5] += factor * p5 * (v5 - mean)
                        }
                    } else {
                        let soft = sc.soft, dm = soft + M, p = dm + M, v = p + K
                        for g in r {
                            for k in 0..<K { p[k] = Float(pb[g * K + k]) * q }
                            GumbelNM.groupMask(p, S: S, K: K, M: M, out: soft)
                            for j in 0..<M {
                                let o = g * M + j, wj = w[o], mj = soft[j], ge = gEff[o]
                                let we = wj * mj
                                local += Double(we * we)
                                dm[j] = ge * wj - c * wj * we
                                if let dw { dw[o] += ge * mj }
                                gEff[o] = 0
                            }
                            GumbelNM.groupBackward(dMask: dm, probs: p, S: S, K: K, M: M, factor: factor,
                                                   dLogits: dl + g * K, v: v)
                        }
                    }
                    sc.reg = local
                }
                reg += scratch.reduce(0) { $0 + $1.reg }
            }
        }
        regValue -= s.weightReg * reg / Double(settings.accumulation)
    }

    public func regularize(step: Int) -> [String: Double] {
        if nonFinite { return [name + ".weight_reg": .nan] }
        return settings.weightReg > 0 ? [name + ".weight_reg": regValue] : [:]
    }

    public func didUpdate(step: Int) -> [String: Double] {
        // The new argmax of every group against the last one and the prior's, in place (no allocation).
        if lastChoice == nil { lastChoice = currentChoice() }
        ensureScratch()
        let K = candidates.count
        var changed = 0, total = 0, fromPrior = 0, priorTotal = 0
        for i in logits.indices {
            let G = logits[i].shape[0], l = logits[i].data
            total += G
            if priorChoice[i] != nil { priorTotal += G }
            for sc in scratch { sc.changed = 0; sc.fromPrior = 0 }
            let prior = priorChoice[i]
            lastChoice![i].withUnsafeMutableBufferPointer { last in
                let lp = last.baseAddress!
                func count(_ pp: UnsafePointer<UInt8>?) {
                    Parallel.forEachChunkIndexed(G, minChunk: 65536) { c, r in
                        var ch = 0, fp = 0
                        for g in r {
                            let row = l + g * K
                            var best = 0, v = row[0]
                            for k in 1..<K where row[k] > v { v = row[k]; best = k }
                            let b = UInt8(best)
                            ch += b != lp[g] ? 1 : 0
                            if let pp { fp += b != pp[g] ? 1 : 0 }
                            lp[g] = b
                        }
                        scratch[c].changed = ch; scratch[c].fromPrior = fp
                    }
                }
                if let prior { prior.withUnsafeBufferPointer { count($0.baseAddress!) } } else { count(nil) }
            }
            changed += scratch.reduce(0) { $0 + $1.changed }
            fromPrior += scratch.reduce(0) { $0 + $1.fromPrior }
        }
        var out = ["mask_change": Double(changed) / Double(max(total, 1))]
        if priorTotal > 0 { out["from_prior"] = Double(fromPrior) / Double(priorTotal) }
        return out
    }

    func currentChoice() -> [[UInt8]] {
        logits.map { l in
            var c = [UInt8](repeating: 0, count: l.shape[0])
            c.withUnsafeMutableBufferPointer {
                GumbelNM.hardChoice(logits: l.data, groups: l.shape[0], candidates: candidates.count,
                                    into: $0.baseAddress!)
            }
            return c
        }
    }

    /// The hard masks (argmax candidate per group): exactly N kept in every M.
    public func hardMasks() throws -> [LinearID: SparsityMask] {
        let M = candidates.m
        var out: [LinearID: SparsityMask] = [:]
        for (i, c) in currentChoice().enumerated() {
            let shape = weights[i].shape
            out[targets[i]] = try SparsityMask(pattern: .nm(n: candidates.n, m: M), rows: shape[0],
                                               cols: shape[1]) { e in
                candidates.keeps(Int(c[e / M]), e % M)
            }
        }
        return out
    }

    /// Fraction of groups whose hard mask differs from the prior's (nil without a prior).
    public func distanceFromPrior() -> Double? {
        var d = 0, t = 0
        for (i, c) in currentChoice().enumerated() {
            guard let p = priorChoice[i] else { continue }
            t += c.count
            for g in 0..<c.count where c[g] != p[g] { d += 1 }
        }
        return t > 0 ? Double(d) / Double(t) : nil
    }

    public var stateSettings: String {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        let text = (try? e.encode(settings)).map { String(decoding: $0, as: UTF8.self) } ?? ""
        return "\(name): \(text) targets \(targets.map(\.description).joined(separator: ","))"
    }
}
