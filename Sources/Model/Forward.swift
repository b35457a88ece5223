import TensorCore

/// The inference forward pass of a Llama decoder with preallocated scratch for windows of up to
/// `maxTokens` tokens: no allocation per layer, head or token.
///
///   x = embed(ids)
///   for each layer:  x += o_proj(attn(rope(q_proj(n)), rope(k_proj(n)), v_proj(n))),  n = rmsnorm(x)
///                    x += down_proj(silu(gate_proj(n)) ⊙ up_proj(n)),                   n = rmsnorm(x)
///   h = rmsnorm(x);  logits = h · lm_headᵀ
public final class LlamaInference {
    public let model: LlamaModel
    public let maxTokens: Int
    let rotary: RotaryTable
    let x, n, q, k, v, att, gate, up, scores: Tensor

    public init(model: LlamaModel, maxTokens: Int) {
        let c = model.config, T = maxTokens, C = c.hiddenSize, D = c.headDim
        let maxH = c.blocks.map(\.numAttentionHeads).max() ?? 1
        let maxG = c.blocks.map(\.numKeyValueHeads).max() ?? 1
        let maxF = c.blocks.map(\.intermediateSize).max() ?? 1
        self.model = model
        self.maxTokens = T
        rotary = RotaryTable(headDim: D, theta: c.ropeTheta, positions: T)
        x = Tensor(shape: [T, C])
        n = Tensor(shape: [T, C])
        q = Tensor(shape: [T, maxH * D])
        k = Tensor(shape: [T, maxG * D])
        v = Tensor(shape: [T, maxG * D])
        att = Tensor(shape: [T, maxH * D])
        gate = Tensor(shape: [T, maxF])
        up = Tensor(shape: [T, maxF])
        scores = Tensor(shape: [AttentionForward.scratchCount(tokens: T)])
    }

    /// Runs the decoder on `ids` (T ≤ maxTokens, every id < vocab) and returns the final-normed hidden
    /// states (T, C). The buffer is owned by this object and overwritten by the next call.
    public func hiddenStates(_ ids: [Int32], observer: ForwardObserver? = nil) -> UnsafePointer<Float> {
        embed(ids)
        runSublayers(0..<(2 * model.layers.count), rows: ids.count, observer: observer)
        return finalNorm(rows: ids.count, observer: observer)
    }

    /// The residual stream (T, C) that `embed` fills and `runSublayers` updates in place. Callers may
    /// overwrite its first T rows to resume the forward from a saved state.
    public var residual: UnsafeMutablePointer<Float> { x.data }

    /// x = embed(ids).
    public func embed(_ ids: [Int32]) {
        let T = ids.count, C = model.config.hiddenSize
        precondition(T > 0 && T <= maxTokens, "window of \(T) tokens, scratch holds \(maxTokens)")
        ids.withUnsafeBufferPointer {
            embeddingForward(out: x.data, ids: $0.baseAddress!, table: model.embedTokens.data, rows: T, channels: C)
        }
    }

