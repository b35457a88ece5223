import TensorCore

/// Multipliers the forward applies to structural units, and that training can differentiate (VTrans's
/// masks; a gate at 0 is the unit removed). Any entry may be nil (no gate there).
///   heads[l] (H_l):    multiplies head h's output (its D channels of the o_proj input)
///   neurons[l] (F_l):  multiplies MLP neuron f's activation (column f of down_proj's input)
///   channels (C):      multiplies hidden channel c of the embedding output and of every sublayer's output
///                      added to the residual stream, so a channel at 0 stays 0 throughout
///   sublayers (2L):    multiplies sublayer s's output (s = 2·layer attention, 2·layer + 1 MLP)
public final class Gates {
    public var heads: [Tensor?]
    public var neurons: [Tensor?]
    public var channels: Tensor?
    public var sublayers: Tensor?

    /// No gates (all nil) for a model of this config.
    public init(config c: ModelConfig) {
        heads = Array(repeating: nil, count: c.blocks.count)
        neurons = Array(repeating: nil, count: c.blocks.count)
    }

    /// Gates of the same shapes as `other`'s, all zero (for gradients).
    public init(zerosLike other: Gates) {
        heads = other.heads.map { $0.map { Tensor(shape: $0.shape) } }
        neurons = other.neurons.map { $0.map { Tensor(shape: $0.shape) } }
        channels = other.channels.map { Tensor(shape: $0.shape) }
        sublayers = other.sublayers.map { Tensor(shape: $0.shape) }
    }

    /// Every gate tensor present, with a name ("heads.3", "neurons.0", "channels", "sublayers").
    public var named: [(name: String, tensor: Tensor)] {
        var out: [(String, Tensor)] = []
        for (l, h) in heads.enumerated() { if let h { out.append(("heads.\(l)", h)) } }
        for (l, n) in neurons.enumerated() { if let n { out.append(("neurons.\(l)", n)) } }
        if let channels { out.append(("channels", channels)) }
        if let sublayers { out.append(("sublayers", sublayers)) }
        return out
    }

    public func zero() { for (_, t) in named { t.zero() } }

    /// Checks every gate's length against the config.
    public func validate(_ c: ModelConfig) throws {
        guard heads.count == c.blocks.count, neurons.count == c.blocks.count else {
            throw ConfigError("gates for \(heads.count) layers, model has \(c.blocks.count)")
        }
        for (l, b) in c.blocks.enumerated() {
            if let h = heads[l], h.count != b.numAttentionHeads || !b.attention {
                throw ConfigError("layer \(l): head gates of \(h.count) for \(b.numAttentionHeads) heads")
            }
            if let n = neurons[l], n.count != b.intermediateSize || !b.mlp {
                throw ConfigError("layer \(l): neuron gates of \(n.count) for \(b.intermediateSize) neurons")
            }
        }
        if let ch = channels, ch.count != c.hiddenSize {
            throw ConfigError("channel gates of \(ch.count) for \(c.hiddenSize) channels")
        }
        if let s = sublayers, s.count != 2 * c.blocks.count {
            throw ConfigError("sublayer gates of \(s.count) for \(2 * c.blocks.count) sublayers")
        }
    }
}

/// Sees the intermediate values of the forward, for calibration statistics. Pointers are valid only during
/// the call. Sublayer s is layer s / 2's attention (s even) or MLP (s odd); s = 2L is the final norm.
public protocol ForwardObserver: AnyObject {
    /// The residual stream (T, C) entering sublayer s (s = 2L: the stream entering the final norm).
    func sublayerInput(_ s: Int, x: UnsafePointer<Float>, rows: Int)
    /// The normed stream (T, C) that sublayer s (or the final norm, s = 2L) produces from its input.
    func normed(_ s: Int, n: UnsafePointer<Float>, rows: Int)
    /// Attention output of every head (T, H·D), the input of o_proj (gated when head gates are set).
    func headOutputs(layer: Int, att: UnsafePointer<Float>, rows: Int)
    /// MLP activation silu(gate) ⊙ up (T, F), the input of down_proj (gated when neuron gates are set).
    func mlpActivation(layer: Int, act: UnsafePointer<Float>, rows: Int)
}

