import TensorCore

/// How removing hidden channels (C → C') rescales what stays, so that the smaller model computes exactly (up to
/// float32 rounding) what the original computes with the removed channels zeroed where they enter the residual
/// stream (embedding columns, the rows of every sublayer's output projection and its bias), which makes every norm
/// over C channels see zeros there. With s = sqrt(C/C') and o the norm kind's weight offset (`NormKind.weightOffset`:
/// the norm is x/rms(x)·(w + o), o = 0 for Llama's x/rms·w, 1 for Gemma's x/rms·(1 + w)):
///   - eps' = eps·C/C' (model-wide) and w' + o = (w + o)·s for every norm over C channels, since for any input u
///     that is zero on the removed channels
///       u_j (w'_j + o) / sqrt(Σ_kept u²/C' + eps·C/C') = u_j (w_j + o) / sqrt(Σ_kept u²/C + eps):
///     the sublayer pre-norms and the final norm (u: the residual stream), and the post-sublayer norms (u: the
///     sublayer's output before its norm, zero on the removed channels when o_proj's / down_proj's rows are).
///     With o = 1 it is the (1 + w) that scales: w' = (1 + w)·s − 1, not w·s.
///   - Per-head q/k norms act over D channels, which stay, but read the same eps: q and k are multiplied by s
///     (the rows of q_proj and k_proj and their biases), and since
///       s·q / sqrt(Σ (s·q)²/D + s²·eps) = q / sqrt(Σ q²/D + eps)
///     their outputs are unchanged. Without q/k norms the projections are untouched.
///   - A family that derives the embedding multiplier from the width (Gemma: s_e = √hidden_size) gets the
///     multiplier s_e' its config is read back with, and the embedding table is multiplied by k = s_e / s_e', so
///     the residual stream is unchanged; with a tied head the final norm's (w + o) is also divided by k, so the
///     logits (h / k)·(k E)ᵀ are unchanged.
///   - Post-sublayer norms (Gemma) are the exception: the zeroed original above is a poor model of the original
///     itself, whose post-norm also divides by the energy of the removed channels of the sublayer's output y (the
///     residual stream drops them only after the norm), and the share of y's energy those channels carry varies
///     from sublayer to sublayer (19 % to 97 % kept for Gemma 3 270M at 640 → 512 channels). Given the mean
///     squares e_j of y over calibration tokens (`postNormFactor(energy:channels:)`), the post-norm's (w + o) is
///     multiplied by
///       ρ = sqrt((Σ_kept e/C' + eps·C/C') / (Σ_all e/C + eps))
///     instead of s, so the pruned post-norm divides by the RMS the original's had on average; then the result is
///     the zeroed original with that post-norm's (w + o) multiplied by ρ/s. (Gemma 3 270M, hidden 640 → 512 by
///     Minitron on 4 × 256 calibration tokens, no retraining, first 4,096 test tokens at window 512: PPL 726 with
///     s, 499 with 1, 174 with ρ; base 25.2.)
/// Passes that fold gates into the kept weights multiply a norm's (w + o) by the gate as well
/// (`norm(_:channels:times:)`).
public struct ChannelRemoval: Sendable {
    /// s = sqrt(C/C').
    public let normFactor: Float
    /// The norm kind's weight offset o.
    public let offset: Float
    /// Factor of q_proj's and k_proj's rows and biases: s with q/k norms, else 1.
    public let qkFactor: Float
    /// k = s_e / s_e': factor of the embedding table.
    public let embeddingFactor: Float
    /// The original's width C and eps.
    let channels: Int, eps: Double

    /// Sets the model-wide values of `nc`, the config `c` becomes when only `Cn` hidden channels stay: the width,
    /// eps·C/C', and the embedding multiplier its family reads back from the written config. Call it once the
    /// blocks are set.
    public static func adjust(_ nc: inout ModelConfig, from c: ModelConfig, keeping Cn: Int) {
        nc.hiddenSize = Cn
        nc.rmsNormEps = c.rmsNormEps * Double(c.hiddenSize) / Double(Cn)
        nc.embeddingScale = c.embeddingScale
        if let reread = try? ModelConfig(json: nc.json) { nc.embeddingScale = reread.embeddingScale }
    }

