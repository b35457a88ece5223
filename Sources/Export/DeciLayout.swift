import Model
import TensorCore

/// How a heterogeneous model is written as Hugging Face `DeciLMForCausalLM` (NVIDIA's Nemotron-NAS layout, as
/// vLLM's `nemotron_nas` model and llama.cpp's convert_hf_to_gguf.py `DeciModel` read it).
///
/// Per layer, `block_configs[i]` holds `attention: {n_heads_in_group, no_op, replace_with_linear}` and
/// `ffn: {ffn_mult, no_op, replace_with_linear}`. Two things are global or rounded there:
/// - every attention has `num_attention_heads` query heads of `hidden_size / num_attention_heads` dims, with
///   `num_attention_heads / n_heads_in_group` key/value heads;
/// - an MLP's width is `find_multiple(int(2 · ffn_mult · hidden_size / 3), 256)`.
/// Our layers may have fewer query heads or an MLP width that is not a multiple of 256. We pad:
/// - query heads: H* = hidden_size / head_dim heads globally; in a layer with H query and G key/value heads
///   (r = H / G per group), group g's heads go to padded heads g·r* … g·r* + r − 1 (r* = H* / G), so each still
///   reads key/value head g; the added heads have zero q rows and zero o columns. A zero query row gives a
///   zero query, uniform attention over the values, and its output is multiplied by zero o columns: the
///   layer's output is unchanged exactly (0 · finite = 0, and adding +0 changes no float sum).
/// - MLP width F → F* = the next multiple of 256, with zero gate and up rows and zero down columns: the added
///   units compute silu(0) · 0 = 0 and contribute 0 · 0 to the output.
/// `ffn_mult` = 3 · F* / (2 · hidden_size), which the formula maps back to F* (any value in (F* − 256, F*] does).
struct DeciLayout {
    struct Layer {
        /// Heads in the file (H*), key/value heads, and where our query head h goes.
        var attention: (kvHeads: Int, headMap: [Int])?
        /// Width in the file and ffn_mult.
        var mlp: (width: Int, ffnMult: Double)?
    }
    let heads: Int
    let headDim: Int
    let layers: [Layer]

    init(config c: ModelConfig) throws {
        headDim = c.headDim
        guard c.hiddenSize % c.headDim == 0 else {
            throw ExportError(
                "DeciLMForCausalLM needs hidden_size (\(c.hiddenSize)) to be a multiple of head_dim (\(c.headDim)): "
                    + "its head size is hidden_size / num_attention_heads")
        }
        heads = c.hiddenSize / c.headDim
        var layers: [Layer] = []
        for (i, b) in c.blocks.enumerated() {
            var layer = Layer()
            if b.attention {
                guard b.numAttentionHeads <= heads, heads % b.numKeyValueHeads == 0 else {
                    throw ExportError(
                        "layer \(i): \(b.numAttentionHeads) query heads over \(b.numKeyValueHeads) key/value heads "
                            + "cannot be written as DeciLM, whose layers all have hidden_size / head_dim = \(heads) "
                            + "query heads in groups of a whole number per key/value head")
                }
                let r = b.numAttentionHeads / b.numKeyValueHeads, rStar = heads / b.numKeyValueHeads
                layer.attention = (b.numKeyValueHeads, (0..<b.numAttentionHeads).map { h in (h / r) * rStar + h % r })
            }
            if b.mlp {
                let width = (b.intermediateSize + 255) / 256 * 256
                layer.mlp = (width, 3 * Double(width) / (2 * Double(c.hiddenSize)))
                // The reader's formula must give back this width.
                let back = Int(2 * layer.mlp!.ffnMult * Double(c.hiddenSize) / 3)
                guard (back + 255) / 256 * 256 == width else {
                    throw ExportError("layer \(i): ffn_mult \(layer.mlp!.ffnMult) does not map back to width \(width)")
                }
            }
            layers.append(layer)
        }
        self.layers = layers
    }

    /// Whether any tensor of layer `l` needs padding.
    func padsAttention(_ l: Int, _ b: BlockConfig) -> Bool {
        layers[l].attention != nil && b.numAttentionHeads != heads
    }
    func padsMLP(_ l: Int, _ b: BlockConfig) -> Bool { layers[l].mlp.map { $0.width != b.intermediateSize } ?? false }

    /// The weight as written: padded rows (q, gate, up) or columns (o, down), zero elsewhere.
    func padded(_ w: LinearWeight, id: LinearID, block b: BlockConfig) -> (values: [Float], shape: [Int]) {
        let src = w.dequantized()
        let rows = w.outFeatures, cols = w.inFeatures
        switch id.kind {
        case .q:
            let map = layers[id.layer].attention!.headMap, D = headDim
            var out = [Float](repeating: 0, count: heads * D * cols)
            for (h, to) in map.enumerated() {
                for r in 0..<D { for c in 0..<cols { out[(to * D + r) * cols + c] = src[(h * D + r) * cols + c] } }
            }
            return (out, [heads * D, cols])
        case .o:
            let map = layers[id.layer].attention!.headMap, D = headDim, newCols = heads * D
            var out = [Float](repeating: 0, count: rows * newCols)
            for r in 0..<rows {
                for (h, to) in map.enumerated() {
                    for d in 0..<D { out[r * newCols + to * D + d] = src[r * cols + h * D + d] }
                }
            }
            return (out, [rows, newCols])
        case .gate, .up:
            let width = layers[id.layer].mlp!.width
            var out = [Float](repeating: 0, count: width * cols)
            for i in 0..<(rows * cols) { out[i] = src[i] }
            return (out, [width, cols])
        case .down:
            let width = layers[id.layer].mlp!.width
            var out = [Float](repeating: 0, count: rows * width)
            for r in 0..<rows { for c in 0..<cols { out[r * width + c] = src[r * cols + c] } }
            return (out, [rows, width])
        case .k, .v:
            return (Array(UnsafeBufferPointer(start: src.data, count: src.count)), [rows, cols])
        }
    }

    /// Whether weight `id` changes shape when written.
    func needsPadding(_ id: LinearID, block b: BlockConfig) -> Bool {
        switch id.kind {
        case .q, .o: padsAttention(id.layer, b)
        case .gate, .up, .down: padsMLP(id.layer, b)
        case .k, .v: false
        }
    }

    /// config.json's block_configs.
    var blockConfigs: JSONValue {
        .array(layers.map { l in
            .object([
                "attention": .object([
                    "n_heads_in_group": l.attention.map { .int(heads / $0.kvHeads) } ?? .null,
                    "no_op": .bool(l.attention == nil), "replace_with_linear": .bool(false), "sparsify": .null,
                ]),
                "ffn": .object([
                    "ffn_mult": l.mlp.map { .double($0.ffnMult) } ?? .null,
                    "no_op": .bool(l.mlp == nil), "replace_with_linear": .bool(false), "sparsify": .null,
                ]),
            ])
        })
    }
}
