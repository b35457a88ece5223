import TensorCore

/// Gradient buffers for a model's weights, by typed id, parallel to each weight's `trainableTensors`. A weight
/// without an entry is frozen: no gradient is computed for it, which also skips its weight-gradient GEMM.
public final class ModelGradients {
    public let slots: [WeightID: [Tensor]]
    /// Where the LM head's gradient goes: the embedding's slot when tied.
    public let lmHeadID: WeightID

    /// Every gradient under its parameter's name (`ModelWeight.parameterNames`), in canonical order.
    public let named: [(name: String, tensor: Tensor)]

    public init(model: DecoderModel, frozen: Set<WeightID> = []) {
        var s: [WeightID: [Tensor]] = [:]
        var named: [(String, Tensor)] = []
        for (id, w) in model.weights where !frozen.contains(id) {
            let ts = w.trainableTensors
            if !ts.isEmpty {
                s[id] = ts.map { Tensor(shape: $0.shape) }
                named += zip(w.parameterNames(id, config: model.config), s[id]!).map { ($0, $1) }
            }
        }
        slots = s
        self.named = named
        lmHeadID = model.config.tieWordEmbeddings ? .embedTokens : .lmHead
    }

    /// One pointer per trainable tensor of `id`, or [] when frozen.
    public func pointers(_ id: WeightID) -> [UnsafeMutablePointer<Float>?] { slots[id]?.map { $0.data } ?? [] }
    /// The gradient of a norm vector, nil when frozen.
    public func vector(_ id: WeightID) -> UnsafeMutablePointer<Float>? { slots[id]?.first?.data }

    public func zero() { for (_, ts) in slots { for t in ts { t.zero() } } }
}

extension TransformerDecoder {
    /// Backpropagates dL/dhidden (rows, C), plus any gradients placed in `captureGrads`, through the last
    /// `forward`, accumulating into `grads` (and, for the gates set, into `gateGrads`). Capture gradients are
    /// consumed (zeroed). Training mode only.
    public func backward(
        dHidden: UnsafePointer<Float>, grads: ModelGradients, gateGrads: Gates? = nil, observer: BackwardObserver? = nil
    ) {
        guard let b = back else { preconditionFailure("backward needs a decoder made with training: true") }
        let c = model.config, N = rows, C = c.hiddenSize
        let dx = b.dx
        dx.zero()
        model.normBackward(
            dinp: dx.data, dweight: grads.vector(.finalNorm), dout: dHidden, inp: x.data, weight: model.norm.data,
            rstd: rstdFinal.data, rows: N, channels: C)
        for l in stride(from: model.layers.count - 1, through: 0, by: -1) {
            let acts = store[l]
            if let g = captureGrads[l] { residualAdd(dx.data, g.data, count: N * C); g.zero() }
            mlpSublayerBackward(layer: l, b, grads: grads, gateGrads: gateGrads, observer: observer)
            attentionSublayerBackward(layer: l, b, grads: grads, gateGrads: gateGrads, observer: observer)
            if let observer, let input = acts.attn?.resid ?? acts.mlp?.resid {
                observer.layerInput(l, x: input.data, dx: dx.data, rows: N, channels: C)
            }
        }
        inputEmbeddingBackward(b, grads: grads, gateGrads: gateGrads)
    }

