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
