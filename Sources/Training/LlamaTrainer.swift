import Model
import TensorCore

/// Forward and backward of a whole Llama decoder over a batch of B windows of W tokens, for training.
///
/// The forward is the inference forward (Forward.swift) with every tensor the backward needs kept per
/// layer: the residual stream entering each sublayer, the norms' rstd and outputs, q/k after rotary, v, the
/// attention output, the MLP's gate and up pre-activations and its activation. Attention probabilities are
/// not kept; the attention backward recomputes them block by block. All GEMMs run on the B·W rows at once;
/// only attention and rotary run per window.
///
/// The backward accumulates into `grads`, a model of the same config whose tensors are the gradients (so a
/// tied LM head's gradient lands in the embedding's, as it must). A weight can be frozen (no gradient
/// computed, which also skips its weight-gradient GEMM) or multiplied by a mask: the forward then uses
/// weight ⊙ mask, and the gradient flows to the weight (masked) and, when wanted, to the mask.
/// Sees the inputs and their loss gradients during `LlamaTrainer.backward` (for gradient-based scores such
/// as TDMPQ's |x · dL/dx|). Pointers are valid only during the call; rows are the trainer's rows.
public protocol BackwardObserver: AnyObject {
    /// The input (rows × features) of linear weight `name` and dL/d(that input).
    func linearInput(_ name: String, x: UnsafePointer<Float>, dx: UnsafePointer<Float>, rows: Int, features: Int)
    /// The residual stream entering decoder layer `layer` (rows × C) and its gradient.
    func layerInput(_ layer: Int, x: UnsafePointer<Float>, dx: UnsafePointer<Float>, rows: Int, channels: Int)
}

public final class LlamaTrainer {
    /// Receives inputs and input gradients in `backward` (nil: none).
    public weak var backwardObserver: BackwardObserver?
    public let model: LlamaModel
    /// Gradients, in the model's shape.
    public let grads: LlamaModel
    public let batch: Int, window: Int
    /// Rows of every activation: batch × window.
    public var rows: Int { batch * window }
    /// Frozen tensors (Hugging Face names): no gradient is computed for them.
    public var frozen: Set<String> = []
    /// Masks by weight name (same shape as the weight); the forward uses weight ⊙ mask.
    public private(set) var masks: [String: Tensor] = [:]
    /// Gradients of the masks whose gradient is wanted (see `setMask`).
    public private(set) var maskGrads: [String: Tensor] = [:]
    /// Decoder layers whose output (the residual stream after the layer) is copied out in the forward, and
    /// the gradient slot for each (added to the residual gradient at that layer in the backward).
    public private(set) var captures: [Int: Tensor] = [:]
    public private(set) var captureGrads: [Int: Tensor] = [:]
    /// Final-normed hidden states (rows, C) of the last forward.
    public let hidden: Tensor

    let rotary: RotaryTable
    /// Weights and their gradients by Hugging Face name.
    let names: [String: Tensor], gradNames: [String: Tensor]
    var effective: [String: Tensor] = [:], effectiveGrads: [String: Tensor] = [:]
    var ids: [Int32] = []

    struct SublayerActivations {
        let resid: Tensor, rstd: Tensor, normed: Tensor
    }
    struct LayerActivations {
        var attn: SublayerActivations?
        var q, k, v, att: Tensor?
        var mlp: SublayerActivations?
        var gate, up, act: Tensor?
    }
    var acts: [LayerActivations] = []
    let x, rstdFinal: Tensor
    // Backward scratch.
    let dx, dn, dq, dk, dv, datt, dgate, dup, dact, attScratch, attBackScratch: Tensor