    /// Back through layer l's MLP sublayer, if it has one: from dL/d(residual stream) in `b.dx` to the gradients
    /// of its weights, and dL/d(its input) accumulated into `b.dx`.
    private func mlpSublayerBackward(
        layer l: Int, _ b: BackwardScratch, grads: ModelGradients, gateGrads: Gates?, observer: BackwardObserver?
    ) {
        let c = model.config, N = rows, C = c.hiddenSize, dx = b.dx
        let layer = model.layers[l], block = c.blocks[l], acts = store[l]
        func lin(_ k: LinearKind) -> LinearID { LinearID(layer: l, kind: k) }
        if let m = layer.mlp, let sub = acts.mlp, let resid = sub.resid, let rstd = sub.rstd, let gate = acts.gate,
            let up = acts.up,
            let act = acts.act
        {
            let F = block.intermediateSize
            let dOut = postNormBackward(
                sublayerOutputBackward(2 * l + 1, sub: sub, gateGrads: gateGrads), weight: m.postNorm, sub: sub,
                dweight: grads.vector(.norm(layer: l, .mlpOut)))
            if m.biases[.down] != nil, let db = grads.vector(.bias(lin(.down))) {
                biasBackward(dbias: db, dout: dOut, rows: N, columns: C)
            }
            let dIn = gates?.neurons[l] != nil ? acts.actGated! : act
            b.dact.data.update(repeating: 0, count: N * F)
            m.down.backward(
                dinp: b.dact.data, grads: grads.pointers(.linear(lin(.down))), dout: dOut, inp: dIn.data, rows: N)
            observer?.linearInput(lin(.down), x: dIn.data, dx: b.dact.data, rows: N, features: F)
            var dAct = b.dact
            if let gf = gates?.neurons[l] {
                b.dup.data.update(repeating: 0, count: N * F)  // reused: the ungated activation's gradient
                gateBackward(
                    dinp: b.dup.data, dgate: gateGrads?.neurons[l]?.data, dout: b.dact.data, inp: act.data,
                    gate: gf.data,
                    rows: N, groups: F, groupSize: 1)
                b.dact.data.update(from: b.dup.data, count: N * F)
                dAct = b.dact
            }
            b.dgate.data.update(repeating: 0, count: N * F)
            b.dup.data.update(repeating: 0, count: N * F)
            switch c.activation {
            case .silu:
                swigluBackward(
                    dgate: b.dgate.data, dup: b.dup.data, dout: dAct.data, gate: gate.data, up: up.data,
                    count: N * F)
            case .geluTanh:
                geluTanhGatedBackward(
                    dgate: b.dgate.data, dup: b.dup.data, dout: dAct.data, gate: gate.data, up: up.data,
                    count: N * F)
            }
            for (kind, d) in [(LinearKind.gate, b.dgate), (.up, b.dup)] where m.biases[kind] != nil {
                if let db = grads.vector(.bias(lin(kind))) {
                    biasBackward(dbias: db, dout: d.data, rows: N, columns: F)
                }
            }
            b.dn.zero()
            MatrixProduct.withBF16Copy(of: sub.normed.data, count: N * C) {
                m.gate.backward(
                    dinp: b.dn.data, grads: grads.pointers(.linear(lin(.gate))), dout: b.dgate.data,
                    inp: sub.normed.data, rows: N)
                m.up.backward(
                    dinp: b.dn.data, grads: grads.pointers(.linear(lin(.up))), dout: b.dup.data,
                    inp: sub.normed.data, rows: N)
            }
            for k in [LinearKind.gate, .up] {
                observer?.linearInput(lin(k), x: sub.normed.data, dx: b.dn.data, rows: N, features: C)
            }
            model.normBackward(
                dinp: dx.data, dweight: grads.vector(.norm(layer: l, .mlpIn)), dout: b.dn.data, inp: resid.data,
                weight: m.norm.data, rstd: rstd.data, rows: N, channels: C)
        }
    }

