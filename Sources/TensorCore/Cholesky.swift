import CBLAS

/// Dense symmetric positive-definite factorizations in Float64, through the LAPACK routines OpenBLAS ships
/// (dpotrf, dpotri).
public enum SymmetricPositiveDefinite {
    public struct NotPositiveDefinite: Error, CustomStringConvertible {
        public let description: String
    }

    /// The upper Cholesky factor U of A⁻¹ (A⁻¹ = Uᵀ U), for a symmetric positive-definite A (n, n),
    /// row-major; `a` is overwritten with U (row-major, zeros below the diagonal). Row j of U is
    /// [A_F⁻¹]_{j,·} / sqrt([A_F⁻¹]_{jj}) with F = {j, …, n−1}: the inverse of A restricted to the columns not
    /// yet eliminated, which is what the optimal-brain-surgeon solvers (SparseGPT, GPTQ) need.
    /// Throws when A (or its inverse, numerically) is not positive definite.
    public static func upperCholeskyOfInverse(_ a: inout [Double], n: Int) throws {
        precondition(a.count == n * n, "matrix of \(a.count) values is not \(n) × \(n)")
        if n == 0 { return }
        var nn = Int32(n), info: Int32 = 0
        var lower = Int8(UInt8(ascii: "L"))
        // A symmetric row-major matrix is the same array column-major. Column-major lower L (A = L Lᵀ) ...
        a.withUnsafeMutableBufferPointer { p in dpotrf_(&lower, &nn, p.baseAddress!, &nn, &info, 1) }
        guard info == 0 else { throw NotPositiveDefinite(description: "matrix is not positive definite (dpotrf info \(info))") }
        // ... → A⁻¹ in the column-major lower triangle (the row-major upper one) ...
        a.withUnsafeMutableBufferPointer { p in dpotri_(&lower, &nn, p.baseAddress!, &nn, &info, 1) }
        guard info == 0 else { throw NotPositiveDefinite(description: "matrix is singular (dpotri info \(info))") }
        // ... → A⁻¹ = L' L'ᵀ, column-major lower L'; read row-major, that memory is U = L'ᵀ with A⁻¹ = Uᵀ U.
        a.withUnsafeMutableBufferPointer { p in dpotrf_(&lower, &nn, p.baseAddress!, &nn, &info, 1) }
        guard info == 0 else { throw NotPositiveDefinite(description: "inverse is not numerically positive definite (dpotrf info \(info))") }
        for r in 1..<n { for c in 0..<r { a[r * n + c] = 0 } }
    }
}
