import Foundation
import RealModule

/// Divergences between output distributions: the one implementation that the evaluator (`compress eval
/// --reference`), CPTQuant's measured damage, FinerCut's distances and distillation's loss share (issue 30).
/// Every log-softmax here is `logSoftmaxDouble`'s: max-shifted, `fastExp` summed in Double; the top-k summaries
/// and their bounds are in TopK.swift.

/// out (T × V) = log_softmax(logits) per row in Double: z_j − (m + log Σ_j exp(z_j − m)), m = max_j z_j, the
/// exponentials summed in Double (`logSumExpDouble`).
public func logSoftmaxDouble(
    out: UnsafeMutablePointer<Double>, logits: UnsafePointer<Float>, rows T: Int, columns V: Int
) {
    Parallel.forEachChunk(T, minChunk: 1) { rows in
        for t in rows {
            let z = logits + t * V, o = out + t * V
            let lse = logSumExpDouble(z, count: V)
            for j in 0..<V { o[j] = Double(z[j]) - lse }
        }
    }
}

/// Per row, KL(p ‖ q) = Σ_j p_j (log p_j − log q_j) and, when `reverse` is given, KL(q ‖ p), in nats, with
/// p = softmax(`reference`) and q = softmax(`logits`) (both T × V Float32 logits): each log-softmax as
/// `logSoftmaxDouble` (z − `logSumExpDouble`), the exponentials `fastExpDouble` (1e-15), one fused pass per row,
/// summed in Double. The evaluator's divergence (`compress eval --reference`) and CPTQuant's measured damage.
public func klDivergenceForward(
    kl: UnsafeMutablePointer<Double>, reverse: UnsafeMutablePointer<Double>?, reference: UnsafePointer<Float>,
    logits: UnsafePointer<Float>, rows T: Int, columns V: Int
) {
    Parallel.forEachChunk(T, minChunk: 1) { rows in
        for t in rows {
            let zp = reference + t * V, zq = logits + t * V
            let lp = logSumExpDouble(zp, count: V), lq = logSumExpDouble(zq, count: V)
            var f = 0.0, b = 0.0
            if let reverse {
                for j in 0..<V {
                    let a = Double(zp[j]) - lp, c = Double(zq[j]) - lq
                    f = Relaxed.multiplyAdd(fastExpDouble(a), a - c, f)
                    b = Relaxed.multiplyAdd(fastExpDouble(c), c - a, b)
                }
                reverse[t] = b
            } else {
                for j in 0..<V {
                    let a = Double(zp[j]) - lp
                    f = Relaxed.multiplyAdd(fastExpDouble(a), a - (Double(zq[j]) - lq), f)
                }
            }
            kl[t] = f
        }
    }
}

/// out (T) = JS(P ‖ Q) per row in nats: P = exp(logProbs) a reference distribution given as log-probabilities,
/// Q = softmax(logits). JS = ½ Σ p log(p/m) + ½ Σ q log(q/m), m = (p + q)/2; each row summed in Double.
public func jensenShannonForward(
    out: UnsafeMutablePointer<Double>, logProbs: UnsafePointer<Float>, logits: UnsafePointer<Float>, rows T: Int,
    columns V: Int
) {
    Parallel.forEachChunk(T, minChunk: 1) { rows in
        for t in rows {
            let lp = logProbs + t * V, lg = logits + t * V
            let lse = Float(logSumExp(lg, count: V))
            var s = 0.0
            for j in 0..<V {
                let a = lp[j], b = lg[j] - lse
                let p = fastExp(a), q = fastExp(b), m = 0.5 * (p + q)
                guard m > 0 else { continue }
                let lm = Float.log(m)
                s += Double(p * (a - lm) + q * (b - lm))
            }
            out[t] = max(0, 0.5 * s)
        }
    }
}

/// Reference of `jensenShannonForward`: Double throughout, libm exp and log.
public func jensenShannonForwardReference(
    out: UnsafeMutablePointer<Double>, logProbs: UnsafePointer<Float>, logits: UnsafePointer<Float>, rows T: Int,
    columns V: Int
) {
    for t in 0..<T {
        let lp = logProbs + t * V, lg = logits + t * V
        var mx = -Double.infinity
        for j in 0..<V { mx = max(mx, Double(lg[j])) }
        var z = 0.0
        for j in 0..<V { z += Foundation.exp(Double(lg[j]) - mx) }
        let lse = mx + Foundation.log(z)
        var s = 0.0
        for j in 0..<V {
            let p = Foundation.exp(Double(lp[j])), q = Foundation.exp(Double(lg[j]) - lse), m = 0.5 * (p + q)
            if p > 0 { s += p * Foundation.log(p / m) }
            if q > 0 { s += q * Foundation.log(q / m) }
        }
        out[t] = 0.5 * s
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
