// Canonical correlation analysis (Hotelling 1936) with the SVCCA reduction (Raghu et al., "SVCCA: Singular
// Vector Canonical Correlation Analysis for Deep Learning Dynamics and Interpretability", 2017), for CPTQuant's
// CMPQ estimator.
//
// For samples X (N × p) and Y (N × q), columns centered, Σxx = XᵀX/(N−1), Σyy, Σxy likewise. The canonical
// correlations ρ₁ ≥ ρ₂ ≥ … are the singular values of Σxx^(−1/2) Σxy Σyy^(−1/2); with Σxx = LxLxᵀ and
// Σyy = LyLyᵀ (Cholesky), they are the square roots of the eigenvalues of M Mᵀ, M = Lx⁻¹ Σxy Ly⁻ᵀ.
// A ridge λ·mean(diag Σ) added to each diagonal keeps the whitening defined when a covariance is singular.
// SVCCA first projects each side onto its top d principal directions (computed from the N × N Gram matrix,
// so it costs O(N²·p) whatever p is); with d well below N the correlations are not trivially 1.
// All arithmetic is in Double.

/// Eigenvalues and eigenvectors of a symmetric n × n matrix (row-major) by cyclic Jacobi rotations.
/// Returns eigenvalues in descending order and the eigenvectors as the columns of a row-major n × n matrix.
public func symmetricEigen(_ a: [Double], n: Int) -> (values: [Double], vectors: [Double]) {
    precondition(a.count == n * n, "expected a \(n) × \(n) matrix")
    var m = a, v = [Double](repeating: 0, count: n * n)
    for i in 0..<n { v[i * n + i] = 1 }
    for _ in 0..<100 {
        var off = 0.0, total = 0.0
        for i in 0..<n {
            for j in 0..<n { total += m[i * n + j] * m[i * n + j]; if i != j { off += m[i * n + j] * m[i * n + j] } }
        }
        if off <= 1e-30 * max(total, 1e-300) { break }
        for p in 0..<n {
            for q in (p + 1)..<n where m[p * n + q] != 0 {
                let app = m[p * n + p], aqq = m[q * n + q], apq = m[p * n + q]
                let theta = (aqq - app) / (2 * apq)
                let t = (theta >= 0 ? 1 : -1) / (abs(theta) + (theta * theta + 1).squareRoot())
                let c = 1 / (t * t + 1).squareRoot(), s = t * c
                for k in 0..<n {
                    let mkp = m[k * n + p], mkq = m[k * n + q]
                    m[k * n + p] = c * mkp - s * mkq
                    m[k * n + q] = s * mkp + c * mkq
                }
                for k in 0..<n {
                    let mpk = m[p * n + k], mqk = m[q * n + k]
                    m[p * n + k] = c * mpk - s * mqk
                    m[q * n + k] = s * mpk + c * mqk
                }
                for k in 0..<n {
                    let vkp = v[k * n + p], vkq = v[k * n + q]
                    v[k * n + p] = c * vkp - s * vkq
                    v[k * n + q] = s * vkp + c * vkq
                }
            }
        }
    }
    let order = (0..<n).sorted { m[$0 * n + $0] > m[$1 * n + $1] }
    var vectors = [Double](repeating: 0, count: n * n)
    for (j, src) in order.enumerated() { for i in 0..<n { vectors[i * n + j] = v[i * n + src] } }
    return (order.map { m[$0 * n + $0] }, vectors)
}

/// Lower-triangular L with L Lᵀ = a (symmetric positive definite, n × n); nil when not positive definite.
func cholesky(_ a: [Double], n: Int) -> [Double]? {
    var l = [Double](repeating: 0, count: n * n)
    for i in 0..<n {
        for j in 0...i {
            var s = a[i * n + j]
            for k in 0..<j { s -= l[i * n + k] * l[j * n + k] }
            if i == j {
                guard s > 0 else { return nil }
                l[i * n + i] = s.squareRoot()
            } else {
                l[i * n + j] = s / l[j * n + j]
            }
        }
    }
    return l
}

