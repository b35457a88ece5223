import Foundation

/// Rotary position embedding, Hugging Face "rotate half" convention: for each head, the pairs are
/// (x[i], x[i + D/2]) for i < D/2, rotated by angle pos · θ^(-2i/D):
///   out[i]       = x[i] cos - x[i + D/2] sin
///   out[i + D/2] = x[i + D/2] cos + x[i] sin
/// The angle table is computed as transformers does (inverse frequencies and products in Float32), so
/// positions far into a 2048-token window round the same way.
public struct RotaryTable: Sendable {
    public let headDim: Int
    public let positions: Int
    /// (positions, D/2) tables.
    public let cos: [Float]
    public let sin: [Float]

    public init(headDim D: Int, theta: Double, positions P: Int) {
        precondition(D % 2 == 0, "rotary head dimension must be even, got \(D)")
        headDim = D
        positions = P
        let half = D / 2
        let invFreq = (0..<half).map { i -> Float in 1 / Foundation.pow(Float(theta), Float(2 * i) / Float(D)) }
        var c = [Float](repeating: 0, count: P * half), s = c
        for p in 0..<P {
            for i in 0..<half {
                let angle = Double(Float(p) * invFreq[i])
                c[p * half + i] = Float(Foundation.cos(angle))
                s[p * half + i] = Float(Foundation.sin(angle))
            }
        }
        cos = c
        sin = s
    }
}

/// Rotates x (T, H, D) in place; token t sits at position t.
public func rotaryForward(_ x: UnsafeMutablePointer<Float>, rows T: Int, heads H: Int, table: RotaryTable) {
    rotate(x, rows: T, heads: H, table: table, direction: 1)
}

/// Rotates every head's pairs by direction × angle (direction +1 forward, -1 for the backward).
private func rotate(_ x: UnsafeMutablePointer<Float>, rows T: Int, heads H: Int, table: RotaryTable, direction: Float) {
    precondition(T <= table.positions, "rotary table covers \(table.positions) positions, asked for \(T)")
    let D = table.headDim, half = D / 2
    table.cos.withUnsafeBufferPointer { cosTable in
        table.sin.withUnsafeBufferPointer { sinTable in
            let cosB = cosTable.baseAddress!, sinB = sinTable.baseAddress!
            Parallel.forEachChunk(T, minChunk: 16) { rows in
                for t in rows {
                    let cs = cosB + t * half, sn = sinB + t * half
                    for h in 0..<H {
                        let v = x + (t * H + h) * D
                        for i in 0..<half {
                            let a = v[i], b = v[i + half], s = direction * sn[i]
                            v[i] = a * cs[i] - b * s
                            v[i + half] = b * cs[i] + a * s
                        }
                    }
                }
            }
        }
    }
}

/// Reference of `rotaryForward`: angles in Double from scratch, out of place.
public func rotaryForwardReference(
    _ x: UnsafeMutablePointer<Float>, rows T: Int, heads H: Int, headDim D: Int, theta: Double
) {
    let half = D / 2
    for t in 0..<T {
        for h in 0..<H {
            let v = x + (t * H + h) * D
            let old = (0..<D).map { Double(v[$0]) }
            for i in 0..<half {
                let angle = Double(t) * Foundation.pow(theta, -Double(2 * i) / Double(D))
                v[i] = Float(old[i] * Foundation.cos(angle) - old[i + half] * Foundation.sin(angle))
                v[i + half] = Float(old[i + half] * Foundation.cos(angle) + old[i] * Foundation.sin(angle))
            }
        }
    }
}

/// Backward of `rotaryForward`, in place on the gradient g (T, H, D): the rotation is orthogonal, so its
/// backward is the rotation by the opposite angle:
///   dx[i] = g[i] cos + g[i + D/2] sin,   dx[i + D/2] = g[i + D/2] cos - g[i] sin
public func rotaryBackward(_ g: UnsafeMutablePointer<Float>, rows T: Int, heads H: Int, table: RotaryTable) {
    rotate(g, rows: T, heads: H, table: table, direction: -1)
}