extension ForwardObserver {
    public func sublayerInput(_ s: Int, x: UnsafePointer<Float>, rows: Int) {}
    public func normed(_ s: Int, n: UnsafePointer<Float>, rows: Int) {}
    public func headOutputs(layer: Int, att: UnsafePointer<Float>, rows: Int) {}
    public func mlpActivation(layer: Int, act: UnsafePointer<Float>, rows: Int) {}
}

/// Sees the inputs of every linear weight and their loss gradients during `TransformerDecoder.backward` (for
/// gradient-based scores such as TDMPQ's |x · dL/dx|). Pointers are valid only during the call.
public protocol BackwardObserver: AnyObject {
    /// The input (rows × features) of linear weight `id` and dL/d(that input).
    func linearInput(_ id: LinearID, x: UnsafePointer<Float>, dx: UnsafePointer<Float>, rows: Int, features: Int)
    /// The residual stream entering decoder layer `layer` (rows × C) and its gradient.
    func layerInput(_ layer: Int, x: UnsafePointer<Float>, dx: UnsafePointer<Float>, rows: Int, channels: Int)
}

extension BackwardObserver {
    public func linearInput(_ id: LinearID, x: UnsafePointer<Float>, dx: UnsafePointer<Float>, rows: Int, features: Int)
    {}
    public func layerInput(_ layer: Int, x: UnsafePointer<Float>, dx: UnsafePointer<Float>, rows: Int, channels: Int) {}
}

/// THE forward of a decoder of any family (its spec: `ModelConfig`), used by evaluation, calibration and
/// training alike, over B windows of W tokens (rows N = B·W; GEMMs run on all rows at once, rotary and
/// attention per window):
///
///   x = s_e · embed(ids) ⊙ z_c                                                                       (s_e:
/// embeddingScale)
///   for each layer:  n = norm(x);  q, k, v = q_proj(n) + b_q, k_proj(n) + b_k, v_proj(n) + b_v   (biases: spec)
///                    q, k = qnorm(q), knorm(k) per head of D                                       (qkNorm: spec)
///                    x += g_att ⊙ z_c ⊙ post(o_proj(gate_h(attn_l(rope_l(q), rope_l(k), v))) + b_o)
///                    n = norm(x);  x += g_mlp ⊙ z_c ⊙ post(down_proj(gate_f(act(gate_proj(n) + b_g) ⊙ (up_proj(n) +
/// b_u))) + b_d)
///   h = norm(x);  logits = h · lm_headᵀ
///
/// (norm: the spec's `normKind`, x/rms ⊙ w or x/rms ⊙ (1 + w); act: its `activation`, SiLU or GELU-tanh; post: the
/// post-sublayer norm when the spec has `postNorms`, else identity; attn_l: causal, or sliding-window on the layers
/// the spec marks, scaled by `attentionScale`; rope_l: the layer's rotary base; z, g: the optional `gates`.)
/// Every projection goes through `LinearWeight.forward`, so every weight
/// representation runs here. In inference mode (`training: false`) all layers share one set of scratch
/// buffers and nothing is kept; in training mode each layer keeps what `backward` (TransformerDecoderBackward.swift)
/// needs: the residual entering each sublayer, the norms' rstd and outputs, q/k after rotary, v, the
/// attention output, the MLP's gate and up pre-activations and its activation (attention probabilities are
/// recomputed by the attention backward).
public final class TransformerDecoder {
    public let model: DecoderModel
    public let batch: Int, window: Int
    public let training: Bool
    /// Rows of every activation: batch × window.
    public var rows: Int { batch * window }
    /// Gates applied in the forward (and differentiated in the backward); nil: none.
    public var gates: Gates? {
        didSet { if let g = gates { do { try g.validate(model.config) } catch { preconditionFailure("\(error)") } } }
    }
    /// Final-normed hidden states (rows, C) of the last `forward`.
    public let hidden: Tensor
    /// TransformerDecoder layers whose output (the residual stream after the layer) is copied out in the forward, and
    /// the gradient slot for each (added to the residual gradient at that layer in the backward).
    public private(set) var captures: [Int: Tensor] = [:]
    public private(set) var captureGrads: [Int: Tensor] = [:]