    public init(model: LlamaModel, batch B: Int, window W: Int) {
        let c = model.config, N = B * W, C = c.hiddenSize, D = c.headDim
        self.model = model
        batch = B
        window = W
        var zeros: [String: Tensor] = [:]
        for (name, t) in model.namedTensors { zeros[name] = Tensor(shape: t.shape) }
        do { grads = try LlamaModel(config: c, tensors: zeros) } catch { preconditionFailure("gradient model: \(error)") }
        names = Dictionary(uniqueKeysWithValues: model.namedTensors.map { ($0.name, $0.tensor) })
        gradNames = Dictionary(uniqueKeysWithValues: grads.namedTensors.map { ($0.name, $0.tensor) })
        rotary = RotaryTable(headDim: D, theta: c.ropeTheta, positions: W)
        hidden = Tensor(shape: [N, C])
        x = Tensor(shape: [N, C])
        rstdFinal = Tensor(shape: [N])
        for b in c.blocks {
            var a = LayerActivations()
            if b.attention {
                let H = b.numAttentionHeads, G = b.numKeyValueHeads
                a.attn = SublayerActivations(resid: Tensor(shape: [N, C]), rstd: Tensor(shape: [N]), normed: Tensor(shape: [N, C]))
                a.q = Tensor(shape: [N, H * D]); a.k = Tensor(shape: [N, G * D]); a.v = Tensor(shape: [N, G * D])
                a.att = Tensor(shape: [N, H * D])
            }
            if b.mlp {
                let F = b.intermediateSize
                a.mlp = SublayerActivations(resid: Tensor(shape: [N, C]), rstd: Tensor(shape: [N]), normed: Tensor(shape: [N, C]))
                a.gate = Tensor(shape: [N, F]); a.up = Tensor(shape: [N, F]); a.act = Tensor(shape: [N, F])
            }
            acts.append(a)
        }
        let maxH = c.blocks.map(\.numAttentionHeads).max() ?? 1, maxG = c.blocks.map(\.numKeyValueHeads).max() ?? 1
        let maxF = c.blocks.map(\.intermediateSize).max() ?? 1
        dx = Tensor(shape: [N, C]); dn = Tensor(shape: [N, C])
        dq = Tensor(shape: [N, maxH * D]); dk = Tensor(shape: [N, maxG * D]); dv = Tensor(shape: [N, maxG * D])
        datt = Tensor(shape: [N, maxH * D])
        dgate = Tensor(shape: [N, maxF]); dup = Tensor(shape: [N, maxF]); dact = Tensor(shape: [N, maxF])
        attScratch = Tensor(shape: [AttentionForward.scratchCount(tokens: W)])
        attBackScratch = Tensor(shape: [AttentionBackward.scratchCount(tokens: W, kvHeads: maxG, headDim: D)])
    }

    /// Every parameter with its gradient, in canonical order (a tied LM head appears once, as the embedding).
    public var parameters: [(name: String, value: Tensor, grad: Tensor)] {
        zip(model.namedTensors, grads.namedTensors).map { ($0.name, $0.tensor, $1.tensor) }
    }

    /// Multiplies weight `name` by `mask` in the forward; with `trainable`, the backward also computes the
    /// mask's gradient (in `maskGrads[name]`).
    public func setMask(_ name: String, _ mask: Tensor, trainable: Bool = false) throws {
        guard let w = names[name] else { throw ConfigError("mask for unknown tensor '\(name)'") }
        guard w.shape == mask.shape else { throw ConfigError("mask for '\(name)': expected shape \(w.shape), found \(mask.shape)") }
        guard name.hasPrefix("model.layers."), w.shape.count == 2 else {
            throw ConfigError("mask for '\(name)': only the linear weights of decoder layers can be masked")
        }
        masks[name] = mask
        effective[name] = Tensor(shape: w.shape)
        effectiveGrads[name] = Tensor(shape: w.shape)
        maskGrads[name] = trainable ? Tensor(shape: w.shape) : nil
    }

    /// Requests the output of decoder layer `layer` to be kept in `captures[layer]` (and a gradient slot).
    public func capture(layer: Int) {
        precondition(layer >= 0 && layer < model.layers.count, "layer \(layer) out of range")
        captures[layer] = Tensor(shape: [rows, model.config.hiddenSize])
        captureGrads[layer] = Tensor(shape: [rows, model.config.hiddenSize])
    }

