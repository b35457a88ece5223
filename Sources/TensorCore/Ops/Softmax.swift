import Foundation
import RealModule

/// Log-softmax and cross-entropy over rows of logits.

/// log Σ_j exp(x_j) of one row of length V; max-shifted, sum in Float32 with relaxed (vectorised) adds.
@inlinable
public func logSumExp(_ x: UnsafePointer<Float>, count V: Int) -> Double {
    let m = rowMax(x, count: V)
    var s: Float = 0
    for j in 0..<V { s = Relaxed.sum(s, fastExp(x[j] - m)) }
    return Double(m) + Foundation.log(Double(s))
}

/// out (T, V) = log_softmax(logits (T, V)) per row. `out` may alias `logits`.
public func logSoftmaxForward(out: UnsafeMutablePointer<Float>, logits: UnsafePointer<Float>, rows T: Int, columns V: Int) {
    Parallel.forEachChunk(T, minChunk: 1) { rows in
        for t in rows {
            let lse = Float(logSumExp(logits + t * V, count: V))
            for j in 0..<V { out[t * V + j] = logits[t * V + j] - lse }
        }
    }
}

/// nll (T) = -log softmax(logits (T, V))[targets (T)], in Double, one value per row.
public func crossEntropyForward(
    nll: UnsafeMutablePointer<Double>, logits: UnsafePointer<Float>, targets: UnsafePointer<Int32>, rows T: Int, columns V: Int
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
    nll: UnsafeMutablePointer<Double>, logits: UnsafePointer<Float>, targets: UnsafePointer<Int32>, rows T: Int, columns V: Int
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

/// Forward KL divergence with temperature τ between a teacher and a student, per row:
///   p = softmax(zT/τ), q = softmax(zS/τ),  kl[t] = Σ_j p_j (log p_j - log q_j)
///   dlogitsS[t] += scale · (q - p) / τ
/// (the gradient of scale · kl with respect to the student logits). kl (T) is written in Double.
public func klDivergenceBackward(
    dlogits: UnsafeMutablePointer<Float>, kl: UnsafeMutablePointer<Double>?, student: UnsafePointer<Float>,
    teacher: UnsafePointer<Float>, temperature tau: Float, scale: Float, rows T: Int, columns V: Int
) {
    let inv = 1 / tau
    Parallel.forEachChunk(T, minChunk: 1) { rows in
        for t in rows {
            let zs = student + t * V, zt = teacher + t * V, d = dlogits + t * V
            let ms = rowMax(zs, count: V), mt = rowMax(zt, count: V)
            var ss: Float = 0, st: Float = 0
            for j in 0..<V {
                ss = Relaxed.sum(ss, fastExp((zs[j] - ms) * inv))
                st = Relaxed.sum(st, fastExp((zt[j] - mt) * inv))
            }
            // log q_j = (zs_j - ms)/τ - log ss;  log p_j = (zt_j - mt)/τ - log st
            let lss = Float(Foundation.log(Double(ss))), lst = Float(Foundation.log(Double(st)))
            let invSs = 1 / ss, invSt = 1 / st, g = scale * inv
            var acc: Float = 0
            for j in 0..<V {
                let lp = (zt[j] - mt) * inv - lst, lq = (zs[j] - ms) * inv - lss
                let p = fastExp((zt[j] - mt) * inv) * invSt, q = fastExp((zs[j] - ms) * inv) * invSs
                acc = Relaxed.multiplyAdd(p, lp - lq, acc)
                d[j] += g * (q - p)
            }
            kl?[t] = Double(acc)
        }
    }
}

/// Reference of the KL divergence (Double, libm), for tests.
public func klDivergenceReference(student: [Double], teacher: [Double], temperature tau: Double) -> Double {
    func logSoftmax(_ z: [Double]) -> [Double] {
        let m = z.max()!, s = z.reduce(0) { $0 + Foundation.exp(($1 - m) / tau) }
        return z.map { ($0 - m) / tau - Foundation.log(s) }
    }
    let lp = logSoftmax(teacher), lq = logSoftmax(student)
    return zip(lp, lq).reduce(0) { $0 + Foundation.exp($1.0) * ($1.0 - $1.1) }
}
