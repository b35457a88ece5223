import CKernels
import Foundation
import RealModule

/// Log-softmax and cross-entropy over rows of logits.

/// log Σ_j exp(x_j) of one row of length V; max-shifted, each exponential a Float32 `fastExp`, summed in Float64 (so
/// the result does not depend on the order of the terms: CKernels' AVX-512 / AVX2 kernel and the Swift loop agree to
/// ~1e-15; a Float32 sum of 49,152 terms moved a whole-test-split PPL by 1e-5 relative between SIMD widths).
@inlinable
public func logSumExp(_ x: UnsafePointer<Float>, count V: Int) -> Double {
    let m = rowMax(x, count: V)
    var s: Double = 0
    if SIMDKernels.lanes > 0 {
        s = compress_exp_sum_lanes(x, V, m, Int32(SIMDKernels.lanes))
    } else {
        for j in 0..<V { s = Relaxed.sum(s, Double(fastExp(x[j] - m))) }
    }
    return Double(m) + Foundation.log(s)
}

/// out (T, V) = log_softmax(logits (T, V)) per row. `out` may alias `logits`.
public func logSoftmaxForward(
    out: UnsafeMutablePointer<Float>, logits: UnsafePointer<Float>, rows T: Int, columns V: Int
) {
    Parallel.forEachChunk(T, minChunk: 1) { rows in
        for t in rows {
            let lse = Float(logSumExp(logits + t * V, count: V))
            for j in 0..<V { out[t * V + j] = logits[t * V + j] - lse }
        }
    }
}

/// nll (T) = -log softmax(logits (T, V))[targets (T)], in Double, one value per row.
public func crossEntropyForward(
    nll: UnsafeMutablePointer<Double>, logits: UnsafePointer<Float>, targets: UnsafePointer<Int32>, rows T: Int,
    columns V: Int
) {
    Parallel.forEachChunk(T, minChunk: 1) { rows in
        for t in rows {
            let row = logits + t * V
            nll[t] = logSumExp(row, count: V) - Double(row[Int(targets[t])])
        }
    }
}

/// Reference of `crossEntropyForward`: Double throughout, libm exp.
public func crossEntropyForwardReference(
    nll: UnsafeMutablePointer<Double>, logits: UnsafePointer<Float>, targets: UnsafePointer<Int32>, rows T: Int,
    columns V: Int
) {
    for t in 0..<T {
        var m = -Double.infinity
        for j in 0..<V { m = max(m, Double(logits[t * V + j])) }
        var s = 0.0
        for j in 0..<V { s += Foundation.exp(Double(logits[t * V + j]) - m) }
        nll[t] = m + Foundation.log(s) - Double(logits[t * V + Int(targets[t])])
    }
}

/// Cross-entropy forward and backward in one pass over rows of logits:
///   nll[t] = logsumexp(z_t) - z_t[y_t],   dlogits[t] += scale · (softmax(z_t) - onehot(y_t))
/// `dlogits` must not alias `logits`. nll (T), when given, is written in Double.
public func crossEntropyBackward(
    dlogits: UnsafeMutablePointer<Float>, nll: UnsafeMutablePointer<Double>?, logits: UnsafePointer<Float>,
    targets: UnsafePointer<Int32>, scale: Float, rows T: Int, columns V: Int
) {
    Parallel.forEachChunk(T, minChunk: 1) { rows in
        for t in rows {
            let z = logits + t * V, d = dlogits + t * V, y = Int(targets[t])
            let lse = logSumExp(z, count: V)
            nll?[t] = lse - Double(z[y])
            let shift = Float(lse)
            for j in 0..<V { d[j] += scale * fastExp(z[j] - shift) }
            d[y] -= scale
        }
    }
}
