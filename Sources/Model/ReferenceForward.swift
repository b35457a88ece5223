import TensorCore

extension DecoderModel {
    /// Logits (T, V) computed with the plain reference version of every op and every weight representation
    /// (`LinearWeight.forwardReference`), with the gates applied as `TransformerDecoder` applies them: the oracle the
    /// fast forward is tested against (slow; for tests).
    public func referenceLogits(_ ids: [Int32], gates: Gates? = nil) -> Tensor {
        let c = config, T = ids.count, C = c.hiddenSize, D = c.headDim
        let x = Tensor(shape: [T, C]), n = Tensor(shape: [T, C]), tmp = Tensor(shape: [T, C])
        let table = embedTokens.dequantized()
        ids.withUnsafeBufferPointer {
            embeddingForwardReference(out: x.data, ids: $0.baseAddress!, table: table.data, rows: T, channels: C)
        }
        let es = Float(c.embeddingScale)
        for i in 0..<(T * C) { x[i] *= es }
        if let z = gates?.channels {
            gateForwardReference(out: x.data, inp: x.data, gate: z.data, rows: T, groups: C, groupSize: 1)
        }
        /// x += z ⊙ g_s ⊙ post(tmp)
        func residual(_ s: Int, postNorm: Tensor?) {
            if let postNorm {
                normForwardReference(out: tmp.data, inp: tmp.data, weight: postNorm.data, rows: T, channels: C)
            }
            let gs = gates?.sublayers.map { $0[s] } ?? 1
            for t in 0..<T {
                for ch in 0..<C {
                    let scale = Double(gates?.channels.map { $0[ch] } ?? 1) * Double(gs)
                    x[t * C + ch] = Float(Double(x[t * C + ch]) + scale * Double(tmp[t * C + ch]))
                }
            }
        }
        for (l, (layer, block)) in zip(layers, c.blocks).enumerated() {
            if let a = layer.attention {
                let H = block.numAttentionHeads, G = block.numKeyValueHeads
                let q = Tensor(shape: [T, H * D]), k = Tensor(shape: [T, G * D]), v = Tensor(shape: [T, G * D]),
                    att = Tensor(shape: [T, H * D])
                normForwardReference(out: n.data, inp: x.data, weight: a.norm.data, rows: T, channels: C)
                for (kind, out, width) in [(LinearKind.q, q, H * D), (.k, k, G * D), (.v, v, G * D)] {
                    a[kind].forwardReference(out: out.data, inp: n.data, rows: T)
                    if let b = a.biases[kind] {
                        biasForwardReference(out: out.data, bias: b.data, rows: T, columns: width)
                    }
                }
                if let qn = a.qNorm, let kn = a.kNorm {
                    normForwardReference(out: q.data, inp: q.data, weight: qn.data, rows: T * H, channels: D)
                    normForwardReference(out: k.data, inp: k.data, weight: kn.data, rows: T * G, channels: D)
                }
                rotaryForwardReference(q.data, rows: T, heads: H, headDim: D, theta: c.ropeTheta(layer: l))
                rotaryForwardReference(k.data, rows: T, heads: G, headDim: D, theta: c.ropeTheta(layer: l))
                attentionForwardReference(
                    out: att.data, q: q.data, k: k.data, v: v.data, rows: T, heads: H, kvHeads: G, headDim: D,
                    window: c.attentionWindow(layer: l), scale: c.attentionScaleValue)
                if let gh = gates?.heads[l] {
                    gateForwardReference(out: att.data, inp: att.data, gate: gh.data, rows: T, groups: H, groupSize: D)
                }
                a.o.forwardReference(out: tmp.data, inp: att.data, rows: T)
                if let b = a.biases[.o] { biasForwardReference(out: tmp.data, bias: b.data, rows: T, columns: C) }
                residual(2 * l, postNorm: a.postNorm)
            }
            if let m = layer.mlp {
                let F = block.intermediateSize
                let g = Tensor(shape: [T, F]), u = Tensor(shape: [T, F])
                normForwardReference(out: n.data, inp: x.data, weight: m.norm.data, rows: T, channels: C)
                for (kind, out) in [(LinearKind.gate, g), (.up, u)] {
                    m[kind].forwardReference(out: out.data, inp: n.data, rows: T)
                    if let b = m.biases[kind] { biasForwardReference(out: out.data, bias: b.data, rows: T, columns: F) }
                }
                switch c.activation {
                case .silu: swigluForwardReference(out: g.data, gate: g.data, up: u.data, count: T * F)
                case .geluTanh: geluTanhGatedForwardReference(out: g.data, gate: g.data, up: u.data, count: T * F)
                }
                if let gf = gates?.neurons[l] {
                    gateForwardReference(out: g.data, inp: g.data, gate: gf.data, rows: T, groups: F, groupSize: 1)
                }
                m.down.forwardReference(out: tmp.data, inp: g.data, rows: T)
                if let b = m.biases[.down] { biasForwardReference(out: tmp.data, bias: b.data, rows: T, columns: C) }
                residual(2 * l + 1, postNorm: m.postNorm)
            }
        }
        normForwardReference(out: n.data, inp: x.data, weight: norm.data, rows: T, channels: C)
        let out = Tensor(shape: [T, c.vocabSize])
        lmHead.forwardReference(out: out.data, inp: n.data, rows: T)
        return out
    }
}
