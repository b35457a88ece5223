/// A tensor in Hugging Face layout: name, row-major shape and values.
public struct HFTensor: Sendable {
    /// Hugging Face parameter name, e.g. `model.layers.0.self_attn.q_proj.weight`.
    public let name: String
    /// Row-major shape, e.g. `(out, in)` for a linear weight.
    public let shape: [Int]
    /// Row-major values.
    public let values: [Float]
}

/// Maps llama.cpp GGUF tensor names and layouts to Hugging Face `LlamaForCausalLM` ones.
public enum LlamaMapping {
    /// `general.architecture` values this mapping understands.
    public static let supportedArchitectures = ["llama", "deci"]

    static let topLevel = [
        "token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head",
    ]
    static let perBlock = [
        "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    ]
    static let hfPerBlock = Dictionary(uniqueKeysWithValues: perBlock.map { ($1, $0) })
    static let hfTopLevel = Dictionary(uniqueKeysWithValues: topLevel.map { ($1, $0) })

    /// The Hugging Face name for a GGUF tensor name, or nil if it has none (e.g. `rope_freqs.weight`).
    public static func hfName(for ggufName: String) -> String? {
        guard let (stem, suffix) = splitSuffix(ggufName) else { return nil }
        if let name = topLevel[stem] { return name + suffix }
        let parts = stem.split(separator: ".", maxSplits: 2).map(String.init)
        guard parts.count == 3, parts[0] == "blk", let layer = Int(parts[1]), layer >= 0,
              let name = perBlock[parts[2]] else { return nil }
        return "model.layers.\(layer).\(name)\(suffix)"
    }

    /// The GGUF name for a Hugging Face parameter name, or nil if it has none.
    public static func ggufName(for hfName: String) -> String? {
        guard let (stem, suffix) = splitSuffix(hfName) else { return nil }
        if let name = hfTopLevel[stem] { return name + suffix }
        let prefix = "model.layers."
        guard stem.hasPrefix(prefix) else { return nil }
        let parts = stem.dropFirst(prefix.count).split(separator: ".", maxSplits: 1).map(String.init)
        guard parts.count == 2, let layer = Int(parts[0]), layer >= 0, let name = hfPerBlock[parts[1]] else { return nil }
        return "blk.\(layer).\(name)\(suffix)"
    }

    /// The Hugging Face (row-major) shape: GGUF dims reversed, so a linear weight `ne = [in, out]` becomes `(out, in)`.
    public static func hfShape(for info: GGUFTensorInfo) -> [Int] { info.rowMajorShape }

    /// Dequantizes `info` and returns it under its Hugging Face name and shape, undoing the
    /// rotary row permutation llama.cpp's converter applies to `attn_q` and `attn_k`.
    public static func hfTensor(_ info: GGUFTensorInfo, in file: GGUFFile, config: GGUFLlamaConfig) throws -> HFTensor {
        guard let name = hfName(for: info.name) else {
            throw GGUFError(file.path, "tensor '\(info.name)' has no Hugging Face Llama counterpart")
        }
        let shape = hfShape(for: info)
        var values = try file.dequantize(info)
        if let heads = rotaryHeads(info.name, config) {
            let rows = shape.first ?? 0, cols = info.elementCount / max(rows, 1)
            guard shape.count == 2, heads > 0, rows % (2 * heads) == 0 else {
                throw GGUFError(file.path, "tensor '\(info.name)': expected a 2-D weight whose \(rows) rows split into \(heads) heads of even size, found shape \(shape)")
            }
            values = unpermuteQK(weights: values, rows: rows, cols: cols, heads: heads)
        }
        return HFTensor(name: name, shape: shape, values: values)
    }

    /// Heads to un-permute over: attention heads for q, key/value heads for k, nil for other tensors.
    static func rotaryHeads(_ ggufName: String, _ config: GGUFLlamaConfig) -> Int? {
        var block: GGUFLlamaConfig.Block? = nil
        let parts = ggufName.split(separator: ".")
        if let blocks = config.blockConfigs, parts.count > 2, parts[0] == "blk", let l = Int(parts[1]), blocks.indices.contains(l) { block = blocks[l] }
        if ggufName.hasSuffix(".attn_q.weight") { return block?.numAttentionHeads ?? config.numAttentionHeads }
        if ggufName.hasSuffix(".attn_k.weight") { return block?.numKeyValueHeads ?? config.numKeyValueHeads }
        return nil
    }

    private static func splitSuffix(_ name: String) -> (String, String)? {
        for suffix in [".weight", ".bias"] where name.hasSuffix(suffix) {
            return (String(name.dropLast(suffix.count)), suffix)
        }
        return nil
    }
}

/// Undoes llama.cpp's q/k permutation: within each of `heads` heads, GGUF row `2i + j` is HF row `j * half + i`
/// (half = rows / heads / 2). `weights` is `rows x cols` row-major.
public func unpermuteQK(weights: [Float], rows: Int, cols: Int, heads: Int) -> [Float] {
    permuteRows(weights, rows: rows, cols: cols, heads: heads, toGGUF: false)
}

/// Applies llama.cpp's HF -> GGUF q/k permutation (the inverse of `unpermuteQK`).
public func permuteQK(weights: [Float], rows: Int, cols: Int, heads: Int) -> [Float] {
    permuteRows(weights, rows: rows, cols: cols, heads: heads, toGGUF: true)
}

private func permuteRows(_ weights: [Float], rows: Int, cols: Int, heads: Int, toGGUF: Bool) -> [Float] {
    precondition(heads > 0 && rows % (2 * heads) == 0 && weights.count == rows * cols,
                 "q/k permutation needs rows (\(rows)) divisible by 2 x heads (\(heads)) and \(rows) x \(cols) weights")
    let half = rows / heads / 2
    var out = [Float](repeating: 0, count: weights.count)
    weights.withUnsafeBufferPointer { src in
        out.withUnsafeMutableBufferPointer { dst in
            guard let s = src.baseAddress, let d = dst.baseAddress else { return }
            for h in 0..<heads {
                for i in 0..<half {
                    for j in 0..<2 {
                        let gguf = (h * half * 2 + 2 * i + j) * cols, hf = (h * half * 2 + j * half + i) * cols
                        (d + (toGGUF ? gguf : hf)).update(from: s + (toGGUF ? hf : gguf), count: cols)
                    }
                }
            }
        }
    }
    return out
}
