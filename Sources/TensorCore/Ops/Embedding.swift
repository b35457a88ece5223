/// Token embedding: a row gather from the table.

/// out (T, C) = table (V, C)[ids (T)]. Ids must already be validated to lie in 0..<V.
public func embeddingForward(
    out: UnsafeMutablePointer<Float>, ids: UnsafePointer<Int32>, table: UnsafePointer<Float>,
    rows T: Int, channels C: Int
) {
    Parallel.forEachChunk(T, minChunk: 64) { rows in
        for t in rows { (out + t * C).update(from: table + Int(ids[t]) * C, count: C) }
    }
}

/// Reference of `embeddingForward`: element by element.
public func embeddingForwardReference(
    out: UnsafeMutablePointer<Float>, ids: UnsafePointer<Int32>, table: UnsafePointer<Float>,
    rows T: Int, channels C: Int
) {
    for t in 0..<T { for c in 0..<C { out[t * C + c] = table[Int(ids[t]) * C + c] } }
}

/// Backward of `embeddingForward`: dtable[ids[t]] += dout[t]. Accumulates. Work is split by channel
/// ranges (every worker sees every token), so repeated ids never race and the sum order is fixed.
public func embeddingBackward(
    dtable: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, ids: UnsafePointer<Int32>,
    rows T: Int, channels C: Int
) {
    Parallel.forEachChunk(C, minChunk: 64) { channels in
        for t in 0..<T {
            let dst = dtable + Int(ids[t]) * C, src = dout + t * C
            for c in channels { dst[c] += src[c] }
        }
    }
}
