import CBLAS

/// A LAPACK routine reported failure: `info` < 0 names a bad argument, > 0 a numerical failure (a matrix not
/// positive definite at that order for Cholesky, no convergence for the SVD / eigensolver).
public struct LAPACKError: Error, CustomStringConvertible {
    public let routine: String
    public let info: Int
    public var description: String {
        info > 0 && routine.hasSuffix("potrf")
            ? "\(routine): the matrix is not positive definite (leading minor of order \(info) is not positive)"
            : "\(routine) failed with info = \(info)"
    }
}

/// Dense linear algebra on row-major Float64 matrices through OpenBLAS's bundled LAPACK (Fortran interface).
///
/// LAPACK is column-major; a row-major matrix read column-major is its transpose. Each wrapper states how it
/// uses that, so callers never think about it. Sizes are limited to what a 32-bit `blasint` indexes.
public enum LAPACK {
    /// Cholesky factorization of a symmetric positive-definite n × n matrix `a` (row-major), in place:
    /// on return `a` holds the upper-triangular U with A = Uᵀ·U (strict lower triangle set to 0).
    /// Throws `LAPACKError` when A is not positive definite.
    public static func choleskyUpper(_ a: inout [Double], n: Int) throws {
        precondition(a.count == n * n, "choleskyUpper: \(a.count) values for \(n) × \(n)")
        // Column-major lower factor L (A = L·Lᵀ) of Aᵀ = A is, read row-major, U = Lᵀ.
        try potrf(&a, n: n, uplo: "L")
        for i in 0..<n { for j in 0..<i { a[i * n + j] = 0 } }
    }

    /// Cholesky factorization in place as the lower-triangular L with A = L·Lᵀ (strict upper triangle set to 0).
    public static func choleskyLower(_ a: inout [Double], n: Int) throws {
        precondition(a.count == n * n, "choleskyLower: \(a.count) values for \(n) × \(n)")
        try potrf(&a, n: n, uplo: "U")
        for i in 0..<n { for j in (i + 1)..<max(i + 1, n) { a[i * n + j] = 0 } }
    }

    /// The inverse of a symmetric positive-definite n × n matrix (row-major), in place, both triangles filled.
    public static func inverseSPD(_ a: inout [Double], n: Int) throws {
        precondition(a.count == n * n, "inverseSPD: \(a.count) values for \(n) × \(n)")
        try potrf(&a, n: n, uplo: "L")
        var N = blasint(n), lda = blasint(max(n, 1)), info: blasint = 0
        var uplo = CChar(UInt8(ascii: "L"))
        dpotri_(&uplo, &N, &a, &lda, &info, 1)
        guard info == 0 else { throw LAPACKError(routine: "dpotri", info: Int(info)) }
        // Column-major lower = row-major upper holds the inverse; mirror it.
        for i in 0..<n { for j in 0..<i { a[i * n + j] = a[j * n + i] } }
    }

    private static func potrf(_ a: inout [Double], n: Int, uplo u: Character) throws {
        guard n > 0 else { return }
        var N = blasint(n), lda = blasint(n), info: blasint = 0
        var uplo = CChar(u.asciiValue!)
        dpotrf_(&uplo, &N, &a, &lda, &info, 1)
        guard info == 0 else { throw LAPACKError(routine: "dpotrf", info: Int(info)) }
    }

    /// Thin singular value decomposition A = U·diag(S)·Vᵀ of a row-major m × n matrix, r = min(m, n):
    /// `u` is m × r, `s` has r values in descending order, `vt` is r × n, all row-major (divide and conquer,
    /// LAPACK dgesdd).
    public static func svd(
        _ a: [Double], rows m: Int, columns n: Int
    ) throws -> (u: [Double], s: [Double], vt: [Double]) {
        precondition(a.count == m * n && m > 0 && n > 0, "svd: \(a.count) values for \(m) × \(n)")
        // Column-major, the buffer is Aᵀ (n × m) = U₁·S·V₁ᵀ, so A = V₁·S·U₁ᵀ. With jobz = "S", U₁ (n × r,
        // column-major) read row-major is the r × n matrix U₁ᵀ = Vᵀ, and V₁ᵀ (r × m, column-major) read row-major
        // is the m × r matrix V₁ = U: the output buffers are already the row-major factors of A.
        let r = min(m, n)
        var at = a
        var M = blasint(n), N = blasint(m), lda = blasint(n), ldu = blasint(n), ldvt = blasint(r), info: blasint = 0
        var s = [Double](repeating: 0, count: r)
        var u1 = [Double](repeating: 0, count: n * r), vt1 = [Double](repeating: 0, count: r * m)
        var iwork = [blasint](repeating: 0, count: 8 * r)
        var jobz = CChar(UInt8(ascii: "S"))
        var query = [Double](repeating: 0, count: 1), lwork: blasint = -1
        dgesdd_(&jobz, &M, &N, &at, &lda, &s, &u1, &ldu, &vt1, &ldvt, &query, &lwork, &iwork, &info, 1)
        guard info == 0 else { throw LAPACKError(routine: "dgesdd", info: Int(info)) }
        lwork = blasint(query[0])
        var work = [Double](repeating: 0, count: Int(lwork))
        dgesdd_(&jobz, &M, &N, &at, &lda, &s, &u1, &ldu, &vt1, &ldvt, &work, &lwork, &iwork, &info, 1)
        guard info == 0 else { throw LAPACKError(routine: "dgesdd", info: Int(info)) }
        return (u: vt1, s: s, vt: u1)
    }

    /// Eigen-decomposition of a symmetric n × n matrix (row-major): eigenvalues in ascending order, and
    /// `vectors` n × n row-major whose row i is the unit eigenvector of value i (LAPACK dsyevd).
    public static func symmetricEigen(_ a: [Double], n: Int) throws -> (values: [Double], vectors: [Double]) {
        precondition(a.count == n * n && n > 0, "symmetricEigen: \(a.count) values for \(n) × \(n)")
        var v = a
        var N = blasint(n), lda = blasint(n), info: blasint = 0
        var w = [Double](repeating: 0, count: n)
        var jobz = CChar(UInt8(ascii: "V")), uplo = CChar(UInt8(ascii: "L"))
        var q = [Double](repeating: 0, count: 1), iq = [blasint](repeating: 0, count: 1)
        var lwork: blasint = -1, liwork: blasint = -1
        dsyevd_(&jobz, &uplo, &N, &v, &lda, &w, &q, &lwork, &iq, &liwork, &info, 1, 1)
        guard info == 0 else { throw LAPACKError(routine: "dsyevd", info: Int(info)) }
        lwork = blasint(q[0]); liwork = iq[0]
        var work = [Double](repeating: 0, count: Int(lwork)), iwork = [blasint](repeating: 0, count: Int(liwork))
        dsyevd_(&jobz, &uplo, &N, &v, &lda, &w, &work, &lwork, &iwork, &liwork, &info, 1, 1)
        guard info == 0 else { throw LAPACKError(routine: "dsyevd", info: Int(info)) }
        // Column-major column i (eigenvector i) is contiguous: row i read row-major.
        return (w, v)
    }
}