    /// The factors between a config and its pruned config (`adjust`).
    public init(from c: ModelConfig, to nc: ModelConfig) {
        normFactor = (Float(c.hiddenSize) / Float(nc.hiddenSize)).squareRoot()
        offset = c.normKind.weightOffset
        qkFactor = c.qkNorm ? normFactor : 1
        embeddingFactor = Float(c.embeddingScale / nc.embeddingScale)
        channels = c.hiddenSize
        eps = c.rmsNormEps
    }

    /// The factor of a post-sublayer norm's (w + o) when only `kept` channels stay: ρ (above) from the mean squares
    /// `energy` (C) of the norm's input over calibration tokens, or s without them.
    public func postNormFactor(energy: [Double]?, kept: [Int]) -> Float {
        guard let e = energy else { return normFactor }
        precondition(e.count == channels, "post-norm input statistics of \(e.count) channels for \(channels)")
        let C = Double(channels), Cn = Double(kept.count)
        let all = e.reduce(0, +) / C, part = kept.reduce(0.0) { $0 + e[$1] } / Cn
        return Float(((part + eps * C / Cn) / (all + eps)).squareRoot())
    }

    /// A norm over C channels restricted to `channels`: w' = (w + o)·s·times − o (times: one factor per kept channel,
    /// e.g. folded gates; nil: 1).
    public func norm(_ w: Tensor, channels: [Int], times: [Float]? = nil) -> Tensor {
        Tensor(
            shape: [channels.count],
            values: channels.enumerated().map { j, ch in (w[ch] + offset) * normFactor * (times?[j] ?? 1) - offset })
    }