    /// Rotary tables of full-attention layers and (when the spec has them) sliding-window layers.
    let rotary: RotaryTable, slidingRotary: RotaryTable?
    let x: Tensor
    let rstdFinal: Tensor
    public internal(set) var ids: [Int32] = []
    let scores: Tensor
    /// Per layer (training) or one shared set (inference).
    var store: [LayerActivations]
    /// Backward scratch (training only).
    var back: BackwardScratch?

    final class SublayerActivations {
        let resid: Tensor?, rstd: Tensor?, normed: Tensor
        /// The sublayer's output before the channel / sublayer gates (kept when those gates are set; always with
        /// post-sublayer norms, where it is the post-norm's output).
        var out: Tensor?
        /// With post-sublayer norms: the output projection's output (the post-norm's input) and the post-norm's
        /// rstd (training).
        let raw: Tensor?, postRstd: Tensor?
        init(rows N: Int, channels C: Int, training: Bool, postNorm: Bool) {
            resid = training ? Tensor(shape: [N, C]) : nil
            rstd = training ? Tensor(shape: [N]) : nil
            normed = Tensor(shape: [N, C])
            raw = postNorm ? Tensor(shape: [N, C]) : nil
            postRstd = postNorm && training ? Tensor(shape: [N]) : nil
            if postNorm { out = Tensor(shape: [N, C]) }
        }
    }
    final class LayerActivations {
        var attn: SublayerActivations?
        var q, k, v, att, attGated: Tensor?
        /// q and k before their per-head norm, and the norms' rstd (N·H, N·G): training with q/k norm only.
        var qPre, kPre, qRstd, kRstd: Tensor?
        var mlp: SublayerActivations?
        var gate, up, act, actGated: Tensor?
    }
    struct BackwardScratch {
        let dx, dn, dq, dk, dv, datt, dgate, dup, dact, dsub, attBack: Tensor
        /// The gradient of q or k before its per-head norm (q/k norm only).
        let dqkPre: Tensor?
        /// The gradient of a post-sublayer norm's input (post norms only).
        let dpost: Tensor?
    }

    /// A decoder over `batch` windows of up to `window` tokens; `training` keeps activations for `backward`.
    public init(model: DecoderModel, batch B: Int = 1, window W: Int, training: Bool = false) {
        precondition(B >= 1 && W >= 1, "decoder of \(B) × \(W) tokens")
        let c = model.config, N = B * W, C = c.hiddenSize, D = c.headDim
        self.model = model
        batch = B
        window = W
        self.training = training
        rotary = RotaryTable(headDim: D, theta: c.ropeTheta, positions: W)
        slidingRotary = c.blocks.contains { $0.layerType == .sliding } && c.slidingRopeTheta != nil
            ? RotaryTable(headDim: D, theta: c.slidingRopeTheta!, positions: W) : nil
        hidden = Tensor(shape: [N, C])
        x = Tensor(shape: [N, C])
        rstdFinal = Tensor(shape: [training ? N : 0])
        scores = Tensor(shape: [AttentionForward.scratchCount(tokens: W)])
        func layer(_ b: BlockConfig) -> LayerActivations {
            let a = LayerActivations(), H = b.numAttentionHeads, G = b.numKeyValueHeads, F = b.intermediateSize
            if b.attention {
                a.attn = SublayerActivations(rows: N, channels: C, training: training, postNorm: c.postNorms)
                a.q = Tensor(shape: [N, H * D]); a.k = Tensor(shape: [N, G * D]); a.v = Tensor(shape: [N, G * D])
                a.att = Tensor(shape: [N, H * D])
                if c.qkNorm && training {
                    a.qPre = Tensor(shape: [N, H * D]); a.kPre = Tensor(shape: [N, G * D])
                    a.qRstd = Tensor(shape: [N * H]); a.kRstd = Tensor(shape: [N * G])
                }
            }
            if b.mlp {
                a.mlp = SublayerActivations(rows: N, channels: C, training: training, postNorm: c.postNorms)
                a.gate = Tensor(shape: [N, F]); a.up = Tensor(shape: [N, F]); a.act = Tensor(shape: [N, F])
            }
            return a
        }
        let maxH = c.blocks.map(\.numAttentionHeads).max() ?? 1, maxG = c.blocks.map(\.numKeyValueHeads).max() ?? 1
        let maxF = c.blocks.map(\.intermediateSize).max() ?? 1
        if training {
            store = c.blocks.map(layer)
            back = BackwardScratch(
                dx: Tensor(shape: [N, C]), dn: Tensor(shape: [N, C]),
                dq: Tensor(shape: [N, maxH * D]), dk: Tensor(shape: [N, maxG * D]), dv: Tensor(shape: [N, maxG * D]),
                datt: Tensor(shape: [N, maxH * D]), dgate: Tensor(shape: [N, maxF]), dup: Tensor(shape: [N, maxF]),
                dact: Tensor(shape: [N, maxF]), dsub: Tensor(shape: [N, C]),
                attBack: Tensor(shape: [AttentionBackward.scratchCount(tokens: W, kvHeads: maxG, headDim: D)]),
                dqkPre: c.qkNorm ? Tensor(shape: [N, max(maxH, maxG) * D]) : nil,
                dpost: c.postNorms ? Tensor(shape: [N, C]) : nil)
        } else {
            // One set sized for the widest layer, shared by all.
            store = [layer(BlockConfig(numAttentionHeads: maxH, numKeyValueHeads: maxG, intermediateSize: maxF))]
        }
    }

