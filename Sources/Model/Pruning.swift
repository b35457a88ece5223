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
        /// Per layer, the query heads kept, ascending and so listed KV group by KV group (the same number in every
        /// group, so kept head j belongs to group j / (kept per group)).
        public var heads: [[Int]]
        /// Per layer, the MLP neurons kept (rows of gate/up, columns of down).
        public var neurons: [[Int]]

        public init(channels: [Int], heads: [[Int]], neurons: [[Int]]) {
            self.channels = channels; self.heads = heads; self.neurons = neurons
        }
    }

    /// The model restricted to the selected channels, heads and neurons: `pruningUnits` keeping every layer, after
    /// checking that every layer has both sublayers and keeps the same (non-zero) numbers of heads and neurons, so the
    /// result is homogeneous (same family). Every weight must be dense (a stage contract: width pruning accepts dense
    /// models only).
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
        let c = config, C = c.hiddenSize, L = layers.count
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
        let H2 = sel.heads[0].count, F2 = sel.neurons[0].count
        for (l, b) in c.blocks.enumerated() {
            guard b.attention && b.mlp else {
                throw ConfigError("layer \(l) lacks a sublayer; width pruning needs full layers")
            }
            let H = b.numAttentionHeads, G = b.numKeyValueHeads
            guard sel.heads[l].count == H2, sel.neurons[l].count == F2 else {
                throw ConfigError("layer \(l): every layer must keep \(H2) heads and \(F2) neurons")
            }
            try checkIndices(sel.neurons[l], below: b.intermediateSize, "layer \(l) neurons")
            guard H2 > 0 else { throw ConfigError("layer \(l) heads: nothing kept") }
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

        guard weightKinds == [.dense] else {
            let kinds = weightKinds.sorted().map(\.rawValue).joined(separator: ", ")
            throw ConfigError("width pruning needs dense weights; this model holds \(kinds)")
        }
        let units = UnitSelection(channels: sel.channels, layers: Array(0..<L), heads: sel.heads, neurons: sel.neurons)
        return try pruningUnits(units, postNormInputs: postNormInputs)
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

/// Structured pruning of any unit (Minitron's width pruning through `pruningWidth`, VTrans's pruning with its
/// gates folded in).
extension DecoderModel {
    /// What structured pruning keeps, as indices into the original dimensions (each list ascending).
    public struct UnitSelection: Codable, Equatable, Sendable {
        /// Hidden channels kept, shared by every layer.
        public var channels: [Int]
        /// Original layers kept.
        public var layers: [Int]
        /// Per original layer, the query heads kept (the same number in every KV group; empty: the attention
        /// sublayer is removed). Entries of dropped layers are ignored.
        public var heads: [[Int]]
        /// Per original layer, the MLP neurons kept (empty: the MLP is removed).
        public var neurons: [[Int]]
        public init(channels: [Int], layers: [Int], heads: [[Int]], neurons: [[Int]]) {
            self.channels = channels; self.layers = layers; self.heads = heads; self.neurons = neurons
        }
    }

    /// The gates of the model a selection keeps, as the forward applies them: `gates`' values (nil entries: 1) on
    /// kept units, 0 on removed channels, heads, neurons and on both sublayers of dropped layers.
    public func keptGates(_ sel: UnitSelection, from gates: Gates?) -> Gates {
        let c = config, z = Gates(config: c)
        func t(_ n: Int, _ src: Tensor?, keep: (Int) -> Bool) -> Tensor {
            Tensor(shape: [n], values: (0..<n).map { keep($0) ? src?[$0] ?? 1 : 0 })
        }
        let channels = Set(sel.channels), layers = Set(sel.layers)
        z.channels = t(c.hiddenSize, gates?.channels) { channels.contains($0) }
        z.heads = c.blocks.indices.map { l in
            t(c.blocks[l].numAttentionHeads, gates?.heads[l]) { layers.contains(l) && sel.heads[l].contains($0) }
        }
        z.neurons = c.blocks.indices.map { l in
            t(c.blocks[l].intermediateSize, gates?.neurons[l]) { layers.contains(l) && sel.neurons[l].contains($0) }
        }
        z.sublayers = t(2 * c.blocks.count, gates?.sublayers) { layers.contains($0 / 2) }
        return z
    }

    /// The config `pruningUnits(sel)` produces (checks the selection: ascending indices in range, GQA groups).
    public func prunedConfig(_ sel: UnitSelection) throws -> ModelConfig {
        let c = config, L = c.blocks.count
        guard sel.heads.count == L, sel.neurons.count == L else {
            throw ConfigError(
                "unit selection lists \(sel.heads.count) head and \(sel.neurons.count) neuron sets for \(L) layers")
        }
        func check(_ idx: [Int], below n: Int, _ what: String) throws {
            guard zip(idx, idx.dropFirst()).allSatisfy({ $0 < $1 }), idx.allSatisfy({ (0..<n).contains($0) }) else {
                throw ConfigError("\(what): indices must be ascending within 0..<\(n)")
            }
        }
        guard !sel.channels.isEmpty else { throw ConfigError("hidden channels: nothing kept") }
        try check(sel.channels, below: c.hiddenSize, "hidden channels")
        try check(sel.layers, below: L, "layers")
        var nc = c
        nc.blocks = try sel.layers.map { l in
            let b = c.blocks[l], H = b.numAttentionHeads, G = b.numKeyValueHeads
            guard b.attention && b.mlp else {
                throw ConfigError("layer \(l) lacks a sublayer; unit pruning needs full layers")
            }
            try check(sel.heads[l], below: H, "layer \(l) heads")
            try check(sel.neurons[l], below: b.intermediateSize, "layer \(l) neurons")
            let k = sel.heads[l].count
            guard k % G == 0 else {
                throw ConfigError("layer \(l): \(k) query heads kept is not a multiple of its \(G) KV groups "
                    + "(grouped-query attention)")
            }
            let per = H / G
            for g in 0..<G where sel.heads[l].filter({ $0 / per == g }).count != k / G {
                let n = sel.heads[l].filter { $0 / per == g }.count
                throw ConfigError("layer \(l): KV group \(g) keeps \(n) query heads, the others \(k / G)"
                                  + " (grouped-query attention needs the same number in every group)")
            }
            guard k > 0 || !sel.neurons[l].isEmpty else {
                throw ConfigError("layer \(l) keeps neither heads nor neurons; drop the layer instead")
            }
            // A sublayer whose output projection has a bias adds it even with every unit gated off, so removing the
            // sublayer would change the output.
            if k == 0, c.biases.contains(.o) {
                throw ConfigError(
                    "layer \(l): every head removed, but o_proj has a bias that the attention still adds (\(c.family))")
            }
            if sel.neurons[l].isEmpty, c.biases.contains(.down) {
                throw ConfigError(
                    "layer \(l): every neuron removed, but down_proj has a bias that the MLP still adds (\(c.family))")
            }
            return BlockConfig(attention: k > 0, numAttentionHeads: k > 0 ? k : H, numKeyValueHeads: G,
                               mlp: !sel.neurons[l].isEmpty,
                               intermediateSize: sel.neurons[l].isEmpty ? b.intermediateSize : sel.neurons[l].count,
                               layerType: b.layerType)
        }
        guard !nc.blocks.isEmpty else { throw ConfigError("no layer kept") }
        nc.numHiddenLayers = nc.blocks.count
        // Global sizes: the first kept layer's (block_configs carry the rest).
        if let a = nc.blocks.first(where: \.attention) { nc.numAttentionHeads = a.numAttentionHeads }
        if let m = nc.blocks.first(where: \.mlp) { nc.intermediateSize = m.intermediateSize }
        ChannelRemoval.adjust(&nc, from: c, keeping: sel.channels.count)
        return nc
    }

    /// The model restricted to the selected units, with `gates` (nil entries: 1) folded into the weights, so
    /// that it computes what this model computes with those gates and every removed unit's gate at 0:
    ///   embed'[v, j] = embed[v, c_j]·z_c[c_j]·k;  o'[c_j, h·D + d] = o[c_j, h·D + d]·z_c[c_j]·g_att·z_h[h];
    ///   down'[c_j, f] = down[c_j, f]·z_c[c_j]·g_mlp·z_f[f]
    /// (g_att, g_mlp the layer's sublayer gates). Norms over C channels, q/k projections, eps and the embedding
    /// multiplier (k) change as `ChannelRemoval` says; with a tied LM head, the final norm's (w + o) is also
    /// divided by z_c (the head reads the scaled embedding). Biases keep their projection's rows, o's and down's
    /// scaled like their rows (z_c·g, not the head or neuron gates, which act on the projection's input); per-head
    /// q/k norms are kept whole; layers keep their type.
    ///
    /// With post-sublayer norms (Gemma) z_c·g multiplies the sublayer's output after its post-norm, so it is folded
    /// into the post-norm's (w + o) instead of o's and down's rows. Then the identity holds exactly when every
    /// hidden channel stays; with channels removed, the pruned post-norm's mean of squares runs over the kept
    /// channels only, and the result equals the gated model whose removed channels are also zeroed before the
    /// post-norms (o_proj's and down_proj's rows), not the gated model itself (see the file header);
    /// `postNormInputs` (per original sublayer, the mean squares of its post-norm's input per channel under the
    /// gates: `PostNormInputs`) multiplies each post-norm's (w + o) by ρ instead of sqrt(C/C') (`ChannelRemoval`),
    /// and then the result equals that gated, zeroed model with each post-norm's (w + o) multiplied by ρ/sqrt(C/C').
    /// Dense weights only; kept channel gates must be non-zero.
    public func pruningUnits(_ sel: UnitSelection, folding gates: Gates? = nil,
                             postNormInputs: [[Double]]? = nil) throws -> DecoderModel {
        let nc = try prunedConfig(sel)
        if let p = postNormInputs, p.count != 2 * layers.count {
            throw ConfigError("post-norm input statistics list \(p.count) sublayers for \(2 * layers.count)")
        }
        guard weightKinds == [.dense] else {
            let kinds = weightKinds.sorted().map(\.rawValue).joined(separator: ", ")
            throw ConfigError("unit pruning needs dense weights; this model holds \(kinds)")
        }
        if let g = gates { try g.validate(config) }
        let c = config, D = c.headDim
        let r = ChannelRemoval(from: c, to: nc)
        let zc: [Float] = sel.channels.map { gates?.channels?[$0] ?? 1 }
        if c.tieWordEmbeddings, let bad = zc.firstIndex(of: 0) {
            throw ConfigError(
                "hidden channel \(sel.channels[bad]) is kept with a gate of 0 (a tied LM head cannot fold it)")
        }
        /// rows × columns gather from a (R, K) matrix with row and column scales.
        func gather(_ w: LinearWeight, rows: [Int]?, cols: [Int]?, rowScale: [Float]? = nil, colScale: [Float]? = nil,
                    times f: Float = 1) -> Tensor {
            let t = w.denseView!
            let K = t.shape[1]
            let r = rows ?? Array(0..<t.shape[0]), k = cols ?? Array(0..<K)
            let out = Tensor(shape: [r.count, k.count])
            for (i, src) in r.enumerated() {
                let s = t.data + src * K, d = out.data + i * k.count, rs = (rowScale?[i] ?? 1) * f
                for (j, col) in k.enumerated() { d[j] = s[col] * rs * (colScale?[j] ?? 1) }
            }
            return out
        }
        func vec(_ t: Tensor, _ idx: [Int]?, scale: [Float]? = nil, times f: Float = 1) -> ModelWeight {
            let i = idx ?? Array(0..<t.count)
            return .vector(Tensor(shape: [i.count], values: i.enumerated().map { j, src in
                t[src] * (scale?[j] ?? 1) * f
            }))
        }
        var w: [WeightID: ModelWeight] = [
            .embedTokens: .dense(gather(embedTokens, rows: nil, cols: sel.channels, colScale: zc,
                                        times: r.embeddingFactor)),
            .finalNorm: .vector(r.finalNorm(self.norm, channels: sel.channels, tied: c.tieWordEmbeddings,
                                            dividedBy: zc)),
        ]
        if let h = untiedLMHead { w[.lmHead] = .dense(gather(h, rows: nil, cols: sel.channels)) }
        for (i, l) in sel.layers.enumerated() {
            let a = layers[l].attention!, m = layers[l].mlp!
            func put(_ k: LinearKind, _ t: Tensor, bias: Tensor?, rows: [Int]?, biasScale: [Float]? = nil,
                     biasTimes: Float = 1) {
                let id = LinearID(layer: i, kind: k)
                w[.linear(id)] = .dense(t)
                if let bias { w[.bias(id)] = vec(bias, rows, scale: biasScale, times: biasTimes) }
            }
            if !sel.heads[l].isEmpty {
                let rows = sel.heads[l].flatMap { h in (h * D)..<((h + 1) * D) }
                let gAtt = gates?.sublayers?[2 * l] ?? 1
                let headScale = sel.heads[l].flatMap { h in [Float](repeating: gates?.heads[l]?[h] ?? 1, count: D) }
                let outScale = zc.map { $0 * gAtt }
                // Without a post-norm the output gates fold into o's rows; with one, into the post-norm.
                let oScale: [Float]? = a.postNorm == nil ? outScale : nil
                w[.norm(layer: i, .attentionIn)] = .vector(r.norm(a.norm, channels: sel.channels))
                put(.q, gather(a.q, rows: rows, cols: sel.channels, times: r.qkFactor), bias: a.biases[.q], rows: rows,
                    biasTimes: r.qkFactor)
                put(.k, gather(a.k, rows: nil, cols: sel.channels, times: r.qkFactor), bias: a.biases[.k], rows: nil,
                    biasTimes: r.qkFactor)
                put(.v, gather(a.v, rows: nil, cols: sel.channels), bias: a.biases[.v], rows: nil)
                put(.o, gather(a.o, rows: sel.channels, cols: rows, rowScale: oScale, colScale: headScale),
                    bias: a.biases[.o], rows: sel.channels, biasScale: oScale)
                if let qn = a.qNorm, let kn = a.kNorm {
                    w[.norm(layer: i, .q)] = .vector(qn.copy()); w[.norm(layer: i, .k)] = .vector(kn.copy())
                }
                if let pn = a.postNorm {
                    let f = r.postNormFactor(energy: postNormInputs?[2 * l], kept: sel.channels) / r.normFactor
                    w[.norm(layer: i, .attentionOut)] = .vector(r.norm(pn, channels: sel.channels,
                                                                       times: outScale.map { $0 * f }))
                }
            }
            if !sel.neurons[l].isEmpty {
                let gMLP = gates?.sublayers?[2 * l + 1] ?? 1
                let neuronScale = sel.neurons[l].map { gates?.neurons[l]?[$0] ?? 1 }
                let outScale = zc.map { $0 * gMLP }
                let downScale: [Float]? = m.postNorm == nil ? outScale : nil
                w[.norm(layer: i, .mlpIn)] = .vector(r.norm(m.norm, channels: sel.channels))
                put(.gate, gather(m.gate, rows: sel.neurons[l], cols: sel.channels), bias: m.biases[.gate],
                    rows: sel.neurons[l])
                put(.up, gather(m.up, rows: sel.neurons[l], cols: sel.channels), bias: m.biases[.up],
                    rows: sel.neurons[l])
                put(.down, gather(m.down, rows: sel.channels, cols: sel.neurons[l], rowScale: downScale,
                                  colScale: neuronScale),
                    bias: m.biases[.down], rows: sel.channels, biasScale: downScale)
                if let pn = m.postNorm {
                    let f = r.postNormFactor(energy: postNormInputs?[2 * l + 1], kept: sel.channels) / r.normFactor
                    w[.norm(layer: i, .mlpOut)] = .vector(r.norm(pn, channels: sel.channels,
                                                                 times: outScale.map { $0 * f }))
                }
            }
        }
        return try DecoderModel(config: nc, weights: w)
    }
}
