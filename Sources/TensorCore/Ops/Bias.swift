/// Bias on a linear layer's output: out[r, j] += b[j] (PyTorch `nn.Linear(bias=True)`, the second term of
/// y = x·Wᵀ + b). Backward: db[j] += Σ_r dout[r, j]; the input gradient passes through unchanged.

/// out (R, J) += bias (J), broadcast over rows.
public func biasForward(out: UnsafeMutablePointer<Float>, bias: UnsafePointer<Float>, rows R: Int, columns J: Int) {
    Parallel.forEachChunk(R, minChunk: 64) { rows in
        for r in rows {
            let o = out + r * J
            for j in 0..<J { o[j] += bias[j] }
        }
    }
}

/// dbias (J) += Σ_r dout (R, J) over rows (summed in Float64 per column for row counts in the thousands).
public func biasBackward(dbias: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, rows R: Int, columns J: Int) {
    Parallel.forEachChunk(J, minChunk: 64) { cols in
        for j in cols {
            var s = 0.0
            for r in 0..<R { s += Double(dout[r * J + j]) }
            dbias[j] += Float(s)
        }
    }
}

/// Reference of `biasForward` (plain loops, Double).
public func biasForwardReference(
    out: UnsafeMutablePointer<Float>, bias: UnsafePointer<Float>, rows R: Int, columns J: Int
) {
    for r in 0..<R {
        for j in 0..<J { out[r * J + j] = Float(Double(out[r * J + j]) + Double(bias[j])) }
    }
}