    /// The activations of layer l (the shared set in inference mode).
    func activations(_ l: Int) -> LayerActivations { training ? store[l] : store[0] }

    /// The rotary table of layer l (its base: `ModelConfig.ropeTheta(layer:)`).
    func rotaryTable(_ l: Int) -> RotaryTable {
        model.config.blocks[l].layerType == .sliding ? slidingRotary ?? rotary : rotary
    }

    /// Requests the output of decoder layer `layer` to be kept in `captures[layer]` (and a gradient slot).
    public func capture(layer: Int) {
        precondition(layer >= 0 && layer < model.layers.count, "layer \(layer) out of range")
        captures[layer] = Tensor(shape: [rows, model.config.hiddenSize])
        captureGrads[layer] = Tensor(shape: [rows, model.config.hiddenSize])
    }

    // MARK: - Forward

    /// The residual stream (rows, C) that `embed` fills and `runSublayers` updates in place. Callers may
    /// overwrite its first rows to resume the forward from a saved state.
    public var residual: UnsafeMutablePointer<Float> { x.data }

    /// Runs the whole decoder on `ids` (batch × window ids, or up to `window` ids when batch is 1) and returns
    /// the final-normed hidden states (rows, C), in `hidden` (overwritten by the next call).
    @discardableResult
    public func forward(_ ids: [Int32], observer: ForwardObserver? = nil) -> UnsafePointer<Float> {
        embed(ids)
        let W = batch == 1 ? ids.count : window
        runSublayers(0..<(2 * model.layers.count), rows: ids.count, window: W, observer: observer)
        return finalNorm(rows: ids.count, observer: observer)
    }

    /// Inference name of `forward` for one window.
    public func hiddenStates(_ ids: [Int32], observer: ForwardObserver? = nil) -> UnsafePointer<Float> {
        forward(ids, observer: observer)
    }

    /// x = embeddingScale · embed(ids) (⊙ channel gates).
    public func embed(_ ids: [Int32]) {
        let N = ids.count, C = model.config.hiddenSize, V = model.config.vocabSize
        precondition(
            N > 0 && N <= rows && (batch == 1 || N == rows), "forward on \(N) ids, decoder holds \(batch) × \(window)")
        precondition(ids.allSatisfy { $0 >= 0 && Int($0) < V }, "token id outside the vocabulary")
        self.ids = ids
        let table = model.embedTokens.denseView ?? model.embedTokens.dequantized()
        ids.withUnsafeBufferPointer {
            embeddingForward(out: x.data, ids: $0.baseAddress!, table: table.data, rows: N, channels: C)
        }
        let es = Float(model.config.embeddingScale)
        if es != 1 { for i in 0..<(N * C) { x.data[i] *= es } }
        if let z = gates?.channels {
            gateForward(out: x.data, inp: x.data, gate: z.data, rows: N, groups: C, groupSize: 1)
        }
    }