/// Centers the columns of an N × p row-major matrix.
func centered(_ x: [Double], rows n: Int, columns p: Int) -> [Double] {
    var out = x
    for j in 0..<p {
        var mean = 0.0
        for i in 0..<n { mean += x[i * p + j] }
        mean /= Double(n)
        for i in 0..<n { out[i * p + j] -= mean }
    }
    return out
}

/// Canonical correlations (descending, min(p, q) of them) between the rows of X (N × p) and Y (N × q).
public func canonicalCorrelations(_ x: [Double], _ y: [Double], rows n: Int, ridge: Double = 0) -> [Double] {
    precondition(n >= 2 && x.count % n == 0 && y.count % n == 0, "CCA needs N ≥ 2 rows and whole rows")
    let p = x.count / n, q = y.count / n
    let xc = centered(x, rows: n, columns: p), yc = centered(y, rows: n, columns: q)
    func cov(_ a: [Double], _ pa: Int, _ b: [Double], _ pb: Int) -> [Double] {
        var c = [Double](repeating: 0, count: pa * pb)
        for r in 0..<n {
            for i in 0..<pa { let ai = a[r * pa + i]; for j in 0..<pb { c[i * pb + j] += ai * b[r * pb + j] } }
        }
        return c.map { $0 / Double(n - 1) }
    }
    func whitener(_ s: [Double], _ d: Int) -> [Double] {
        var s = s
        let mean = (0..<d).reduce(0.0) { $0 + s[$1 * d + $1] } / Double(d)
        let add = max(ridge * mean, 1e-12 * max(mean, 1e-300))
        for i in 0..<d { s[i * d + i] += add }
        guard let l = cholesky(s, n: d) else {
            preconditionFailure("covariance is not positive definite even with a ridge")
        }
        return l
    }
    let lx = whitener(cov(xc, p, xc, p), p), ly = whitener(cov(yc, q, yc, q), q)
    var m = cov(xc, p, yc, q)  // p × q
    // m ← Lx⁻¹ m (forward substitution down each column).
    for j in 0..<q {
        for i in 0..<p {
            var s = m[i * q + j]
            for k in 0..<i { s -= lx[i * p + k] * m[k * q + j] }
            m[i * q + j] = s / lx[i * p + i]
        }
    }
    // m ← m Ly⁻ᵀ, i.e. each row r solves Ly z = rᵀ.
    for i in 0..<p {
        for j in 0..<q {
            var s = m[i * q + j]
            for k in 0..<j { s -= ly[j * q + k] * m[i * q + k] }
            m[i * q + j] = s / ly[j * q + j]
        }
    }
    // Eigenvalues of the smaller of M Mᵀ and Mᵀ M.
    let d = min(p, q)
    var g = [Double](repeating: 0, count: d * d)
    if p <= q {
        for i in 0..<p {
            for j in 0..<p { var s = 0.0; for k in 0..<q { s += m[i * q + k] * m[j * q + k] }; g[i * p + j] = s }
        }
    } else {
        for i in 0..<q {
            for j in 0..<q { var s = 0.0; for k in 0..<p { s += m[k * q + i] * m[k * q + j] }; g[i * q + j] = s }
        }
    }
    return symmetricEigen(g, n: d).values.map { min(1, max(0, $0)).squareRoot() }
}

/// SVCCA's reduction: the scores (N × d) of the rows of X (N × p) on its top d principal directions.
public func principalScores(_ x: [Double], rows n: Int, dimensions d: Int) -> [Double] {
    let p = x.count / n
    precondition(d >= 1 && d <= n, "principal dimensions \(d) outside 1...\(n)")
    let xc = centered(x, rows: n, columns: p)
    var gram = [Double](repeating: 0, count: n * n)
    for i in 0..<n {
        for j in i..<n {
            var s = 0.0; for k in 0..<p { s += xc[i * p + k] * xc[j * p + k] }; gram[i * n + j] = s; gram[j * n + i] = s
        }
    }
    let (values, vectors) = symmetricEigen(gram, n: n)
    var out = [Double](repeating: 0, count: n * d)
    for j in 0..<d {
        let sigma = max(values[j], 0).squareRoot()
        for i in 0..<n { out[i * d + j] = vectors[i * n + j] * sigma }
    }
    return out
}
