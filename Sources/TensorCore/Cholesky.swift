import CBLAS

/// Dense symmetric positive-definite factorizations in Float64, through the LAPACK routines OpenBLAS ships
/// (dpotrf, dpotri, through TensorCore/LAPACK.swift).
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
        do {
            try LAPACK.inverseSPD(&a, n: n)
            try LAPACK.choleskyUpper(&a, n: n)
        } catch let e as LAPACKError {
            throw NotPositiveDefinite(
                description:
                    "matrix (or its inverse, numerically) is not positive definite (\(e.routine) info \(e.info))")
        }
    }
}
