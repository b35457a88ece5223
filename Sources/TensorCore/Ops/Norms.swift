import RealModule

/// RMSNorm (Llama): out = w ⊙ x · rsqrt(mean(x²) + eps), per row. Matches Hugging Face LlamaRMSNorm
/// (statistics in Float32, normalise, then scale). With `offset` o the scale is (o + w): Gemma's RMSNorm is
/// o = 1, x · rsqrt(mean(x²) + eps) ⊙ (1 + w) (transformers Gemma3RMSNorm; llama.cpp stores 1 + w instead).

/// out (T, C) = rmsnorm(inp (T, C)) * (offset + weight (C)); writes rstd (T) when given (for backward).
public func rmsnormForward(
    out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
    eps: Float, rows T: Int, channels C: Int, rstd: UnsafeMutablePointer<Float>? = nil, offset: Float = 0
) {
    Parallel.forEachChunk(T, minChunk: 16) { rows in
        for t in rows {
            let x = inp + t * C, o = out + t * C
            var ss: Float = 0
            for c in 0..<C { ss = Relaxed.multiplyAdd(x[c], x[c], ss) }
            let r = 1 / (ss / Float(C) + eps).squareRoot()
            rstd?[t] = r
            if offset == 0 {
                for c in 0..<C { o[c] = weight[c] * (x[c] * r) }
            } else {
                for c in 0..<C { o[c] = (offset + weight[c]) * (x[c] * r) }
            }
        }
    }
}

/// Reference of `rmsnormForward` (Double statistics).
public func rmsnormForwardReference(
    out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
    eps: Float, rows T: Int, channels C: Int, offset: Float = 0
) {
    for t in 0..<T {
        var ss = 0.0
        for c in 0..<C { ss += Double(inp[t * C + c]) * Double(inp[t * C + c]) }
        let r = 1 / (ss / Double(C) + Double(eps)).squareRoot()
        for c in 0..<C { out[t * C + c] = Float((Double(offset) + Double(weight[c])) * Double(inp[t * C + c]) * r) }
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

/// Runs `body(rows, partial)` over chunks of T rows, each chunk accumulating into its own zeroed `width`-float
/// partial; then sums the partials in chunk order (deterministic) and hands the sum to `finish`.
@inline(__always)
func accumulatingOverRows(
    _ T: Int, width: Int, _ body: (Range<Int>, UnsafeMutablePointer<Float>) -> Void,
    finish: (UnsafePointer<Float>) -> Void
) {
    let chunks = Parallel.chunkCount(T, minChunk: 16)
    let scratch = UnsafeMutablePointer<Float>.allocate(capacity: max(1, chunks * width))
    scratch.initialize(repeating: 0, count: max(1, chunks * width))
    defer { scratch.deallocate() }
    Parallel.forEachChunkIndexed(T, minChunk: 16) { w, rows in body(rows, scratch + w * width) }
    for w in 1..<max(chunks, 1) {
        let p = scratch + w * width
        for i in 0..<width { scratch[i] += p[i] }
    }
    finish(scratch)
}

/// Backward of `rmsnormForward` (rstd saved by the forward). With y = s ⊙ x·r, s = offset + w,
/// r = (mean(x²) + eps)^(-1/2):
///   dx = r·(s ⊙ dy) - x · r³/C · Σ_c s_c dy_c x_c,     dw += Σ_t dy ⊙ x·r
/// Accumulates into dinp and dweight (dweight may be nil for a frozen norm).
public func rmsnormBackward(
    dinp: UnsafeMutablePointer<Float>, dweight: UnsafeMutablePointer<Float>?, dout: UnsafePointer<Float>,
    inp: UnsafePointer<Float>, weight: UnsafePointer<Float>, rstd: UnsafePointer<Float>, rows T: Int, channels C: Int,
    offset: Float = 0
) {
    accumulatingOverRows(T, width: C, { rows, dw in
        for t in rows {
            let x = inp + t * C, dy = dout + t * C, dx = dinp + t * C, r = rstd[t]
            var dot: Float = 0
            for c in 0..<C { dot = Relaxed.multiplyAdd((offset + weight[c]) * dy[c], x[c], dot) }
            let k = dot * r * r * r / Float(C)
            for c in 0..<C {
                dx[c] += r * (offset + weight[c]) * dy[c] - k * x[c]
                dw[c] += dy[c] * x[c] * r
            }
        }
    }, finish: { sum in
        if let dweight { for c in 0..<C { dweight[c] += sum[c] } }
    })
}

/// Backward of `layernormForward` (mean and rstd saved by the forward). With n = (x - μ)·r, y = w ⊙ n + b:
///   dx = r·(g - mean(g) - n · mean(g ⊙ n)),  g = w ⊙ dy;    dw += Σ_t dy ⊙ n;   db += Σ_t dy
/// Accumulates into dinp, dweight and dbias (each weight gradient may be nil).
public func layernormBackward(
    dinp: UnsafeMutablePointer<Float>, dweight: UnsafeMutablePointer<Float>?, dbias: UnsafeMutablePointer<Float>?,
    dout: UnsafePointer<Float>, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
    mean: UnsafePointer<Float>, rstd: UnsafePointer<Float>, rows T: Int, channels C: Int
) {
    accumulatingOverRows(T, width: 2 * C, { rows, dw in
        let db = dw + C
        for t in rows {
            let x = inp + t * C, dy = dout + t * C, dx = dinp + t * C, m = mean[t], r = rstd[t]
            var sg: Float = 0, sgn: Float = 0
            for c in 0..<C {
                let g = weight[c] * dy[c], n = (x[c] - m) * r
                sg += g
                sgn = Relaxed.multiplyAdd(g, n, sgn)
            }
            let mg = sg / Float(C), mgn = sgn / Float(C)
            for c in 0..<C {
                let n = (x[c] - m) * r
                dx[c] += r * (weight[c] * dy[c] - mg - n * mgn)
                dw[c] += dy[c] * n
                db[c] += dy[c]
            }
        }
    }, finish: { sum in
        if let dweight { for c in 0..<C { dweight[c] += sum[c] } }
        if let dbias { for c in 0..<C { dbias[c] += sum[C + c] } }
    })
}
