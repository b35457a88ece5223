import RealModule

/// RMSNorm (Llama): out = w ⊙ x · rsqrt(mean(x²) + eps), per row. Matches Hugging Face LlamaRMSNorm
/// (statistics in Float32, normalise, then scale).

/// out (T, C) = rmsnorm(inp (T, C)) * weight (C); writes rstd (T) when given (for backward).
public func rmsnormForward(
    out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
    eps: Float, rows T: Int, channels C: Int, rstd: UnsafeMutablePointer<Float>? = nil
) {
    Parallel.forEachChunk(T, minChunk: 16) { rows in
        for t in rows {
            let x = inp + t * C, o = out + t * C
            var ss: Float = 0
            for c in 0..<C { ss = Relaxed.multiplyAdd(x[c], x[c], ss) }
            let r = 1 / (ss / Float(C) + eps).squareRoot()
            rstd?[t] = r
            for c in 0..<C { o[c] = weight[c] * (x[c] * r) }
        }
    }
}

/// Reference of `rmsnormForward` (Double statistics).
public func rmsnormForwardReference(
    out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
    eps: Float, rows T: Int, channels C: Int
) {
    for t in 0..<T {
        var ss = 0.0
        for c in 0..<C { ss += Double(inp[t * C + c]) * Double(inp[t * C + c]) }
        let r = 1 / (ss / Double(C) + Double(eps)).squareRoot()
        for c in 0..<C { out[t * C + c] = Float(Double(weight[c]) * Double(inp[t * C + c]) * r) }
    }
}

/// LayerNorm: out = (x - mean) · rsqrt(var + eps) ⊙ w + b, per row, biased variance.

/// out (T, C) = layernorm(inp (T, C)) * weight (C) + bias (C); writes mean and rstd (T) when given.
public func layernormForward(
    out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
    bias: UnsafePointer<Float>?, eps: Float, rows T: Int, channels C: Int,
    mean meanOut: UnsafeMutablePointer<Float>? = nil, rstd rstdOut: UnsafeMutablePointer<Float>? = nil
) {
    Parallel.forEachChunk(T, minChunk: 16) { rows in
        for t in rows {
            let x = inp + t * C, o = out + t * C
            var s: Float = 0
            for c in 0..<C { s = Relaxed.sum(s, x[c]) }
            let m = s / Float(C)
            var v: Float = 0
            for c in 0..<C { let d = x[c] - m; v = Relaxed.multiplyAdd(d, d, v) }
            let r = 1 / (v / Float(C) + eps).squareRoot()
            meanOut?[t] = m
            rstdOut?[t] = r
            for c in 0..<C { o[c] = (x[c] - m) * r * weight[c] + (bias?[c] ?? 0) }
        }
    }
}

/// Reference of `layernormForward` (Double statistics).
public func layernormForwardReference(
    out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
    bias: UnsafePointer<Float>?, eps: Float, rows T: Int, channels C: Int
) {
    for t in 0..<T {
        var m = 0.0
        for c in 0..<C { m += Double(inp[t * C + c]) }
        m /= Double(C)
        var v = 0.0
        for c in 0..<C { let d = Double(inp[t * C + c]) - m; v += d * d }
        let r = 1 / (v / Double(C) + Double(eps)).squareRoot()
        for c in 0..<C {
            out[t * C + c] = Float((Double(inp[t * C + c]) - m) * r * Double(weight[c]) + Double(bias?[c] ?? 0))
        }
    }
}