    /// Applies sublayers `range` to the residual stream of T rows. Sublayer s is layer s / 2's attention when
    /// s is even and its MLP when s is odd; absent sublayers and those in `skip` are not computed.
    public func runSublayers(_ range: Range<Int>, rows T: Int, skip: Set<Int> = [], observer: ForwardObserver? = nil) {
        let c = model.config, C = c.hiddenSize, D = c.headDim
        precondition(T > 0 && T <= maxTokens, "window of \(T) tokens, scratch holds \(maxTokens)")
        let eps = Float(c.rmsNormEps)
        for s in range {
            observer?.sublayerInput(s, x: x.data, rows: T)
            guard !skip.contains(s) else { continue }
            let l = s / 2, layer = model.layers[l], block = c.blocks[l]
            if s % 2 == 0, let a = layer.attention {
                let H = block.numAttentionHeads, G = block.numKeyValueHeads
                rmsnormForward(out: n.data, inp: x.data, weight: a.norm.data, eps: eps, rows: T, channels: C)
                observer?.normed(s, n: n.data, rows: T)
                linearForward(out: q.data, inp: n.data, weight: a.q.data, rows: T, inFeatures: C, outFeatures: H * D)
                linearForward(out: k.data, inp: n.data, weight: a.k.data, rows: T, inFeatures: C, outFeatures: G * D)
                linearForward(out: v.data, inp: n.data, weight: a.v.data, rows: T, inFeatures: C, outFeatures: G * D)
                rotaryForward(q.data, rows: T, heads: H, table: rotary)
                rotaryForward(k.data, rows: T, heads: G, table: rotary)
                attentionForward(out: att.data, q: q.data, k: k.data, v: v.data, rows: T, heads: H, kvHeads: G, headDim: D,
                                 scores: scores.data)
                observer?.headOutputs(layer: l, att: att.data, rows: T)
                // x += o_proj(att): the residual add folded into the GEMM (beta = 1).
                BLAS.gemm(transB: true, m: T, n: C, k: H * D, a: att.data, lda: H * D, b: a.o.data, ldb: H * D,
                          beta: 1, c: x.data, ldc: C)
            } else if s % 2 == 1, let m = layer.mlp {
                let F = block.intermediateSize
                rmsnormForward(out: n.data, inp: x.data, weight: m.norm.data, eps: eps, rows: T, channels: C)
                observer?.normed(s, n: n.data, rows: T)
                linearForward(out: gate.data, inp: n.data, weight: m.gate.data, rows: T, inFeatures: C, outFeatures: F)
                linearForward(out: up.data, inp: n.data, weight: m.up.data, rows: T, inFeatures: C, outFeatures: F)
                swigluForward(out: gate.data, gate: gate.data, up: up.data, count: T * F)
                observer?.mlpActivation(layer: l, act: gate.data, rows: T)
                BLAS.gemm(transB: true, m: T, n: C, k: F, a: gate.data, lda: F, b: m.down.data, ldb: F,
                          beta: 1, c: x.data, ldc: C)
            }
        }
    }

    /// h = rmsnorm(x) with the final norm; returns the (T, C) buffer (overwritten by the next call).
    public func finalNorm(rows T: Int, observer: ForwardObserver? = nil) -> UnsafePointer<Float> {
        let c = model.config
        observer?.sublayerInput(2 * model.layers.count, x: x.data, rows: T)
        rmsnormForward(out: n.data, inp: x.data, weight: model.norm.data, eps: Float(c.rmsNormEps), rows: T, channels: c.hiddenSize)
        observer?.normed(2 * model.layers.count, n: n.data, rows: T)
        return UnsafePointer(n.data)
    }

    /// Full logits (T, V) for `ids`.
    public func logits(_ ids: [Int32]) -> Tensor {
        let T = ids.count
        let out = Tensor(shape: [T, model.config.vocabSize])
        head(hiddenStates(ids), rows: T, into: out.data)
        return out
    }

    /// logits = h · lm_headᵀ for T rows of final-normed states.
    public func head(_ h: UnsafePointer<Float>, rows T: Int, into out: UnsafeMutablePointer<Float>) {
        let c = model.config
        linearForward(out: out, inp: h, weight: model.lmHead.data, rows: T, inFeatures: c.hiddenSize, outFeatures: c.vocabSize)
    }
}

/// Sees the intermediate values of `LlamaInference`'s forward, for calibration statistics. Pointers are
/// valid only during the call. Sublayer s is layer s / 2's attention (s even) or MLP (s odd); s = 2L is the
/// final norm.
public protocol ForwardObserver: AnyObject {
    /// The residual stream (T, C) entering sublayer s (s = 2L: the stream entering the final norm).
    func sublayerInput(_ s: Int, x: UnsafePointer<Float>, rows: Int)
    /// The normed stream (T, C) that sublayer s (or the final norm, s = 2L) produces from its input.
    func normed(_ s: Int, n: UnsafePointer<Float>, rows: Int)
    /// Attention output of every head (T, H·D), before o_proj.
    func headOutputs(layer: Int, att: UnsafePointer<Float>, rows: Int)
    /// MLP activation silu(gate) ⊙ up (T, F), the input of down_proj.
    func mlpActivation(layer: Int, act: UnsafePointer<Float>, rows: Int)
}