    /// Back through layer l's attention sublayer, if it has one: from dL/d(residual stream) in `b.dx` to the
    /// gradients of its weights and norms, and dL/d(its input) accumulated into `b.dx`.
    private func attentionSublayerBackward(
        layer l: Int, _ b: BackwardScratch, grads: ModelGradients, gateGrads: Gates?, observer: BackwardObserver?
    ) {
        let c = model.config, N = rows, C = c.hiddenSize, D = c.headDim, W = window, dx = b.dx
        let layer = model.layers[l], block = c.blocks[l], acts = store[l]
        func lin(_ k: LinearKind) -> LinearID { LinearID(layer: l, kind: k) }
        if let a = layer.attention, let sub = acts.attn, let resid = sub.resid, let rstd = sub.rstd, let q = acts.q,
            let k = acts.k,
            let v = acts.v, let att = acts.att
        {
            let H = block.numAttentionHeads, G = block.numKeyValueHeads
            let dOut = postNormBackward(
                sublayerOutputBackward(2 * l, sub: sub, gateGrads: gateGrads), weight: a.postNorm, sub: sub,
                dweight: grads.vector(.norm(layer: l, .attentionOut)))
            if a.biases[.o] != nil, let db = grads.vector(.bias(lin(.o))) {
                biasBackward(dbias: db, dout: dOut, rows: N, columns: C)
            }
            let oIn = gates?.heads[l] != nil ? acts.attGated! : att
            b.datt.data.update(repeating: 0, count: N * H * D)
            a.o.backward(
                dinp: b.datt.data, grads: grads.pointers(.linear(lin(.o))), dout: dOut, inp: oIn.data, rows: N)
            observer?.linearInput(lin(.o), x: oIn.data, dx: b.datt.data, rows: N, features: H * D)
            if let gh = gates?.heads[l] {
                b.dq.data.update(repeating: 0, count: N * H * D)  // reused: the ungated output's gradient
                gateBackward(
                    dinp: b.dq.data, dgate: gateGrads?.heads[l]?.data, dout: b.datt.data, inp: att.data,
                    gate: gh.data,
                    rows: N, groups: H, groupSize: D)
                b.datt.data.update(from: b.dq.data, count: N * H * D)
            }
            b.dq.data.update(repeating: 0, count: N * H * D)
            b.dk.data.update(repeating: 0, count: N * G * D)
            b.dv.data.update(repeating: 0, count: N * G * D)
            let table = rotaryTable(l), window = c.attentionWindow(layer: l)
            for r0 in stride(from: 0, to: N, by: W) {
                attentionBackward(
                    dq: b.dq.data + r0 * H * D, dk: b.dk.data + r0 * G * D, dv: b.dv.data + r0 * G * D,
                    dout: b.datt.data + r0 * H * D, q: q.data + r0 * H * D, k: k.data + r0 * G * D,
                    v: v.data + r0 * G * D,
                    rows: W, heads: H, kvHeads: G, headDim: D, scratch: b.attBack.data,
                    window: window, scale: c.attentionScaleValue)
                rotaryBackward(b.dq.data + r0 * H * D, rows: W, heads: H, table: table)
                rotaryBackward(b.dk.data + r0 * G * D, rows: W, heads: G, table: table)
            }
            if let qn = a.qNorm, let kn = a.kNorm, let dPre = b.dqkPre, let qPre = acts.qPre, let kPre = acts.kPre,
               let qRstd = acts.qRstd, let kRstd = acts.kRstd {
                // Back through the per-head norms: d(pre-norm) replaces d(q), d(k) in place.
                for (d, pre, rstd, w, site, heads) in [
                    (b.dq, qPre, qRstd, qn, NormSite.q, H), (b.dk, kPre, kRstd, kn, .k, G)
                ] {
                    dPre.data.update(repeating: 0, count: N * heads * D)
                    model.normBackward(
                        dinp: dPre.data, dweight: grads.vector(.norm(layer: l, site)), dout: d.data, inp: pre.data,
                        weight: w.data, rstd: rstd.data, rows: N * heads, channels: D)
                    d.data.update(from: dPre.data, count: N * heads * D)
                }
            }
            for (kind, d, width) in [(LinearKind.q, b.dq, H * D), (.k, b.dk, G * D), (.v, b.dv, G * D)]
            where a.biases[kind] != nil {
                if let db = grads.vector(.bias(lin(kind))) {
                    biasBackward(dbias: db, dout: d.data, rows: N, columns: width)
                }
            }
            b.dn.zero()
            MatrixProduct.withBF16Copy(of: sub.normed.data, count: N * C) {
                for (kind, w, d) in [(LinearKind.q, a.q, b.dq), (.k, a.k, b.dk), (.v, a.v, b.dv)] {
                    w.backward(
                        dinp: b.dn.data, grads: grads.pointers(.linear(lin(kind))), dout: d.data,
                        inp: sub.normed.data, rows: N)
                }
            }
            for kind in [LinearKind.q, .k, .v] {
                observer?.linearInput(lin(kind), x: sub.normed.data, dx: b.dn.data, rows: N, features: C)
            }
            model.normBackward(
                dinp: dx.data, dweight: grads.vector(.norm(layer: l, .attentionIn)), dout: b.dn.data,
                inp: resid.data,
                weight: a.norm.data, rstd: rstd.data, rows: N, channels: C)
        }
    }

