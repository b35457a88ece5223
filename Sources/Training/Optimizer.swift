import Foundation
import TensorCore

/// Learning-rate schedule: linear warm-up, then cosine or linear decay to a floor, or constant.
///   step s (0-based) uses  lr · (s + 1) / warmup                             for s < warmup
///                          min + ½ (lr - min)(1 + cos(π p))   (cosine)       otherwise,
///                          lr + (min - lr) · p                (linear)       p = (s - warmup) / max(1, total - warmup)
/// The schedule is expressed as a factor of the peak rate so that parameter groups with their own rate
/// follow the same shape (min / lr is the common floor ratio).
public struct LRSchedule: Codable, Equatable, Sendable {
    public enum Decay: String, Codable, Sendable, CaseIterable { case cosine, linear, constant }
    public var warmup: Int
    public var total: Int
    public var decay: Decay
    /// Floor as a fraction of the peak rate.
    public var minRatio: Double

    public init(warmup: Int, total: Int, decay: Decay, minRatio: Double) {
        self.warmup = warmup; self.total = total; self.decay = decay; self.minRatio = minRatio
    }

    /// Multiplier of the peak learning rate at step s.
    public func factor(step s: Int) -> Double {
        if s < warmup { return Double(s + 1) / Double(warmup) }
        let p = min(1, Double(s - warmup) / Double(max(1, total - warmup)))
        switch decay {
        case .constant: return 1
        case .cosine: return minRatio + 0.5 * (1 - minRatio) * (1 + Foundation.cos(Double.pi * p))
        case .linear: return 1 + (minRatio - 1) * p
        }
    }
}

/// A trainable tensor with its gradient, AdamW moments and hyper-parameters.
public final class Parameter {
    public let name: String
    public let value: Tensor
    public let grad: Tensor
    public let m: Tensor
    public let v: Tensor
    public var lr: Double
    public var weightDecay: Double

    public init(name: String, value: Tensor, grad: Tensor, lr: Double, weightDecay: Double) {
        precondition(value.shape == grad.shape, "\(name): gradient shape \(grad.shape) != \(value.shape)")
        self.name = name; self.value = value; self.grad = grad
        m = Tensor(shape: value.shape); v = Tensor(shape: value.shape)
        self.lr = lr; self.weightDecay = weightDecay
    }
}

/// A rule assigning parameters whose name matches a glob pattern (fnmatch, e.g. "model.layers.*.mlp.*")
/// their own learning rate and/or weight decay, or freezing them. The first matching rule wins.
public struct ParameterGroup: Codable, Equatable, Sendable {
    public var match: String
    public var lr: Double?
    public var weightDecay: Double?
    public var frozen: Bool

    public init(match: String, lr: Double? = nil, weightDecay: Double? = nil, frozen: Bool = false) {
        self.match = match; self.lr = lr; self.weightDecay = weightDecay; self.frozen = frozen
    }

    enum CodingKeys: String, CodingKey { case match, lr, weightDecay = "weight_decay", frozen }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        match = try c.decode(String.self, forKey: .match)
        lr = try c.decodeIfPresent(Double.self, forKey: .lr)
        weightDecay = try c.decodeIfPresent(Double.self, forKey: .weightDecay)
        frozen = try c.decodeIfPresent(Bool.self, forKey: .frozen) ?? false
    }

    public func matches(_ name: String) -> Bool { fnmatch(match, name, 0) == 0 }
}

/// AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", 2019), as torch.optim.AdamW:
///   θ ← θ - η·λ·θ;   m ← β₁m + (1-β₁)g;   v ← β₂v + (1-β₂)g²;   θ ← θ - η · m̂ / (√v̂ + ε)
/// with m̂ = m / (1 - β₁ᵗ), v̂ = v / (1 - β₂ᵗ), t the 1-based step count, η = lr · schedule factor.
public final class AdamW {
    public let parameters: [Parameter]
    public var beta1: Double, beta2: Double, eps: Double
    /// Updates done so far (t of the next update is step + 1).
    public var step = 0

    public init(parameters: [Parameter], beta1: Double = 0.9, beta2: Double = 0.95, eps: Double = 1e-8) {
        self.parameters = parameters; self.beta1 = beta1; self.beta2 = beta2; self.eps = eps
    }

