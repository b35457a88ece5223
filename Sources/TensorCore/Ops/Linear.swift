/// Linear layer, Hugging Face layout: weight (OC, C) row-major, so y = x · Wᵀ is one GEMM with B transposed
/// in place (no copy).

/// out (T, OC) = inp (T, C) · weight (OC, C)ᵀ + bias (OC)
public func linearForward(
    out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
    bias: UnsafePointer<Float>? = nil, rows T: Int, inFeatures C: Int, outFeatures OC: Int
) {
    BLAS.gemm(transB: true, m: T, n: OC, k: C, a: inp, lda: C, b: weight, ldb: C, c: out, ldc: OC)
    guard let bias else { return }
    Parallel.forEachChunk(T, minChunk: 16) { rows in
        for t in rows {
            let o = out + t * OC
            for j in 0..<OC { o[j] += bias[j] }
        }
    }
}

/// Plain triple-loop reference of `linearForward` (Double accumulation).
public func linearForwardReference(
    out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
    bias: UnsafePointer<Float>? = nil, rows T: Int, inFeatures C: Int, outFeatures OC: Int
) {
    for t in 0..<T {
        for o in 0..<OC {
            var acc = Double(bias?[o] ?? 0)
            for c in 0..<C { acc += Double(inp[t * C + c]) * Double(weight[o * C + c]) }
            out[t * OC + o] = Float(acc)
        }
    }
}
