import TensorCore

/// Structural edits that build a new, smaller model (tensors copied; the input model is left untouched).
extension DecoderModel {
    /// What width pruning keeps: indices into the original dimensions, each list ascending.
    public struct WidthSelection: Equatable, Sendable {
        /// Hidden (embedding) channels kept, shared by every layer.
        public var channels: [Int]
        /// Per layer, the query heads kept, listed KV group by KV group (the same number in every group, so
        /// kept head j belongs to group j / (kept per group)).
        public var heads: [[Int]]
        /// Per layer, the MLP neurons kept (rows of gate/up, columns of down).
        public var neurons: [[Int]]

        public init(channels: [Int], heads: [[Int]], neurons: [[Int]]) {
            self.channels = channels; self.heads = heads; self.neurons = neurons
        }
    }

    /// The model restricted to the selected channels, heads and neurons. Every layer must have both
    /// sublayers and keep the same numbers of heads and neurons, so the result is homogeneous (same family).
    /// Every weight must be dense (a stage contract: width pruning accepts dense models only).
    ///
    /// Biases keep the rows their projection keeps; per-head q/k norms (D) are kept whole.
    ///
    /// Removing hidden channels changes RMSNorm's mean of squares from a mean over C to one over C' channels.
    /// Each norm weight is scaled by sqrt(C/C') and rms_norm_eps by C/C', which makes the result compute
    /// exactly what the original computes with the removed channels zeroed:
    ///   x·w·sqrt(C/C') / sqrt(Σx²/C' + eps·C/C') = x·w / sqrt(Σx²/C + eps).
    public func pruningWidth(_ sel: WidthSelection) throws -> DecoderModel {
        let c = config, C = c.hiddenSize, D = c.headDim, L = layers.count
        guard sel.heads.count == L, sel.neurons.count == L else {
            throw ConfigError("width selection lists \(sel.heads.count) head and \(sel.neurons.count) neuron sets for \(L) layers")
        }
        func checkIndices(_ idx: [Int], below n: Int, _ what: String) throws {
            guard !idx.isEmpty else { throw ConfigError("\(what): nothing kept") }
            guard zip(idx, idx.dropFirst()).allSatisfy({ $0 < $1 }), idx.first! >= 0, idx.last! < n else {
                throw ConfigError("\(what): indices must be ascending within 0..<\(n)")
            }
        }
        try checkIndices(sel.channels, below: C, "hidden channels")
        let Cn = sel.channels.count, H2 = sel.heads[0].count, F2 = sel.neurons[0].count
        for (l, b) in c.blocks.enumerated() {
            guard b.attention && b.mlp else { throw ConfigError("layer \(l) lacks a sublayer; width pruning needs full layers") }
            let H = b.numAttentionHeads, G = b.numKeyValueHeads
            guard sel.heads[l].count == H2, sel.neurons[l].count == F2 else {
                throw ConfigError("layer \(l): every layer must keep \(H2) heads and \(F2) neurons")
            }
            try checkIndices(sel.neurons[l], below: b.intermediateSize, "layer \(l) neurons")
            guard H2 % G == 0 else { throw ConfigError("layer \(l): \(H2) heads kept is not a multiple of \(G) KV groups") }
            let perGroup = H2 / G, groupSize = H / G
            for (j, h) in sel.heads[l].enumerated() {
                guard (0..<H).contains(h), h / groupSize == j / perGroup else {
                    throw ConfigError("layer \(l): kept head \(h) at position \(j) is not in KV group \(j / perGroup)")
                }
            }
        }

        var nc = c
        nc.hiddenSize = Cn
        nc.numAttentionHeads = H2
        nc.intermediateSize = F2
        nc.headDim = D
        nc.rmsNormEps = c.rmsNormEps * Double(C) / Double(Cn)
        nc.blocks = c.blocks.map {
            BlockConfig(numAttentionHeads: H2, numKeyValueHeads: $0.numKeyValueHeads, intermediateSize: F2, layerType: $0.layerType)
        }
        let scale = (Float(C) / Float(Cn)).squareRoot()

        guard weightKinds == [.dense] else {
            throw ConfigError("width pruning needs dense weights; this model holds \(weightKinds.sorted().map(\.rawValue).joined(separator: ", "))")
        }
        /// rows × columns gather from a (R, K) matrix.
        func gather(_ w: LinearWeight, rows: [Int]?, cols: [Int]?) -> Tensor {
            let t = w.denseView ?? w.dequantized()
            let K = t.shape[1]
            let r = rows ?? Array(0..<t.shape[0]), k = cols ?? Array(0..<K)
            let out = Tensor(shape: [r.count, k.count])
            for (i, src) in r.enumerated() {
                let s = t.data + src * K, d = out.data + i * k.count
                for (j, col) in k.enumerated() { d[j] = s[col] }
            }
            return out
        }
        func scaledNorm(_ t: Tensor) -> Tensor {
            Tensor(shape: [Cn], values: sel.channels.map { t[$0] * scale })
        }
        func headRows(_ heads: [Int]) -> [Int] { heads.flatMap { h in (h * D)..<((h + 1) * D) } }

        func rowsOf(_ t: Tensor, _ idx: [Int]?) -> Tensor { idx.map { i in Tensor(shape: [i.count], values: i.map { t[$0] }) } ?? t.copy() }
        var w: [WeightID: ModelWeight] = [.embedTokens: .dense(gather(embedTokens, rows: nil, cols: sel.channels)),
                                          .finalNorm: .vector(scaledNorm(self.norm))]
        if let h = untiedLMHead { w[.lmHead] = .dense(gather(h, rows: nil, cols: sel.channels)) }
        for (l, layer) in layers.enumerated() {
            let a = layer.attention!, m = layer.mlp!
            let qRows = headRows(sel.heads[l])
            // Rows and columns each projection keeps; its bias keeps the same rows.
            let keep: [(LinearKind, LinearWeight, [Int]?, [Int]?, Tensor?)] = [
                (.q, a.q, qRows, sel.channels, a.biases[.q]), (.k, a.k, nil, sel.channels, a.biases[.k]),
                (.v, a.v, nil, sel.channels, a.biases[.v]), (.o, a.o, sel.channels, qRows, a.biases[.o]),
                (.gate, m.gate, sel.neurons[l], sel.channels, m.biases[.gate]), (.up, m.up, sel.neurons[l], sel.channels, m.biases[.up]),
                (.down, m.down, sel.channels, sel.neurons[l], m.biases[.down]),
            ]
            for (kind, weight, rows, cols, bias) in keep {
                let id = LinearID(layer: l, kind: kind)
                w[.linear(id)] = .dense(gather(weight, rows: rows, cols: cols))
                if let bias { w[.bias(id)] = .vector(rowsOf(bias, rows)) }
            }
            w[.norm(layer: l, .attentionIn)] = .vector(scaledNorm(a.norm))
            w[.norm(layer: l, .mlpIn)] = .vector(scaledNorm(m.norm))
            // q/k norms act on each head's D channels, which width pruning keeps whole.
            if let qn = a.qNorm, let kn = a.kNorm { w[.norm(layer: l, .q)] = .vector(qn.copy()); w[.norm(layer: l, .k)] = .vector(kn.copy()) }
        }
        return try DecoderModel(config: nc, weights: w)
    }