    /// Global L2 norm of all gradients (Float64 accumulation, fixed order).
    public func gradientNorm() -> Double {
        var total = 0.0
        for p in parameters {
            let g = p.grad
            let partial = UnsafeMutablePointer<Double>.allocate(capacity: Parallel.threads)
            partial.initialize(repeating: 0, count: Parallel.threads)
            Parallel.forEachChunkIndexed(g.count, minChunk: 65536) { w, r in
                var s = 0.0
                for i in r { s += Double(g[i]) * Double(g[i]) }
                partial[w] = s
            }
            for w in 0..<Parallel.threads { total += partial[w] }
            partial.deallocate()
        }
        return total.squareRoot()
    }

    /// Scales all gradients so that their global norm is at most `maxNorm` (as torch's clip_grad_norm_:
    /// coefficient maxNorm / (norm + 1e-6), applied only when below 1). Returns the norm before clipping.
    @discardableResult
    public func clipGradients(maxNorm: Double) -> Double {
        let norm = gradientNorm()
        let coef = maxNorm / (norm + 1e-6)
        if coef < 1 {
            let c = Float(coef)
            for p in parameters {
                let g = p.grad
                Parallel.forEachChunk(g.count, minChunk: 65536) { r in for i in r { g[i] *= c } }
            }
        }
        return norm
    }

    /// One update with every parameter's rate multiplied by `lrFactor`.
    public func update(lrFactor: Double) {
        step += 1
        let t = Double(step)
        let b1 = Float(beta1), b2 = Float(beta2), e = Float(eps)
        let c1 = Float(1 / (1 - Foundation.pow(beta1, t))), c2 = Float(1 / (1 - Foundation.pow(beta2, t)))
        for p in parameters {
            let lr = Float(p.lr * lrFactor), decay = 1 - Float(p.lr * lrFactor * p.weightDecay)
            let w = p.value.data, g = p.grad.data, m = p.m.data, v = p.v.data
            Parallel.forEachChunk(p.value.count, minChunk: 65536) { r in
                for i in r {
                    let gi = g[i]
                    m[i] = b1 * m[i] + (1 - b1) * gi
                    v[i] = b2 * v[i] + (1 - b2) * gi * gi
                    let mh = m[i] * c1, vh = v[i] * c2
                    w[i] = w[i] * decay - lr * mh / (vh.squareRoot() + e)
                }
            }
        }
    }
}

/// The first value of `t` that a trained tensor must not hold: not finite, or (with `nonNegative`, for AdamW's
/// second moment, a running mean of squares) below zero. Returns its index and value; nil when every value is sound.
public func firstUnsoundValue(_ t: Tensor, nonNegative: Bool = false) -> (index: Int, value: Float)? {
    let p = t.data, n = t.count
    let found = UnsafeMutablePointer<Int>.allocate(capacity: Parallel.threads)
    found.initialize(repeating: Int.max, count: Parallel.threads)
    defer { found.deallocate() }
    Parallel.forEachChunkIndexed(n, minChunk: 1 << 16) { c, r in
        for i in r where !p[i].isFinite || (nonNegative && p[i] < 0) { found[c] = i; return }
    }
    let i = (0..<Parallel.threads).map { found[$0] }.min() ?? Int.max
    return i == Int.max ? nil : (i, p[i])
}

extension Parameter {
    /// The state-file slots of a parameter: its value, AdamW's first moment m and second moment v.
    public enum Slot: String, CaseIterable, Sendable {
        case param, adamM = "adam_m", adamV = "adam_v"

        /// What the slot holds, for messages.
        public var meaning: String {
            switch self {
            case .param: "the parameter's value"
            case .adamM: "AdamW's first moment m"
            case .adamV: "AdamW's second moment v"
            }
        }
        /// What every value of the slot must be.
        public var expectation: String { self == .adamV ? "finite and >= 0" : "finite" }
    }

    /// The tensor of `slot`.
    public func tensor(_ slot: Slot) -> Tensor {
        switch slot {
        case .param: value
        case .adamM: m
        case .adamV: v
        }
    }

    /// The first unsound value of the parameter (a non-finite value, moment, or a negative second moment), with
    /// the slot holding it, or nil.
    public func firstUnsoundValue() -> (slot: Slot, index: Int, value: Float)? {
        for s in Slot.allCases {
            if let (i, x) = Training.firstUnsoundValue(tensor(s), nonNegative: s == .adamV) { return (s, i, x) }
        }
        return nil
    }
}
