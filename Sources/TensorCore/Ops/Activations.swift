import Foundation
import RealModule

/// Elementwise ops of decoder blocks: SiLU-gated MLP activation, GELU, residual add.

/// out (N) = silu(gate (N)) ⊙ up (N), silu(x) = x · sigmoid(x). `out` may alias `gate` or `up`.
public func swigluForward(
    out: UnsafeMutablePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>, count N: Int
) {
    Parallel.forEachChunk(N, minChunk: 16384) { r in
        if SIMDKernels.gated(out: out, gate: gate, up: up, range: r, gelu: false) { return }
        for i in r {
            let g = gate[i]
            out[i] = g / (1 + fastExp(-g)) * up[i]
        }
    }
}

/// Reference of `swigluForward` (libm exp, Double).
public func swigluForwardReference(
    out: UnsafeMutablePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>, count N: Int
) {
    for i in 0..<N {
        let g = Double(gate[i])
        out[i] = Float(g / (1 + Foundation.exp(-g)) * Double(up[i]))
    }
}

/// out (N) = gelu_tanh(gate (N)) ⊙ up (N): the GELU-gated MLP of Gemma (transformers `gelu_pytorch_tanh`,
/// GeGLU with the tanh approximation; Shazeer 2020, "GLU Variants Improve Transformer", eq. 6).
/// `out` may alias `gate` or `up`.
public func geluTanhGatedForward(
    out: UnsafeMutablePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>, count N: Int
) {
    Parallel.forEachChunk(N, minChunk: 16384) { r in
        if SIMDKernels.gated(out: out, gate: gate, up: up, range: r, gelu: true) { return }
        for i in r {
            let x = gate[i], u = 0.797_884_56 * (x + 0.044_715 * x * x * x)
            out[i] = 0.5 * x * (2 - 2 / (fastExp(2 * u) + 1)) * up[i]
        }
    }
}

/// Reference of `geluTanhGatedForward` (Double, libm tanh).
public func geluTanhGatedForwardReference(
    out: UnsafeMutablePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>, count N: Int
) {
    for i in 0..<N {
        let x = Double(gate[i])
        out[i] = Float(
            0.5 * x * (1 + Foundation.tanh((2 / Double.pi).squareRoot() * (x + 0.044715 * x * x * x))) * Double(up[i]))
    }
}

/// Backward of `geluTanhGatedForward`: dgate += dout · up · gelu_tanh'(gate), dup += dout · gelu_tanh(gate)
/// (gelu_tanh' as in `geluBackward`). Accumulates.
public func geluTanhGatedBackward(
    dgate: UnsafeMutablePointer<Float>, dup: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>,
    gate: UnsafePointer<Float>, up: UnsafePointer<Float>, count N: Int
) {
    Parallel.forEachChunk(N, minChunk: 16384) { r in
        for i in r {
            let x = gate[i], c: Float = 0.797_884_56
            let t = 1 - 2 / (fastExp(2 * c * (x + 0.044_715 * x * x * x)) + 1)
            let g = 0.5 * x * (1 + t), dg = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044_715 * x * x)
            let d = dout[i]
            dgate[i] += d * up[i] * dg
            dup[i] += d * g
        }
    }
}

/// GELU variants: exact (erf), as Hugging Face "gelu", and the tanh approximation ("gelu_pytorch_tanh").
public enum GELUKind: String, Sendable { case exact = "gelu", tanh = "gelu_pytorch_tanh" }

/// out (N) = gelu(inp (N)). `out` may alias `inp`.
public func geluForward(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, count N: Int, kind: GELUKind) {
    Parallel.forEachChunk(N, minChunk: 16384) { r in
        switch kind {
        case .exact:
            for i in r { let x = inp[i]; out[i] = 0.5 * x * (1 + Float.erf(x * 0.707_106_77)) }
        case .tanh:
            for i in r {
                let x = inp[i]
                let u = 0.797_884_56 * (x + 0.044_715 * x * x * x)
                // tanh(u) = 1 - 2 / (exp(2u) + 1), vectorisable through fastExp.
                out[i] = 0.5 * x * (2 - 2 / (fastExp(2 * u) + 1))
            }
        }
    }
}

/// Reference of `geluForward` (Double, libm).
public func geluForwardReference(
    out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, count N: Int, kind: GELUKind
) {
    for i in 0..<N {
        let x = Double(inp[i])
        switch kind {
        case .exact: out[i] = Float(0.5 * x * (1 + Foundation.erf(x / 2.0.squareRoot())))
        case .tanh:
            out[i] = Float(0.5 * x * (1 + Foundation.tanh((2 / Double.pi).squareRoot() * (x + 0.044715 * x * x * x))))
        }
    }
}

/// acc (N) += x (N): the residual connection.
public func residualAdd(_ acc: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, count N: Int) {
    Parallel.forEachChunk(N, minChunk: 65536) { r in
        for i in r { acc[i] += x[i] }
    }
}

/// Backward of `swigluForward` (gate and up are the forward's inputs): with s = sigmoid(g),
///   dgate += dout · up · s·(1 + g·(1 - s)),   dup += dout · g·s.   Accumulates.
public func swigluBackward(
    dgate: UnsafeMutablePointer<Float>, dup: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>,
    gate: UnsafePointer<Float>, up: UnsafePointer<Float>, count N: Int
) {
    Parallel.forEachChunk(N, minChunk: 16384) { r in
        for i in r {
            let g = gate[i], s = 1 / (1 + fastExp(-g)), d = dout[i]
            dgate[i] += d * up[i] * s * (1 + g * (1 - s))
            dup[i] += d * g * s
        }
    }
}

/// Backward of `geluForward`: dinp += dout · gelu'(inp). Accumulates.
///   exact: gelu'(x) = Φ(x) + x·φ(x);   tanh: with u = √(2/π)(x + 0.044715x³), t = tanh u,
///   gelu'(x) = ½(1 + t) + ½x(1 - t²)·√(2/π)(1 + 3·0.044715x²)
public func geluBackward(
    dinp: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, inp: UnsafePointer<Float>, count N: Int,
    kind: GELUKind
) {
    Parallel.forEachChunk(N, minChunk: 16384) { r in
        switch kind {
        case .exact:
            for i in r {
                let x = inp[i]
                let cdf = 0.5 * (1 + Float.erf(x * 0.707_106_77))
                let pdf = 0.398_942_28 * fastExp(-0.5 * x * x)
                dinp[i] += dout[i] * (cdf + x * pdf)
            }
        case .tanh:
            for i in r {
                let x = inp[i]
                let u = 0.797_884_56 * (x + 0.044_715 * x * x * x)
                let t = 1 - 2 / (fastExp(2 * u) + 1)
                let du = 0.797_884_56 * (1 + 3 * 0.044_715 * x * x)
                dinp[i] += dout[i] * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du)
            }
        }
    }
}