    /// The weight the forward uses for `name` (masked when a mask is set).
    func weight(_ name: String, _ t: Tensor) -> Tensor { effective[name] ?? t }

    /// Where the backward accumulates the gradient of weight `name`: nil when frozen (and not masked with a
    /// trainable mask).
    func gradSlot(_ name: String, _ g: Tensor) -> UnsafeMutablePointer<Float>? {
        if let e = effectiveGrads[name] { return (frozen.contains(name) && maskGrads[name] == nil) ? nil : e.data }
        return frozen.contains(name) ? nil : g.data
    }

    /// Runs the forward on B·W token ids (window after window); the result is in `hidden`.
    public func forward(_ ids: [Int32]) {
        let c = model.config, N = rows, C = c.hiddenSize, D = c.headDim, W = window, eps = Float(c.rmsNormEps)
        precondition(ids.count == N, "forward on \(ids.count) ids, trainer holds \(batch) × \(window)")
        precondition(ids.allSatisfy { $0 >= 0 && Int($0) < c.vocabSize }, "token id outside the vocabulary")
        self.ids = ids
        for (name, mask) in masks {
            maskedWeightForward(effective: effective[name]!.data, weight: names[name]!.data, mask: mask.data, count: mask.count)
        }
        ids.withUnsafeBufferPointer {
            embeddingForward(out: x.data, ids: $0.baseAddress!, table: model.embedTokens.data, rows: N, channels: C)
        }
        for (l, (layer, block)) in zip(model.layers, c.blocks).enumerated() {
            let p = "model.layers.\(l)."
            if let a = layer.attention, let s = acts[l].attn, let q = acts[l].q, let k = acts[l].k, let v = acts[l].v, let att = acts[l].att {
                let H = block.numAttentionHeads, G = block.numKeyValueHeads
                s.resid.data.update(from: x.data, count: N * C)
                rmsnormForward(out: s.normed.data, inp: x.data, weight: a.norm.data, eps: eps, rows: N, channels: C, rstd: s.rstd.data)
                linearForward(out: q.data, inp: s.normed.data, weight: weight(p + "self_attn.q_proj.weight", a.q).data, rows: N, inFeatures: C, outFeatures: H * D)
                linearForward(out: k.data, inp: s.normed.data, weight: weight(p + "self_attn.k_proj.weight", a.k).data, rows: N, inFeatures: C, outFeatures: G * D)
                linearForward(out: v.data, inp: s.normed.data, weight: weight(p + "self_attn.v_proj.weight", a.v).data, rows: N, inFeatures: C, outFeatures: G * D)
                for b in 0..<batch {
                    let r0 = b * W
                    rotaryForward(q.data + r0 * H * D, rows: W, heads: H, table: rotary)
                    rotaryForward(k.data + r0 * G * D, rows: W, heads: G, table: rotary)
                    attentionForward(out: att.data + r0 * H * D, q: q.data + r0 * H * D, k: k.data + r0 * G * D, v: v.data + r0 * G * D,
                                     rows: W, heads: H, kvHeads: G, headDim: D, scores: attScratch.data)
                }
                BLAS.gemm(transB: true, m: N, n: C, k: H * D, a: att.data, lda: H * D, b: weight(p + "self_attn.o_proj.weight", a.o).data,
                          ldb: H * D, beta: 1, c: x.data, ldc: C)
            }
            if let m = layer.mlp, let s = acts[l].mlp, let gate = acts[l].gate, let up = acts[l].up, let act = acts[l].act {
                let F = block.intermediateSize
                s.resid.data.update(from: x.data, count: N * C)
                rmsnormForward(out: s.normed.data, inp: x.data, weight: m.norm.data, eps: eps, rows: N, channels: C, rstd: s.rstd.data)
                linearForward(out: gate.data, inp: s.normed.data, weight: weight(p + "mlp.gate_proj.weight", m.gate).data, rows: N, inFeatures: C, outFeatures: F)
                linearForward(out: up.data, inp: s.normed.data, weight: weight(p + "mlp.up_proj.weight", m.up).data, rows: N, inFeatures: C, outFeatures: F)
                swigluForward(out: act.data, gate: gate.data, up: up.data, count: N * F)
                BLAS.gemm(transB: true, m: N, n: C, k: F, a: act.data, lda: F, b: weight(p + "mlp.down_proj.weight", m.down).data,
                          ldb: F, beta: 1, c: x.data, ldc: C)
            }
            captures[l]?.data.update(from: x.data, count: N * C)
        }
        rmsnormForward(out: hidden.data, inp: x.data, weight: model.norm.data, eps: eps, rows: N, channels: C, rstd: rstdFinal.data)
    }