    /// Back through the embedding: x = s · embed(ids) ⊙ z, into the channel gates' and the embedding table's
    /// gradients.
    private func inputEmbeddingBackward(_ b: BackwardScratch, grads: ModelGradients, gateGrads: Gates?) {
        let c = model.config, N = rows, C = c.hiddenSize, dx = b.dx
        // x = s · embed(ids) ⊙ z: dz += Σ_t dx ⊙ s · embed(ids), then dx ⊙= z, then dx ·= s.
        let table = model.embedTokens.denseView ?? model.embedTokens.dequantized()
        let es = Float(c.embeddingScale)
        if let z = gates?.channels {
            ids.withUnsafeBufferPointer {
                embeddingForward(out: b.dsub.data, ids: $0.baseAddress!, table: table.data, rows: N, channels: C)
            }
            if es != 1 { for i in 0..<(N * C) { b.dsub.data[i] *= es } }
            gateBackward(
                dinp: nil, dgate: gateGrads?.channels?.data, dout: dx.data, inp: b.dsub.data, gate: z.data, rows: N,
                groups: C, groupSize: 1)
            gateForward(out: dx.data, inp: dx.data, gate: z.data, rows: N, groups: C, groupSize: 1)
        }
        if es != 1 { for i in 0..<(N * C) { dx.data[i] *= es } }
        let dTable = grads.pointers(.embedTokens)
        if let dt = dTable.first, let dt {
            ids.withUnsafeBufferPointer {
                embeddingBackward(dtable: dt, dout: dx.data, ids: $0.baseAddress!, rows: N, channels: C)
            }
            switch model.embedTokens {
            case .dense, .quantized: break  // a quantized embedding has no trainable tensor, so no slot
            case .sparse(let s): s.mask.apply(to: dt)
            case .factorized: preconditionFailure("a factorized embedding cannot be trained")
            }
        }
    }

    /// Back through a post-sublayer norm (nil: none, `dOut` returned as is): the gradient of its input, in the
    /// scratch `dpost`, with its weight's gradient accumulated into `dweight` (nil: frozen).
    private func postNormBackward(_ dOut: UnsafePointer<Float>, weight: Tensor?, sub: SublayerActivations,
                                  dweight: UnsafeMutablePointer<Float>?) -> UnsafePointer<Float> {
        guard let weight, let b = back, let dpost = b.dpost, let raw = sub.raw, let rstd = sub.postRstd else {
            return dOut
        }
        let N = rows, C = model.config.hiddenSize
        dpost.data.update(repeating: 0, count: N * C)
        model.normBackward(
            dinp: dpost.data, dweight: dweight, dout: dOut, inp: raw.data, weight: weight.data, rstd: rstd.data,
            rows: N, channels: C)
        return UnsafePointer(dpost.data)
    }

    /// The gradient reaching sublayer s's output projection from dx: dx itself when ungated; otherwise
    /// dx ⊙ scale (in the backward scratch), with the channel and sublayer gates' gradients accumulated.
    private func sublayerOutputBackward(_ s: Int, sub: SublayerActivations, gateGrads: Gates?) -> UnsafePointer<Float> {
        guard let b = back, let scale = outputScale(s), let out = sub.out else { return UnsafePointer(back!.dx.data) }
        let N = rows, C = model.config.hiddenSize
        b.dsub.data.update(repeating: 0, count: N * C)
        var dScale = [Float](repeating: 0, count: C)
        scale.withUnsafeBufferPointer { sp in
            dScale.withUnsafeMutableBufferPointer { dp in
                gateBackward(
                    dinp: b.dsub.data, dgate: dp.baseAddress!, dout: b.dx.data, inp: out.data, gate: sp.baseAddress!,
                    rows: N, groups: C, groupSize: 1)
            }
        }
        // scale[c] = z[c] · g_s:  dz[c] += dscale[c] · g_s;  dg_s += Σ_c dscale[c] · z[c]
        let z = gates?.channels, g = gates?.sublayers
        if let dz = gateGrads?.channels { let gs = g.map { $0[s] } ?? 1; for ch in 0..<C { dz[ch] += dScale[ch] * gs } }
        if let dg = gateGrads?.sublayers {
            var acc: Float = 0
            for ch in 0..<C { acc += dScale[ch] * (z.map { $0[ch] } ?? 1) }
            dg[s] += acc
        }
        return UnsafePointer(b.dsub.data)
    }
}
