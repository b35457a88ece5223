/// A tensor in Hugging Face layout: name, row-major shape and values.
public struct HFTensor: Sendable {
    /// Hugging Face parameter name, e.g. `model.layers.0.self_attn.q_proj.weight`.
    public let name: String
    /// Row-major shape, e.g. `(out, in)` for a linear weight.
    public let shape: [Int]
    /// Row-major values.
    public let values: [Float]
}

/// Reading one GGUF tensor in Hugging Face layout (names are the family's: `ModelFamily.ggufName`).
public enum GGUFTensors {
    /// Dequantizes `info` to row-major Float32 in Hugging Face shape (GGUF dims reversed, so a linear weight
    /// `ne = [in, out]` becomes `(out, in)`), undoing llama.cpp's rotary row permutation when `rotaryHeads` is
    /// given (q: the attention heads, k: the key/value heads; only for families stored permuted).
    public static func hfTensor(
        _ info: GGUFTensorInfo, in file: GGUFFile, name: String, rotaryHeads: Int?
    ) throws -> HFTensor {
        let shape = info.rowMajorShape
        var values = try file.dequantize(info)
        if let heads = rotaryHeads {
            let rows = shape.first ?? 0, cols = info.elementCount / max(rows, 1)
            guard shape.count == 2, heads > 0, rows % (2 * heads) == 0 else {
                throw GGUFError(
                    file.path,
                    "tensor '\(info.name)': expected a 2-D weight whose \(rows) rows split into \(heads) heads of even "
                        + "size, found shape \(shape)", tensor: info.name, found: "\(shape)")
            }
            values = unpermuteQK(weights: values, rows: rows, cols: cols, heads: heads)
        }
        return HFTensor(name: name, shape: shape, values: values)
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