    /// The final norm: as `norm`, and with a tied head its (w + o) divided by the embedding factor (and by
    /// `dividedBy`, a factor per kept channel folded into the tied table).
    public func finalNorm(_ w: Tensor, channels: [Int], tied: Bool, dividedBy: [Float]? = nil) -> Tensor {
        guard tied else { return norm(w, channels: channels) }
        return norm(
            w, channels: channels, times: channels.indices.map { 1 / (embeddingFactor * (dividedBy?[$0] ?? 1)) })
    }
}

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
    /// Biases keep the rows their projection keeps; per-head q/k norms (D) are kept whole; post-sublayer norms
    /// keep the kept channels; every layer keeps its type (full / sliding).
    ///
    /// It computes exactly (up to float32 rounding) what this model computes with the removed channels zeroed
    /// where they enter the residual stream (embedding columns, o_proj / down_proj rows and their biases' entries)
    /// and the removed heads and neurons zeroed where they leave their sublayer (o_proj / down_proj columns):
    /// `ChannelRemoval` has the rescaling that makes every norm over C channels agree. With post-sublayer norms,
    /// `postNormInputs` (per sublayer s = 2·layer (+ 1), the mean squares of its post-norm's input per channel over
    /// calibration tokens: `PostNormInputs` in Passes) sets each post-norm's factor ρ instead (`ChannelRemoval`).
    public func pruningWidth(_ sel: WidthSelection, postNormInputs: [[Double]]? = nil) throws -> DecoderModel {
        let c = config, C = c.hiddenSize, D = c.headDim, L = layers.count
        guard sel.heads.count == L, sel.neurons.count == L else {
            throw ConfigError(
                "width selection lists \(sel.heads.count) head and \(sel.neurons.count) neuron sets for \(L) layers")
        }
        if let p = postNormInputs, p.count != 2 * L || p.contains(where: { $0.count != C }) {
            throw ConfigError("post-norm input statistics must list \(C) channels for each of \(2 * L) sublayers")
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
            guard b.attention && b.mlp else {
                throw ConfigError("layer \(l) lacks a sublayer; width pruning needs full layers")
            }
            let H = b.numAttentionHeads, G = b.numKeyValueHeads
            guard sel.heads[l].count == H2, sel.neurons[l].count == F2 else {
                throw ConfigError("layer \(l): every layer must keep \(H2) heads and \(F2) neurons")
            }
            try checkIndices(sel.neurons[l], below: b.intermediateSize, "layer \(l) neurons")
            guard H2 % G == 0 else {
                throw ConfigError("layer \(l): \(H2) heads kept is not a multiple of \(G) KV groups")
            }
            let perGroup = H2 / G, groupSize = H / G
            for (j, h) in sel.heads[l].enumerated() {
                guard (0..<H).contains(h), h / groupSize == j / perGroup else {
                    throw ConfigError("layer \(l): kept head \(h) at position \(j) is not in KV group \(j / perGroup)")
                }
            }
        }

        var nc = c
        nc.numAttentionHeads = H2
        nc.intermediateSize = F2
        nc.headDim = D
        nc.blocks = c.blocks.map {
            BlockConfig(
                numAttentionHeads: H2, numKeyValueHeads: $0.numKeyValueHeads, intermediateSize: F2,
                layerType: $0.layerType)
        }
        ChannelRemoval.adjust(&nc, from: c, keeping: Cn)
        let r = ChannelRemoval(from: c, to: nc)

        guard weightKinds == [.dense] else {
            throw ConfigError(
                "width pruning needs dense weights; this model holds "
                    + "\(weightKinds.sorted().map(\.rawValue).joined(separator: ", "))")
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
        func headRows(_ heads: [Int]) -> [Int] { heads.flatMap { h in (h * D)..<((h + 1) * D) } }

        func rowsOf(_ t: Tensor, _ idx: [Int]?, times f: Float = 1) -> Tensor {
            Tensor(shape: [idx?.count ?? t.count], values: (idx ?? Array(0..<t.count)).map { t[$0] * f })
        }
        func scaled(_ t: Tensor, _ f: Float) -> Tensor {
            if f != 1 { for i in 0..<t.count { t[i] *= f } }
            return t
        }
        var w: [WeightID: ModelWeight] = [
            .embedTokens: .dense(scaled(gather(embedTokens, rows: nil, cols: sel.channels), r.embeddingFactor)),
            .finalNorm: .vector(r.finalNorm(self.norm, channels: sel.channels, tied: c.tieWordEmbeddings)),
        ]
        if let h = untiedLMHead { w[.lmHead] = .dense(gather(h, rows: nil, cols: sel.channels)) }
        for (l, layer) in layers.enumerated() {
            let a = layer.attention!, m = layer.mlp!
            let qRows = headRows(sel.heads[l])
            // Rows and columns each projection keeps and the factor of its rows; its bias keeps the same rows.
            let keep: [(LinearKind, LinearWeight, [Int]?, [Int]?, Float, Tensor?)] = [
                (.q, a.q, qRows, sel.channels, r.qkFactor, a.biases[.q]),
                (.k, a.k, nil, sel.channels, r.qkFactor, a.biases[.k]),
                (.v, a.v, nil, sel.channels, 1, a.biases[.v]), (.o, a.o, sel.channels, qRows, 1, a.biases[.o]),
                (.gate, m.gate, sel.neurons[l], sel.channels, 1, m.biases[.gate]),
                (.up, m.up, sel.neurons[l], sel.channels, 1, m.biases[.up]),
                (.down, m.down, sel.channels, sel.neurons[l], 1, m.biases[.down]),
            ]
            for (kind, weight, rows, cols, factor, bias) in keep {
                let id = LinearID(layer: l, kind: kind)
                w[.linear(id)] = .dense(scaled(gather(weight, rows: rows, cols: cols), factor))
                if let bias { w[.bias(id)] = .vector(rowsOf(bias, rows, times: factor)) }
            }
            w[.norm(layer: l, .attentionIn)] = .vector(r.norm(a.norm, channels: sel.channels))
            w[.norm(layer: l, .mlpIn)] = .vector(r.norm(m.norm, channels: sel.channels))
            // Post-norms: (w + o)·ρ = (w + o)·s·(ρ/s).
            for (pn, site, sub) in [(a.postNorm, NormSite.attentionOut, 2 * l), (m.postNorm, .mlpOut, 2 * l + 1)] {
                guard let pn else { continue }
                let f = r.postNormFactor(energy: postNormInputs?[sub], kept: sel.channels) / r.normFactor
                w[.norm(layer: l, site)] = .vector(
                    r.norm(pn, channels: sel.channels, times: [Float](repeating: f, count: Cn)))
            }
            // q/k norms act on each head's D channels, which width pruning keeps whole.
            if let qn = a.qNorm, let kn = a.kNorm {
                w[.norm(layer: l, .q)] = .vector(qn.copy()); w[.norm(layer: l, .k)] = .vector(kn.copy())
            }
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
        return try DecoderModel(
            config: c, embedTokens: embedTokens.copy(), layers: newLayers, norm: norm.copy(),
            lmHead: untiedLMHead?.copy())
    }

    /// Parameters a configuration holds (a tied head counted once).
    public static func parameterCount(_ c: ModelConfig) -> Int {
        weightSpecs(c).reduce(0) { $0 + $1.shape.reduce(1, *) }
    }
}