    /// Applies sublayers `range` to the residual stream of N rows, in windows of W (N a multiple of W).
    /// Sublayer s is layer s / 2's attention when s is even and its MLP when s is odd; absent sublayers and
    /// those in `skip` are not computed. `withoutOutput`: each sublayer stops after the observer has seen its
    /// output projection's input (o_proj's, down_proj's), leaving the stream unchanged (a layer-wise pass that
    /// replaces that projection adds its output itself).
    public func runSublayers(
        _ range: Range<Int>, rows N: Int, window W: Int? = nil, skip: Set<Int> = [], observer: ForwardObserver? = nil,
        withoutOutput: Bool = false
    ) {
        let c = model.config, C = c.hiddenSize, D = c.headDim
        let W = W ?? (batch == 1 ? N : window)
        precondition(
            N > 0 && N <= rows && W <= window && N % W == 0,
            "forward on \(N) rows in windows of \(W), decoder holds \(batch) × \(window)")
        for s in range {
            observer?.sublayerInput(s, x: x.data, rows: N)
            guard !skip.contains(s) else {
                if s % 2 == 1 { captures[s / 2]?.data.update(from: x.data, count: N * C) }
                continue
            }
            let l = s / 2, layer = model.layers[l], block = c.blocks[l], acts = activations(l)
            if s % 2 == 0, let a = layer.attention, let sub = acts.attn, let q = acts.q, let k = acts.k, let v = acts.v,
                let att = acts.att
            {
                let H = block.numAttentionHeads, G = block.numKeyValueHeads
                sub.resid?.data.update(from: x.data, count: N * C)
                model.applyNorm(s, out: sub.normed.data, inp: x.data, rows: N, rstd: sub.rstd?.data)
                observer?.normed(s, n: sub.normed.data, rows: N)
                MatrixProduct.withBF16Copy(of: sub.normed.data, count: N * C) {
                    for (kind, out, width) in [(LinearKind.q, q, H * D), (.k, k, G * D), (.v, v, G * D)] {
                        a[kind].forward(out: out.data, inp: sub.normed.data, rows: N)
                        if let bias = a.biases[kind] {
                            biasForward(out: out.data, bias: bias.data, rows: N, columns: width)
                        }
                    }
                }
                if let qn = a.qNorm, let kn = a.kNorm {
                    // Per-head RMSNorm: N·H rows of D (N·G for k); training keeps the input and rstd.
                    for (t, pre, rstd, w, heads) in [
                        (q, acts.qPre, acts.qRstd, qn, H), (k, acts.kPre, acts.kRstd, kn, G)
                    ] {
                        pre?.data.update(from: t.data, count: N * heads * D)
                        model.normForward(
                            out: t.data, inp: pre?.data ?? t.data, weight: w.data, rows: N * heads, channels: D,
                            rstd: rstd?.data)
                    }
                }
                let table = rotaryTable(l), window = c.attentionWindow(layer: l)
                for r0 in stride(from: 0, to: N, by: W) {
                    rotaryForward(q.data + r0 * H * D, rows: W, heads: H, table: table)
                    rotaryForward(k.data + r0 * G * D, rows: W, heads: G, table: table)
                    attentionForward(
                        out: att.data + r0 * H * D, q: q.data + r0 * H * D, k: k.data + r0 * G * D,
                        v: v.data + r0 * G * D,
                        rows: W, heads: H, kvHeads: G, headDim: D, scores: scores.data,
                        window: window, scale: c.attentionScaleValue)
                }
                var oIn = att
                if let gh = gates?.heads[l] {
                    // Training keeps the ungated output for the gate's gradient.
                    if training {
                        if acts.attGated == nil { acts.attGated = Tensor(shape: att.shape) }; oIn = acts.attGated!
                    }
                    gateForward(out: oIn.data, inp: att.data, gate: gh.data, rows: N, groups: H, groupSize: D)
                }
                observer?.headOutputs(layer: l, att: oIn.data, rows: N)
                if withoutOutput { continue }
                addSublayerOutput(s, a.o, bias: a.biases[.o], postNorm: a.postNorm, inp: oIn.data, sub: sub, rows: N)
            } else if s % 2 == 1, let m = layer.mlp, let sub = acts.mlp, let gate = acts.gate, let up = acts.up,
                let act = acts.act
            {
                let F = block.intermediateSize
                sub.resid?.data.update(from: x.data, count: N * C)
                model.applyNorm(s, out: sub.normed.data, inp: x.data, rows: N, rstd: sub.rstd?.data)
                observer?.normed(s, n: sub.normed.data, rows: N)
                MatrixProduct.withBF16Copy(of: sub.normed.data, count: N * C) {
                    for (kind, out) in [(LinearKind.gate, gate), (.up, up)] {
                        m[kind].forward(out: out.data, inp: sub.normed.data, rows: N)
                        if let bias = m.biases[kind] {
                            biasForward(out: out.data, bias: bias.data, rows: N, columns: F)
                        }
                    }
                }
                switch c.activation {
                case .silu: swigluForward(out: act.data, gate: gate.data, up: up.data, count: N * F)
                case .geluTanh: geluTanhGatedForward(out: act.data, gate: gate.data, up: up.data, count: N * F)
                }
                var dIn = act
                if let gf = gates?.neurons[l] {
                    if training {
                        if acts.actGated == nil { acts.actGated = Tensor(shape: act.shape) }; dIn = acts.actGated!
                    }
                    gateForward(out: dIn.data, inp: act.data, gate: gf.data, rows: N, groups: F, groupSize: 1)
                }
                observer?.mlpActivation(layer: l, act: dIn.data, rows: N)
                if withoutOutput { continue }
                addSublayerOutput(
                    s, m.down, bias: m.biases[.down], postNorm: m.postNorm, inp: dIn.data, sub: sub, rows: N)
            }
            if s % 2 == 1 { captures[l]?.data.update(from: x.data, count: N * C) }
        }
    }

