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
// Schedules (paper defaults, linear in the step t of T): τ from 4 to 0.05, κ from 1e2 to 5e2.
// Prior (paper Sec. 3.3): ℓ_g = ℓ⁰_g + α · σ(ℓ⁰) · (S_i · M_prior,g)_i with ℓ⁰ ~ N(0, 0.01²), σ(ℓ⁰) the standard
//   deviation of the tensor's initial logits and α the prior strength (3 in the paper's recipes). The
//   paper's code subtracts 1 from the overlap S_i · M_prior; a constant per group does not change the
//   softmax, so it is left out.
// Sparse weight regularisation (paper Eq. 7): L − λ_t · Σ_layers ‖W ⊙ M̃‖², λ_t = λ (1 − t / T) (the paper's
//   linear removal), gradient −2 λ_t W² ⊙ M̃ on the soft mask only (W is not pushed by it). Default λ = 1e-5.
// The final mask is the hard one: the argmax candidate of every group, so exactly N of every M are kept.
//
// Deviations: each micro-batch draws its own noise from a counter-based generator keyed by (seed, step,
// micro-batch, tensor), so a resumed run sees exactly the noise of an uninterrupted one; the weight
// regulariser is averaged over the micro-batches of a step; when weights are trained, only the targeted
// linear weights train (embedding and norms stay frozen); the sampled probabilities are kept as 16-bit
// fixed point (p rounded to a multiple of 1/65535) between the forward and the backward (memory): the soft
// mask is made from the rounded p, and the backward uses the same rounded p in the softmax derivative.

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
        guard m <= Self.maxM else { throw ConfigError("N:M pattern \(n):\(m): M at most \(Self.maxM) (C(M, N) logits per group)") }
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

    /// Gumbel(0, 1) noise of element `index` under `key`: `gumbel(bits:)` of a SplitMix64 hash of both.
    @inline(__always)
    public static func noise(key: UInt64, index: Int) -> Float {
        var z = key &+ UInt64(truncatingIfNeeded: index) &* 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        return gumbel(bits: z)
    }

    /// −log(−log u) with u = (the top 23 bits + ½) / 2²³, strictly inside (0, 1) in float32 (24 bits + ½ would
    /// round to 1 at the top and give an infinite sample): finite for every input, |g| < 16.
    @inline(__always)
    public static func gumbel(bits z: UInt64) -> Float {
        let u = (Float(z >> 41) + 0.5) * 0x1p-23
        return -Foundation.log(-Foundation.log(u))
    }

    /// Soft masks of G groups: probs (G, K) = softmax((κ ℓ + γ) / τ) and mask (G, M) = probs · S. No noise when
    /// `noiseKey` is nil (γ = 0). The noise of group g, candidate i is `noise(key:index: g·K + i)`.
    public static func forward(logits: UnsafePointer<Float>, groups G: Int, candidates S: NMCandidates, scale: Float,
                               temperature: Float, noiseKey: UInt64?, probs: UnsafeMutablePointer<Float>,
                               mask: UnsafeMutablePointer<Float>) {
        let K = S.count, M = S.m
        S.masks.withUnsafeBufferPointer { sp in
            Parallel.forEachChunk(G, minChunk: 4096) { r in
                for g in r {
                    groupProbs(logits + g * K, K: K, base: g * K, scale: scale, temperature: temperature, noiseKey: noiseKey, out: probs + g * K)
                    groupMask(probs + g * K, S: sp.baseAddress!, K: K, M: M, out: mask + g * M)
                }
            }
        }
    }

    /// dLogits (G, K) += (κ / τ) · p ⊙ (v − ⟨p, v⟩), v = S · dMask, for the probs of `forward`.
    public static func backward(dMask: UnsafePointer<Float>, probs: UnsafePointer<Float>, groups G: Int, candidates S: NMCandidates,
                                scale: Float, temperature: Float, dLogits: UnsafeMutablePointer<Float>) {
        let K = S.count, M = S.m
        S.masks.withUnsafeBufferPointer { sp in
            Parallel.forEachChunk(G, minChunk: 4096) { r in
                for g in r {
                    groupBackward(dMask: dMask + g * M, probs: probs + g * K, S: sp.baseAddress!, K: K, M: M, factor: scale / temperature,
                                  dLogits: dLogits + g * K)
                }
            }
        }
    }

    /// The argmax candidate of every group (the first one on ties).
    public static func hardChoice(logits: UnsafePointer<Float>, groups G: Int, candidates K: Int, into out: UnsafeMutablePointer<UInt8>) {
        Parallel.forEachChunk(G, minChunk: 65536) { r in
            for g in r {
                let l = logits + g * K
                var best = 0, v = l[0]
                for i in 1..<K where l[i] > v { v = l[i]; best = i }
                out[g] = UInt8(best)
            }
        }
    }

    // One group's softmax((κℓ + γ)/τ).
    @inline(__always)
    static func groupProbs(_ l: UnsafePointer<Float>, K: Int, base: Int, scale: Float, temperature: Float, noiseKey: UInt64?,
                           out p: UnsafeMutablePointer<Float>) {
        let invT = 1 / temperature
        var mx = -Float.infinity
        for i in 0..<K {
            let z = (scale * l[i] + (noiseKey.map { noise(key: $0, index: base + i) } ?? 0)) * invT
            p[i] = z
            mx = max(mx, z)
        }
        var s: Float = 0
        for i in 0..<K { let e = Foundation.exp(p[i] - mx); p[i] = e; s += e }
        let inv = 1 / s
        for i in 0..<K { p[i] *= inv }
    }

    @inline(__always)
    static func groupMask(_ p: UnsafePointer<Float>, S: UnsafePointer<Float>, K: Int, M: Int, out: UnsafeMutablePointer<Float>) {
        for j in 0..<M { out[j] = 0 }
        for i in 0..<K {
            let pi = p[i], row = S + i * M
            for j in 0..<M { out[j] += pi * row[j] }
        }
    }

    @inline(__always)
    static func groupBackward(dMask: UnsafePointer<Float>, probs p: UnsafePointer<Float>, S: UnsafePointer<Float>, K: Int, M: Int,
                              factor: Float, dLogits d: UnsafeMutablePointer<Float>) {
        // v_i = Σ_j S_ij dM_j; mean = Σ_i p_i v_i; d_i += factor · p_i (v_i − mean). K ≤ 70.
        var v = (Float(0), Float(0), Float(0), Float(0), Float(0), Float(0))
        if K == 6 {
            func dot(_ i: Int) -> Float { var s: Float = 0; for j in 0..<M { s += S[i * M + j] * dMask[j] }; return s }
            v = (dot(0), dot(1), dot(2), dot(3), dot(4), dot(5))
            let mean = p[0] * v.0 + p[1] * v.1 + p[2] * v.2 + p[3] * v.3 + p[4] * v.4 + p[5] * v.5
            d[0] += factor * p[0] * (v.0 - mean); d[1] += factor * p[1] * (v.1 - mean); d[2] += factor * p[2] * (v.2 - mean)
            d[3] += factor * p[3] * (v.3 - mean); d[4] += factor * p[4] * (v.4 - mean); d[5] += factor * p[5] * (v.5 - mean)
            return
        }
        do {
            let vb = UnsafeMutablePointer<Float>.allocate(capacity: K)
            defer { vb.deallocate() }
            var mean: Float = 0
            for i in 0..<K {
                var s: Float = 0
                for j in 0..<M { s += S[i * M + j] * dMask[j] }
                vb[i] = s
                mean += p[i] * s
            }
            for i in 0..<K { d[i] += factor * p[i] * (vb[i] - mean) }
        }
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
    /// AdamW learning rate of the logits (the paper: 10 × 5e-5).
    public var lr = 5e-4
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
        return (Float(temperatureStart + (temperatureEnd - temperatureStart) * f), Float(scaleStart + (scaleEnd - scaleStart) * f),
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
        public init(id: LinearID, weight: Tensor, prior: SparsityMask?) { self.id = id; self.weight = weight; self.prior = prior }
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
    /// The last sample's probabilities (G, K), kept as 16-bit fixed point (p · 65535) for the backward (memory: a 2:4 target holds
    /// 1.5 logits per weight, each with value, gradient and two AdamW moments in float32).
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

    public var weightGradients: Set<WeightID> { Set(targets.map { .linear($0) }) }

    deinit { for p in probs { p.deallocate() } }

    public init(name: String = "maskllm", targets: [Target], settings: MaskLLMSettings) throws {
        self.name = name
        self.settings = settings
        let S = try NMCandidates(n: settings.n, m: settings.m)
        candidates = S
        let K = S.count, M = S.m
        var rng = SplitMix64(seed: settings.seed ^ 0x1A17_0000)
        var ws: [Tensor] = [], ls: [Tensor] = [], gs: [Tensor] = [], wg: [Tensor?] = [], ps: [UnsafeMutablePointer<UInt16>] = [], pc: [[UInt8]?] = []
        for t in targets {
            let shape = t.weight.shape
            guard shape.count == 2, shape[1] % M == 0 else {
                throw ConfigError("\(t.id): input size \(shape.count == 2 ? shape[1] : -1) is not a multiple of M = \(M)")
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
    }

    public func bind(to student: LlamaTrainer) throws {
        effective = []; effectiveGrads = []
        for (i, id) in targets.enumerated() {
            guard case .dense(let t)? = student.model.linear(id) else { throw ConfigError("\(id): MaskLLM needs a dense weight") }
            guard t.shape == weights[i].shape else { throw ConfigError("\(id): weight \(t.shape), expected \(weights[i].shape)") }
            guard let g = student.grads.slots[.linear(id)]?.first else {
                throw ConfigError("\(id): the distiller computes no gradient for it (list it in weightGradients)")
            }
            effective.append(t); effectiveGrads.append(g)
        }
        var ps: [Parameter] = []
        for (i, id) in targets.enumerated() {
            ps.append(Parameter(name: "\(name).logits.\(WeightID.linear(id).hfName)", value: logits[i], grad: logitGrads[i], lr: settings.lr, weightDecay: 0))
            if let g = weightGrads[i] {
                ps.append(Parameter(name: "\(name).weight.\(WeightID.linear(id).hfName)", value: weights[i], grad: g, lr: settings.weightLR,
                                    weightDecay: settings.weightDecay))
            }
        }
        parameters = ps
    }

    public func willForward(step: Int, micro: Int) {
        if lastChoice == nil { lastChoice = currentChoice() }
        if micro == 0 { regValue = 0 }
        let s = settings.schedule(step: step), K = candidates.count, M = candidates.m
        let bad = UnsafeMutablePointer<Bool>.allocate(capacity: 1)
        bad.initialize(to: false)
        defer { if bad[0] { nonFinite = true }; bad.deallocate() }
        candidates.masks.withUnsafeBufferPointer { sp in
            let S = sp.baseAddress!
            for i in targets.indices {
                let wd = weights[i].data, ed = effective[i].data, G = logits[i].shape[0], l = logits[i].data, pb = probs[i]
                let key = GumbelNM.noiseKey(seed: settings.seed, step: step, micro: micro, tensor: i)
                // Per group: p = softmax((κℓ + γ)/τ) (kept in float16), W_eff = W ⊙ (p · S).
                Parallel.forEachChunk(G, minChunk: 4096) { r in
                    do {
                        let p = UnsafeMutablePointer<Float>.allocate(capacity: K + M), soft = p + K
                        defer { p.deallocate() }
                        for g in r {
                            GumbelNM.groupProbs(l + g * K, K: K, base: g * K, scale: s.scale, temperature: s.temperature, noiseKey: key, out: p)
                            for k in 0..<K {
                                let v = p[k] * 65535
                                guard v >= 0 && v <= 65535 else { bad[0] = true; pb[g * K + k] = 0; p[k] = 0; continue }  // NaN logits
                                let q = UInt16(v.rounded()); pb[g * K + k] = q; p[k] = Float(q) * (1 / 65535)
                            }
                            GumbelNM.groupMask(p, S: S, K: K, M: M, out: soft)
                            for j in 0..<M { ed[g * M + j] = wd[g * M + j] * soft[j] }
                        }
                    }
                }
            }
        }
    }

    public func didBackward(step: Int, micro: Int) {
        let s = settings.schedule(step: step), K = candidates.count, M = candidates.m
        let c = Float(2 * s.weightReg / Double(settings.accumulation))
        let factor = s.scale / s.temperature
        var reg = 0.0
        candidates.masks.withUnsafeBufferPointer { sp in
            let S = sp.baseAddress!
            for i in targets.indices {
                let G = logits[i].shape[0]
                let w = weights[i].data, gEff = effectiveGrads[i].data, pb = probs[i], dl = logitGrads[i].data, dw = weightGrads[i]?.data
                let chunks = Parallel.chunkCount(G, minChunk: 4096)
                var partial = [Double](repeating: 0, count: chunks)
                partial.withUnsafeMutableBufferPointer { pp in
                    Parallel.forEachChunkIndexed(G, minChunk: 4096) { ci, r in
                        var local = 0.0
                        do {
                            let soft = UnsafeMutablePointer<Float>.allocate(capacity: 2 * M + K), dm = soft + M, p = dm + M
                            defer { soft.deallocate() }
                            for g in r {
                                for k in 0..<K { p[k] = Float(pb[g * K + k]) * (1 / 65535) }
                                GumbelNM.groupMask(p, S: S, K: K, M: M, out: soft)
                                for j in 0..<M {
                                    let o = g * M + j, wj = w[o], mj = soft[j], ge = gEff[o]
                                    let we = wj * mj
                                    local += Double(we * we)
                                    dm[j] = ge * wj - c * wj * wj * mj
                                    if let dw { dw[o] += ge * mj }
                                    gEff[o] = 0
                                }
                                GumbelNM.groupBackward(dMask: dm, probs: p, S: S, K: K, M: M, factor: factor, dLogits: dl + g * K)
                            }
                        }
                        pp[ci] = local
                    }
                }
                reg += partial.reduce(0, +)
            }
        }
        regValue -= s.weightReg * reg / Double(settings.accumulation)
    }

    public func regularize(step: Int) -> [String: Double] {
        if nonFinite { return [name + ".weight_reg": .nan] }
        return settings.weightReg > 0 ? [name + ".weight_reg": regValue] : [:]
    }

    public func didUpdate(step: Int) -> [String: Double] {
        let now = currentChoice()
        var changed = 0, total = 0, fromPrior = 0, priorTotal = 0
        for (i, c) in now.enumerated() {
            total += c.count
            if let last = lastChoice { for g in 0..<c.count where c[g] != last[i][g] { changed += 1 } }
            if let p = priorChoice[i] { priorTotal += c.count; for g in 0..<c.count where c[g] != p[g] { fromPrior += 1 } }
        }
        lastChoice = now
        var out = ["mask_change": Double(changed) / Double(max(total, 1))]
        if priorTotal > 0 { out["from_prior"] = Double(fromPrior) / Double(priorTotal) }
        return out
    }

    func currentChoice() -> [[UInt8]] {
        logits.map { l in
            var c = [UInt8](repeating: 0, count: l.shape[0])
            c.withUnsafeMutableBufferPointer { GumbelNM.hardChoice(logits: l.data, groups: l.shape[0], candidates: candidates.count, into: $0.baseAddress!) }
            return c
        }
    }

    /// The hard masks (argmax candidate per group): exactly N kept in every M.
    public func hardMasks() throws -> [LinearID: SparsityMask] {
        let M = candidates.m
        var out: [LinearID: SparsityMask] = [:]
        for (i, c) in currentChoice().enumerated() {
            let shape = weights[i].shape
            out[targets[i]] = try SparsityMask(pattern: .nm(n: candidates.n, m: M), rows: shape[0], cols: shape[1]) { e in
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
