/// Linear layer, Hugging Face layout: weight (OC, C) row-major, so y = x · Wᵀ is one GEMM with B transposed
/// in place (no copy).

/// out (T, OC) = inp (T, C) · weight (OC, C)ᵀ + bias (OC)
public func linearForward(
    out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
    bias: UnsafePointer<Float>? = nil, rows T: Int, inFeatures C: Int, outFeatures OC: Int
) {
    MatrixProduct.gemm(transB: true, m: T, n: OC, k: C, a: inp, lda: C, b: weight, ldb: C, c: out, ldc: OC)
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

/// Backward of `linearForward`, accumulating into each gradient that is given (nil = not needed, e.g. a
/// frozen weight or the input of the first layer):
///   dinp (T, C) += dout (T, OC) · weight (OC, C)
///   dweight (OC, C) += doutᵀ · inp
///   dbias (OC) += Σ_t dout[t]
/// `weightTensor`: the tensor `weight` points into, whose bf16 copy `MatrixProduct` may cache.
public func linearBackward(
    dinp: UnsafeMutablePointer<Float>?, dweight: UnsafeMutablePointer<Float>?,
    dbias: UnsafeMutablePointer<Float>? = nil,
    dout: UnsafePointer<Float>, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>, weightTensor: Tensor? = nil,
    rows T: Int, inFeatures C: Int, outFeatures OC: Int
) {
    // In bf16, dout (read by both products) and inp (read whole by every worker's slice of dW) are converted once.
    MatrixProduct.withBF16Copy(of: dout, count: dinp != nil && dweight != nil ? T * OC : 0) {
        MatrixProduct.withBF16Copy(of: inp, count: dweight != nil ? T * C : 0) {
            if let dinp {
                MatrixProduct.gemm(
                    m: T, n: C, k: OC, a: dout, lda: OC, b: weight, ldb: C, beta: 1, c: dinp, ldc: C,
                    weight: weightTensor)
            }
            if let dweight {
                MatrixProduct.gemm(
                    transA: true, m: OC, n: C, k: T, a: dout, lda: OC, b: inp, ldb: C, beta: 1, c: dweight, ldc: C)
            }
        }
    }
    if let dbias {
        Parallel.forEachChunk(OC, minChunk: 256) { cols in
            for t in 0..<T { let d = dout + t * OC; for j in cols { dbias[j] += d[j] } }
        }
    }
}

/// A weight multiplied elementwise by a mask (pruning masks, learnable N:M masks):
///   effective (N) = weight (N) ⊙ mask (N)
public func maskedWeightForward(
    effective: UnsafeMutablePointer<Float>, weight: UnsafePointer<Float>, mask: UnsafePointer<Float>, count N: Int
) {
    Parallel.forEachChunk(N, minChunk: 65536) { r in for i in r { effective[i] = weight[i] * mask[i] } }
}

/// Backward of `maskedWeightForward`: dweight += deffective ⊙ mask, dmask += deffective ⊙ weight (each when given).
public func maskedWeightBackward(
    dweight: UnsafeMutablePointer<Float>?, dmask: UnsafeMutablePointer<Float>?, deffective: UnsafePointer<Float>,
    weight: UnsafePointer<Float>, mask: UnsafePointer<Float>, count N: Int
) {
    Parallel.forEachChunk(N, minChunk: 65536) { r in
        if let dweight { for i in r { dweight[i] += deffective[i] * mask[i] } }
        if let dmask { for i in r { dmask[i] += deffective[i] * weight[i] } }
    }
}