    /// Zeroes the parameter, mask and capture gradients.
    public func zeroGradients() {
        for (_, g) in grads.namedTensors { g.zero() }
        for (_, g) in maskGrads { g.zero() }
        for (_, g) in captureGrads { g.zero() }
    }

    /// Backpropagates dL/dhidden (rows, C) plus any gradients placed in `captureGrads` through the last
    /// forward, accumulating into `grads` (and `maskGrads`). Capture gradients are consumed (zeroed).
    public func backward(dHidden: UnsafePointer<Float>) {
        let c = model.config, N = rows, C = c.hiddenSize, D = c.headDim, W = window
        for (_, g) in effectiveGrads { g.zero() }
        dx.zero()
        rmsnormBackward(dinp: dx.data, dweight: frozen.contains("model.norm.weight") ? nil : grads.norm.data, dout: dHidden,
                        inp: x.data, weight: model.norm.data, rstd: rstdFinal.data, rows: N, channels: C)
        for l in stride(from: model.layers.count - 1, through: 0, by: -1) {
            let layer = model.layers[l], block = c.blocks[l], gl = grads.layers[l], p = "model.layers.\(l)."
            if let g = captureGrads[l] { residualAdd(dx.data, g.data, count: N * C); g.zero() }
            if let m = layer.mlp, let gm = gl.mlp, let s = acts[l].mlp, let gate = acts[l].gate, let up = acts[l].up, let act = acts[l].act {
                let F = block.intermediateSize
                let wDown = weight(p + "mlp.down_proj.weight", m.down), wGate = weight(p + "mlp.gate_proj.weight", m.gate)
                let wUp = weight(p + "mlp.up_proj.weight", m.up)
                dact.data.update(repeating: 0, count: N * F)
                linearBackward(dinp: dact.data, dweight: gradSlot(p + "mlp.down_proj.weight", gm.down), dout: dx.data, inp: act.data,
                               weight: wDown.data, rows: N, inFeatures: F, outFeatures: C)
                backwardObserver?.linearInput(p + "mlp.down_proj.weight", x: act.data, dx: dact.data, rows: N, features: F)
                dgate.data.update(repeating: 0, count: N * F)
                dup.data.update(repeating: 0, count: N * F)
                swigluBackward(dgate: dgate.data, dup: dup.data, dout: dact.data, gate: gate.data, up: up.data, count: N * F)
                dn.zero()
                linearBackward(dinp: dn.data, dweight: gradSlot(p + "mlp.gate_proj.weight", gm.gate), dout: dgate.data, inp: s.normed.data,
                               weight: wGate.data, rows: N, inFeatures: C, outFeatures: F)
                linearBackward(dinp: dn.data, dweight: gradSlot(p + "mlp.up_proj.weight", gm.up), dout: dup.data, inp: s.normed.data,
                               weight: wUp.data, rows: N, inFeatures: C, outFeatures: F)
                for name in ["mlp.gate_proj.weight", "mlp.up_proj.weight"] {
                    backwardObserver?.linearInput(p + name, x: s.normed.data, dx: dn.data, rows: N, features: C)
                }
                rmsnormBackward(dinp: dx.data, dweight: frozen.contains(p + "post_attention_layernorm.weight") ? nil : gm.norm.data,
                                dout: dn.data, inp: s.resid.data, weight: m.norm.data, rstd: s.rstd.data, rows: N, channels: C)
            }
            if let a = layer.attention, let ga = gl.attention, let s = acts[l].attn, let q = acts[l].q, let k = acts[l].k,
               let v = acts[l].v, let att = acts[l].att {
                let H = block.numAttentionHeads, G = block.numKeyValueHeads
                datt.data.update(repeating: 0, count: N * H * D)
                linearBackward(dinp: datt.data, dweight: gradSlot(p + "self_attn.o_proj.weight", ga.o), dout: dx.data, inp: att.data,
                               weight: weight(p + "self_attn.o_proj.weight", a.o).data, rows: N, inFeatures: H * D, outFeatures: C)
                backwardObserver?.linearInput(p + "self_attn.o_proj.weight", x: att.data, dx: datt.data, rows: N, features: H * D)
                dq.data.update(repeating: 0, count: N * H * D)
                dk.data.update(repeating: 0, count: N * G * D)
                dv.data.update(repeating: 0, count: N * G * D)
                for b in 0..<batch {
                    let r0 = b * W
                    attentionBackward(dq: dq.data + r0 * H * D, dk: dk.data + r0 * G * D, dv: dv.data + r0 * G * D,
                                      dout: datt.data + r0 * H * D, q: q.data + r0 * H * D, k: k.data + r0 * G * D, v: v.data + r0 * G * D,
                                      rows: W, heads: H, kvHeads: G, headDim: D, scratch: attBackScratch.data)
                    rotaryBackward(dq.data + r0 * H * D, rows: W, heads: H, table: rotary)
                    rotaryBackward(dk.data + r0 * G * D, rows: W, heads: G, table: rotary)
                }
                dn.zero()
                for (name, w, g, d, out) in [("q_proj", a.q, ga.q, dq, H * D), ("k_proj", a.k, ga.k, dk, G * D), ("v_proj", a.v, ga.v, dv, G * D)] {
                    let full = p + "self_attn." + name + ".weight"
                    linearBackward(dinp: dn.data, dweight: gradSlot(full, g), dout: d.data, inp: s.normed.data,
                                   weight: weight(full, w).data, rows: N, inFeatures: C, outFeatures: out)
                }
                for name in ["q_proj", "k_proj", "v_proj"] {
                    backwardObserver?.linearInput(p + "self_attn." + name + ".weight", x: s.normed.data, dx: dn.data, rows: N, features: C)
                }
                rmsnormBackward(dinp: dx.data, dweight: frozen.contains(p + "input_layernorm.weight") ? nil : ga.norm.data,
                                dout: dn.data, inp: s.resid.data, weight: a.norm.data, rstd: s.rstd.data, rows: N, channels: C)
            }
            if let obs = backwardObserver, let input = acts[l].attn?.resid ?? acts[l].mlp?.resid {
                obs.layerInput(l, x: input.data, dx: dx.data, rows: N, channels: C)
            }
        }
        if !frozen.contains("model.embed_tokens.weight") {
            ids.withUnsafeBufferPointer {
                embeddingBackward(dtable: grads.embedTokens.data, dout: dx.data, ids: $0.baseAddress!, rows: N, channels: C)
            }
        }
        // Masked weights: route d(weight ⊙ mask) to the weight and the mask.
        for (name, mask) in masks.sorted(by: { $0.key < $1.key }) {
            maskedWeightBackward(dweight: frozen.contains(name) ? nil : gradNames[name]!.data, dmask: maskGrads[name]?.data,
                                 deffective: effectiveGrads[name]!.data, weight: names[name]!.data, mask: mask.data, count: mask.count)
        }
    }
}

extension BackwardObserver {
    public func linearInput(_ name: String, x: UnsafePointer<Float>, dx: UnsafePointer<Float>, rows: Int, features: Int) {}
    public func layerInput(_ layer: Int, x: UnsafePointer<Float>, dx: UnsafePointer<Float>, rows: Int, channels: Int) {}
}
