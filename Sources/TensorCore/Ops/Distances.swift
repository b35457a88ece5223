import Foundation
import RealModule

/// Row-wise distances between two sets of hidden states, used as intermediate (feature) distillation losses.

/// Cosine distance per row: d[t] = 1 - a_t·b_t / (max(‖a_t‖, ε) · max(‖b_t‖, ε)), ε = 1e-8 (as PyTorch's
/// cosine_similarity), and its gradient with respect to a, scaled:
///   da_t += scale · -(b_t / (‖a_t‖‖b_t‖) - cos_t · a_t / ‖a_t‖²)
/// b is a constant (the teacher). d (T) is written in Double when given.
public func cosineDistanceBackward(
    da: UnsafeMutablePointer<Float>?, distance: UnsafeMutablePointer<Double>?, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
    scale: Float, rows T: Int, channels C: Int
) {
    Parallel.forEachChunk(T, minChunk: 16) { rows in
        for t in rows {
            let x = a + t * C, y = b + t * C
            var xy: Float = 0, xx: Float = 0, yy: Float = 0
            for c in 0..<C {
                xy = Relaxed.multiplyAdd(x[c], y[c], xy)
                xx = Relaxed.multiplyAdd(x[c], x[c], xx)
                yy = Relaxed.multiplyAdd(y[c], y[c], yy)
            }
            let nx = max(xx.squareRoot(), 1e-8), ny = max(yy.squareRoot(), 1e-8)
            let cos = xy / (nx * ny)
            distance?[t] = Double(1 - cos)
            guard let da else { continue }
            let d = da + t * C, u = scale / (nx * ny), w = scale * cos / (nx * nx)
            for c in 0..<C { d[c] -= u * y[c] - w * x[c] }
        }
    }
}

/// Squared error per row: e[t] = Σ_c (a - b)², and da += scale · 2(a - b). b is a constant.
public func squaredErrorBackward(
    da: UnsafeMutablePointer<Float>?, error: UnsafeMutablePointer<Double>?, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
    scale: Float, rows T: Int, channels C: Int
) {
    Parallel.forEachChunk(T, minChunk: 16) { rows in
        for t in rows {
            let x = a + t * C, y = b + t * C
            var s: Float = 0
            for c in 0..<C { let e = x[c] - y[c]; s = Relaxed.multiplyAdd(e, e, s) }
            error?[t] = Double(s)
            guard let da else { continue }
            let d = da + t * C
            for c in 0..<C { d[c] += scale * 2 * (x[c] - y[c]) }
        }
    }
}

// MARK: - Distances between output distributions (pruning criteria)

/// out (T) = JS(P ‖ Q) per row in nats: P = exp(logProbs) a reference distribution given as log-probabilities,
/// Q = softmax(logits). JS = ½ Σ p log(p/m) + ½ Σ q log(q/m), m = (p + q)/2; each row summed in Double.
public func jensenShannonForward(
    out: UnsafeMutablePointer<Double>, logProbs: UnsafePointer<Float>, logits: UnsafePointer<Float>, rows T: Int, columns V: Int
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
    out: UnsafeMutablePointer<Double>, logProbs: UnsafePointer<Float>, logits: UnsafePointer<Float>, rows T: Int, columns V: Int
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

/// out (T) = arccos(cos(a_t, b_t)) / π per row of two (T, V) matrices: the angular distance in [0, 1].
public func angularDistanceForward(
    out: UnsafeMutablePointer<Double>, a: UnsafePointer<Float>, b: UnsafePointer<Float>, rows T: Int, columns V: Int
) {
    Parallel.forEachChunk(T, minChunk: 1) { rows in
        for t in rows {
            let x = a + t * V, y = b + t * V
            var xy = 0.0, xx = 0.0, yy = 0.0
            for j in 0..<V {
                xy += Double(x[j]) * Double(y[j]); xx += Double(x[j]) * Double(x[j]); yy += Double(y[j]) * Double(y[j])
            }
            let cos = xx > 0 && yy > 0 ? xy / (xx * yy).squareRoot() : 1
            out[t] = Foundation.acos(min(1, max(-1, cos))) / Double.pi
        }
    }
}