    /// The per-channel multiplier of sublayer s's output (channel gates times its sublayer gate), or nil.
    func outputScale(_ s: Int) -> [Float]? {
        let z = gates?.channels, g = gates?.sublayers
        guard z != nil || g != nil else { return nil }
        let C = model.config.hiddenSize, gs = g.map { $0[s] } ?? 1
        return (0..<C).map { c in (z.map { $0[c] } ?? 1) * gs }
    }

    /// x += scale ⊙ post(inp · Wᵀ + b): the residual add folded into the GEMM (beta = 1) when ungated and
    /// without a post-sublayer norm (`postNorm`; training keeps its input in `sub.raw` and rstd in `sub.postRstd`).
    func addSublayerOutput(_ s: Int, _ w: LinearWeight, bias: Tensor?, postNorm: Tensor?, inp: UnsafePointer<Float>,
                           sub: SublayerActivations, rows N: Int) {
        let C = model.config.hiddenSize
        let scale = outputScale(s)
        guard scale != nil || postNorm != nil else {
            w.forward(out: x.data, inp: inp, rows: N, beta: 1)
            if let bias { biasForward(out: x.data, bias: bias.data, rows: N, columns: C) }
            return
        }
        if sub.out == nil || sub.out!.count < N * C { sub.out = Tensor(shape: [rows, C]) }
        let out = sub.out!
        if let postNorm, let raw = sub.raw {
            w.forward(out: raw.data, inp: inp, rows: N)
            if let bias { biasForward(out: raw.data, bias: bias.data, rows: N, columns: C) }
            model.normForward(
                out: out.data, inp: raw.data, weight: postNorm.data, rows: N, channels: C, rstd: sub.postRstd?.data)
        } else {
            w.forward(out: out.data, inp: inp, rows: N)
            if let bias { biasForward(out: out.data, bias: bias.data, rows: N, columns: C) }
        }
        if let scale {
            scale.withUnsafeBufferPointer {
                gateForward(
                    out: x.data, inp: out.data, gate: $0.baseAddress!, rows: N, groups: C, groupSize: 1,
                    accumulate: true)
            }
        } else {
            residualAdd(x.data, out.data, count: N * C)
        }
    }