    /// The model without the given sublayers (s = 2·layer for attention, 2·layer + 1 for the MLP). A removed
    /// sublayer's norm and projections are gone and its block config records it, so it is never computed.
    /// Layers left with neither sublayer are dropped and the rest renumbered when `dropEmptyLayers`.
    public func removingSublayers(_ remove: Set<Int>, dropEmptyLayers: Bool = true) throws -> DecoderModel {
        let L = layers.count
        if let bad = remove.first(where: { !(0..<(2 * L)).contains($0) }) {
            throw ConfigError("sublayer \(bad) outside 0..<\(2 * L)")
        }
        var c = config
        for s in remove {
            if s % 2 == 0 { c.blocks[s / 2].attention = false } else { c.blocks[s / 2].mlp = false }
        }
        let keep = (0..<L).filter { !dropEmptyLayers || c.blocks[$0].attention || c.blocks[$0].mlp }
        guard !keep.isEmpty else { throw ConfigError("cannot remove every sublayer") }
        c.blocks = keep.map { c.blocks[$0] }
        c.numHiddenLayers = keep.count
        // Kept layers, renumbered; each kept weight copied in its own representation.
        let newLayers: [DecoderLayer] = keep.map { old in
            let l = layers[old]
            return DecoderLayer(attention: remove.contains(2 * old) ? nil : l.attention?.copy(),
                                mlp: remove.contains(2 * old + 1) ? nil : l.mlp?.copy())
        }
        return try DecoderModel(config: c, embedTokens: embedTokens.copy(), layers: newLayers, norm: norm.copy(), lmHead: untiedLMHead?.copy())
    }

    /// Parameters a configuration holds (a tied head counted once).
    public static func parameterCount(_ c: ModelConfig) -> Int {
        weightSpecs(c).reduce(0) { $0 + $1.shape.reduce(1, *) }
    }
}