extension ForwardObserver {
    public func sublayerInput(_ s: Int, x: UnsafePointer<Float>, rows: Int) {}
    public func normed(_ s: Int, n: UnsafePointer<Float>, rows: Int) {}
    public func headOutputs(layer: Int, att: UnsafePointer<Float>, rows: Int) {}
    public func mlpActivation(layer: Int, act: UnsafePointer<Float>, rows: Int) {}
}

extension LlamaModel {
    /// Logits (T, V) computed with the plain reference version of every op (slow; for tests).
    public func referenceLogits(_ ids: [Int32]) -> Tensor {
        let c = config, T = ids.count, C = c.hiddenSize, D = c.headDim, eps = Float(c.rmsNormEps)
        let x = Tensor(shape: [T, C]), n = Tensor(shape: [T, C]), tmp = Tensor(shape: [T, C])
        ids.withUnsafeBufferPointer {
            embeddingForwardReference(out: x.data, ids: $0.baseAddress!, table: embedTokens.data, rows: T, channels: C)
        }
        for (layer, block) in zip(layers, c.blocks) {
            if let a = layer.attention {
                let H = block.numAttentionHeads, G = block.numKeyValueHeads
                let q = Tensor(shape: [T, H * D]), k = Tensor(shape: [T, G * D]), v = Tensor(shape: [T, G * D]), att = Tensor(shape: [T, H * D])
                rmsnormForwardReference(out: n.data, inp: x.data, weight: a.norm.data, eps: eps, rows: T, channels: C)
                linearForwardReference(out: q.data, inp: n.data, weight: a.q.data, rows: T, inFeatures: C, outFeatures: H * D)
                linearForwardReference(out: k.data, inp: n.data, weight: a.k.data, rows: T, inFeatures: C, outFeatures: G * D)
                linearForwardReference(out: v.data, inp: n.data, weight: a.v.data, rows: T, inFeatures: C, outFeatures: G * D)
                rotaryForwardReference(q.data, rows: T, heads: H, headDim: D, theta: c.ropeTheta)
                rotaryForwardReference(k.data, rows: T, heads: G, headDim: D, theta: c.ropeTheta)
                attentionForwardReference(out: att.data, q: q.data, k: k.data, v: v.data, rows: T, heads: H, kvHeads: G, headDim: D)
                linearForwardReference(out: tmp.data, inp: att.data, weight: a.o.data, rows: T, inFeatures: H * D, outFeatures: C)
                for i in 0..<x.count { x[i] += tmp[i] }
            }
            if let m = layer.mlp {
                let F = block.intermediateSize
                let g = Tensor(shape: [T, F]), u = Tensor(shape: [T, F])
                rmsnormForwardReference(out: n.data, inp: x.data, weight: m.norm.data, eps: eps, rows: T, channels: C)
                linearForwardReference(out: g.data, inp: n.data, weight: m.gate.data, rows: T, inFeatures: C, outFeatures: F)
                linearForwardReference(out: u.data, inp: n.data, weight: m.up.data, rows: T, inFeatures: C, outFeatures: F)
                swigluForwardReference(out: g.data, gate: g.data, up: u.data, count: T * F)
                linearForwardReference(out: tmp.data, inp: g.data, weight: m.down.data, rows: T, inFeatures: F, outFeatures: C)
                for i in 0..<x.count { x[i] += tmp[i] }
            }
        }
        rmsnormForwardReference(out: n.data, inp: x.data, weight: norm.data, eps: eps, rows: T, channels: C)
        let out = Tensor(shape: [T, c.vocabSize])
        linearForwardReference(out: out.data, inp: n.data, weight: lmHead.data, rows: T, inFeatures: C, outFeatures: c.vocabSize)
        return out
    }
}
