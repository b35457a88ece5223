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
    public func hiddenStates(_ ids: [Int32]) -> UnsafePointer<Float> {
        let c = model.config, T = ids.count, C = c.hiddenSize, D = c.headDim
        precondition(T > 0 && T <= maxTokens, "window of \(T) tokens, scratch holds \(maxTokens)")
        let eps = Float(c.rmsNormEps)
        ids.withUnsafeBufferPointer {
            embeddingForward(out: x.data, ids: $0.baseAddress!, table: model.embedTokens.data, rows: T, channels: C)
        }
        for (layer, block) in zip(model.layers, c.blocks) {
            if let a = layer.attention {
                let H = block.numAttentionHeads, G = block.numKeyValueHeads
                rmsnormForward(out: n.data, inp: x.data, weight: a.norm.data, eps: eps, rows: T, channels: C)
                linearForward(out: q.data, inp: n.data, weight: a.q.data, rows: T, inFeatures: C, outFeatures: H * D)
                linearForward(out: k.data, inp: n.data, weight: a.k.data, rows: T, inFeatures: C, outFeatures: G * D)
                linearForward(out: v.data, inp: n.data, weight: a.v.data, rows: T, inFeatures: C, outFeatures: G * D)
                rotaryForward(q.data, rows: T, heads: H, table: rotary)
                rotaryForward(k.data, rows: T, heads: G, table: rotary)
                attentionForward(out: att.data, q: q.data, k: k.data, v: v.data, rows: T, heads: H, kvHeads: G, headDim: D,
                                 scores: scores.data)
                // x += o_proj(att): the residual add folded into the GEMM (beta = 1).
                BLAS.gemm(transB: true, m: T, n: C, k: H * D, a: att.data, lda: H * D, b: a.o.data, ldb: H * D,
                          beta: 1, c: x.data, ldc: C)
            }
            if let m = layer.mlp {
                let F = block.intermediateSize
                rmsnormForward(out: n.data, inp: x.data, weight: m.norm.data, eps: eps, rows: T, channels: C)
                linearForward(out: gate.data, inp: n.data, weight: m.gate.data, rows: T, inFeatures: C, outFeatures: F)
                linearForward(out: up.data, inp: n.data, weight: m.up.data, rows: T, inFeatures: C, outFeatures: F)
                swigluForward(out: gate.data, gate: gate.data, up: up.data, count: T * F)
                BLAS.gemm(transB: true, m: T, n: C, k: F, a: gate.data, lda: F, b: m.down.data, ldb: F,
                          beta: 1, c: x.data, ldc: C)
            }
        }
        rmsnormForward(out: n.data, inp: x.data, weight: model.norm.data, eps: eps, rows: T, channels: C)
        return UnsafePointer(n.data)
    }

    /// Full logits (T, V) for `ids`.
    public func logits(_ ids: [Int32]) -> Tensor {
        let c = model.config, T = ids.count
        let h = hiddenStates(ids)
        let out = Tensor(shape: [T, c.vocabSize])
        linearForward(out: out.data, inp: h, weight: model.lmHead.data, rows: T, inFeatures: c.hiddenSize, outFeatures: c.vocabSize)
        return out
    }
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
