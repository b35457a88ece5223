import Foundation
import RealModule

/// Row-wise distances between two sets of hidden states, used as intermediate (feature) distillation losses.

/// Cosine distance per row: d[t] = 1 - a_t·b_t / (max(‖a_t‖, ε) · max(‖b_t‖, ε)), ε = 1e-8 (as PyTorch's
/// cosine_similarity), and its gradient with respect to a, scaled:
///   da_t += scale · -(b_t / (‖a_t‖‖b_t‖) - cos_t · a_t / ‖a_t‖²)
/// b is a constant (the teacher). d (T) is written in Double when given.
public func cosineDistanceBackward(
    da: UnsafeMutablePointer<Float>?, distance: UnsafeMutablePointer<Double>?, a: UnsafePointer<Float>,
    b: UnsafePointer<Float>,
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
    da: UnsafeMutablePointer<Float>?, error: UnsafeMutablePointer<Double>?, a: UnsafePointer<Float>,
    b: UnsafePointer<Float>,
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

// MARK: - Distances between output distributions (pruning criteria; the divergences are in Divergences.swift)

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
