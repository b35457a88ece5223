/// Gates: a learned multiplier per group of consecutive features (a head's D channels, one MLP neuron, one
/// hidden channel), the differentiable switch of structured pruning (VTrans's masks; a pruned unit is a gate
/// at 0).

/// out (T, G·S) = inp (T, G·S) ⊙ gate (G) broadcast over each group of S features; with `accumulate`,
/// out += that product instead (a gated residual add). `out` may equal `inp` when not accumulating.
public func gateForward(
    out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, gate: UnsafePointer<Float>,
    rows T: Int, groups G: Int, groupSize S: Int, accumulate: Bool = false
) {
    let width = G * S
    Parallel.forEachChunk(T, minChunk: 16) { rows in
        for t in rows {
            let o = out + t * width, x = inp + t * width
            for g in 0..<G {
                let z = gate[g], base = g * S
                if accumulate {
                    for j in 0..<S { o[base + j] += z * x[base + j] }
                } else {
                    for j in 0..<S { o[base + j] = z * x[base + j] }
                }
            }
        }
    }
}

/// Reference of `gateForward`: element by element, Double.
public func gateForwardReference(
    out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, gate: UnsafePointer<Float>,
    rows T: Int, groups G: Int, groupSize S: Int, accumulate: Bool = false
) {
    for t in 0..<T {
        for g in 0..<G {
            for j in 0..<S {
                let i = t * G * S + g * S + j
                let v = Double(gate[g]) * Double(inp[i])
                out[i] = accumulate ? Float(Double(out[i]) + v) : Float(v)
            }
        }
    }
}

/// Backward of `gateForward` (either mode), accumulating into what is given:
///   dinp (T, G·S) += dout ⊙ gate;   dgate (G) += Σ_t Σ_{j in group} dout ⊙ inp
/// The gate sum is reduced per worker over row ranges, then added in worker order (deterministic).
public func gateBackward(
    dinp: UnsafeMutablePointer<Float>?, dgate: UnsafeMutablePointer<Float>?, dout: UnsafePointer<Float>,
    inp: UnsafePointer<Float>, gate: UnsafePointer<Float>, rows T: Int, groups G: Int, groupSize S: Int
) {
    let width = G * S
    if let dinp {
        Parallel.forEachChunk(T, minChunk: 16) { rows in
            for t in rows {
                let d = dinp + t * width, y = dout + t * width
                for g in 0..<G { let z = gate[g], base = g * S; for j in 0..<S { d[base + j] += z * y[base + j] } }
            }
        }
    }
    guard let dgate else { return }
    accumulatingOverRows(T, width: G, { rows, acc in
        for t in rows {
            let y = dout + t * width, x = inp + t * width
            for g in 0..<G {
                var s: Float = 0
                let base = g * S
                for j in 0..<S { s += y[base + j] * x[base + j] }
                acc[g] += s
            }
        }
    }, finish: { sum in for g in 0..<G { dgate[g] += sum[g] } })
}