    /// h = rmsnorm(x) with the final norm, into `hidden`.
    @discardableResult
    public func finalNorm(rows N: Int, observer: ForwardObserver? = nil) -> UnsafePointer<Float> {
        observer?.sublayerInput(2 * model.layers.count, x: x.data, rows: N)
        model.applyNorm(
            2 * model.layers.count, out: hidden.data, inp: x.data, rows: N, rstd: training ? rstdFinal.data : nil)
        observer?.normed(2 * model.layers.count, n: hidden.data, rows: N)
        return UnsafePointer(hidden.data)
    }

    /// logits (T, V) = h · lm_headᵀ for T rows of final-normed states.
    public func head(_ h: UnsafePointer<Float>, rows T: Int, into out: UnsafeMutablePointer<Float>) {
        model.lmHead.forward(out: out, inp: h, rows: T)
    }

    /// Full logits (T, V) for one window of `ids`.
    public func logits(_ ids: [Int32]) -> Tensor {
        let T = ids.count
        let out = Tensor(shape: [T, model.config.vocabSize])
        head(forward(ids), rows: T, into: out.data)
        return out
    }
}

extension DecoderModel {
    /// n (rows, C) = the norm in front of sublayer s (s = 2·layer attention, 2·layer + 1 MLP, 2L the final norm)
    /// applied to x (rows, C), as the spec defines it (`normKind`, eps); rstd (rows) is written when given. The
    /// one place outside the forward that needs a sublayer's input (layer-wise calibration) calls this too.
    public func applyNorm(_ s: Int, out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, rows N: Int,
                          rstd: UnsafeMutablePointer<Float>? = nil) {
        let c = config
        let weight: Tensor
        if s == 2 * layers.count {
            weight = norm
        } else {
            guard let w = s % 2 == 0 ? layers[s / 2].attention?.norm : layers[s / 2].mlp?.norm else {
                preconditionFailure("sublayer \(s) is absent")
            }
            weight = w
        }
        normForward(out: out, inp: inp, weight: weight.data, rows: N, channels: c.hiddenSize, rstd: rstd)
    }

    /// out (rows, channels) = the spec's norm of inp with `weight` (channels); in place allowed. Every norm of the
    /// decoder (sublayer, final, per-head q/k) goes through this and `normBackward`: one `switch` on `normKind`.
    public func normForward(
        out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>, rows: Int,
        channels: Int, rstd: UnsafeMutablePointer<Float>? = nil
    ) {
        let eps = Float(config.rmsNormEps)
        switch config.normKind {
        case .rms, .rmsUnitOffset:
            rmsnormForward(out: out, inp: inp, weight: weight, eps: eps, rows: rows, channels: channels, rstd: rstd,
                           offset: config.normKind.weightOffset)
        }
    }

    /// dinp += ∂L/∂inp and dweight += ∂L/∂weight (nil: frozen) of `normForward`, from its input and saved rstd.
    public func normBackward(
        dinp: UnsafeMutablePointer<Float>, dweight: UnsafeMutablePointer<Float>?, dout: UnsafePointer<Float>,
        inp: UnsafePointer<Float>, weight: UnsafePointer<Float>, rstd: UnsafePointer<Float>, rows: Int, channels: Int
    ) {
        switch config.normKind {
        case .rms, .rmsUnitOffset:
            rmsnormBackward(
                dinp: dinp, dweight: dweight, dout: dout, inp: inp, weight: weight, rstd: rstd, rows: rows,
                channels: channels,
                offset: config.normKind.weightOffset)
        }
    }

    /// Reference of `normForward` (Double statistics).
    public func normForwardReference(
        out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>, rows: Int,
        channels: Int
    ) {
        let eps = Float(config.rmsNormEps)
        switch config.normKind {
        case .rms, .rmsUnitOffset:
            rmsnormForwardReference(out: out, inp: inp, weight: weight, eps: eps, rows: rows, channels: channels,
                                    offset: config.normKind.weightOffset)
        }
    }
}
