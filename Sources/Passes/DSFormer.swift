// DSFormer: dense × sparse weight factorization.
//
// Paper: R. Chand, Y. Prabhu, P. Kumar, "DSFormer: Effective Compression of Text-Transformers by Dense-Sparse
// Weight Factorization", 2023 (arXiv 2312.13211; no official code).
//
// A weight W (OC × C) is replaced by W ≈ D · S, D dense (OC × k) and S (k × C) semi-structured sparse with
// exactly s nonzeros in every column: each input column w_c ≈ D s_c is a combination of s of the k dense
// atoms (columns of D). Parameters OC·k + s·C; storage D (float32) plus S's kept values (float32) and their
// row indices (one byte for k ≤ 256, else two).
//
// Initialisation (this pass) minimises ‖W − D S‖_F over D and column-s-sparse S by alternation:
//   start:   W = U Σ Vᵀ (leading triplets from the eigen-decomposition of the smaller Gram matrix WᵀW or
//            WWᵀ in Float64, Passes/LowRank.swift);  D = U_k (orthonormal);  S = top_s(U_kᵀ W) per column (for an
//            orthonormal D this is the exact best s-sparse code of every column);
//   D-step:  D ← (W Sᵀ + ε D)(S Sᵀ + ε I)⁻¹      (least squares in D given S; the small proximal ε keeps
//            atoms no column uses where they were and the system positive definite);
//   S-step:  G = DᵀD, B = DᵀW;  z_c = G⁻¹ b_c (least squares with all atoms);  support I_c = the s atoms with
//            the largest |z_rc|·‖d_r‖;  s_c on I_c = G_{I I}⁻¹ b_{I c} (least-squares refit on the support);
//   `iterations` alternations; the best iterate by ‖W − D S‖_F is kept (a D-step cannot increase the error,
//   a thresholding S-step can, and a later alternation often recovers).
// The error is reported against the truncated SVD with the largest rank r of no more parameters,
// r = ⌊(OC·k + s·C) / (OC + C)⌋, whose error is Σ_{i>r} σ_i² (Eckart–Young).
// Sizes: `rank` k and `nonzeros` s, or `parameter_ratio` ρ (factorized / dense parameters per weight) with
// `density` δ = s / k: the largest k ≤ min(OC, C) with OC·k + s·C ≤ ρ·OC·C, s = max(1, round(δ k)).
//
// Training: the Straight-Through Factorizer (Training/StraightThroughFactorizer.swift), enabled with
// `stf: true` on a following distill stage; without it, distillation trains D and S's values on the fixed
// support (the paper's comparison).
//
// Deviations from the paper:
// - The S-step chooses the support by thresholding the all-atom least-squares solution and refitting
//   (one step of hard-thresholding pursuit) instead of OMP's greedy atom-by-atom selection: one k × k solve
//   for all columns plus an s × s solve per column, where OMP needs s sequential selections per column.
// - k ≤ min(OC, C) (the SVD start provides at most that many atoms); no block partitioning of W.
// - The initialisation is task-unaware (plain Frobenius reconstruction), as the paper's; the task-aware part
//   is STF.

import Foundation
import Model
import Recipes
import TensorCore

/// The DSFormer initialisation of one weight.
public enum DenseSparseFactorizer {
    public struct Result {
        /// D (m × k), row-major.
        public var d: [Double]
        /// S (k × n), row-major, zero off the support.
        public var s: [Double]
        /// S's support (k × n), exactly `nonzeros` per column.
        public var support: [Bool]
        /// ‖W − D S‖_F² of the result, and of the SVD start (after its top-s projection).
        public var error2: Double
        public var startError2: Double
        /// ‖W‖_F², the singular values of W, and alternations done.
        public var norm2: Double
        public var singularValues: [Double]
        public var iterations: Int
        /// Squared error of the truncated SVD of rank r: Σ_{i>r} σ_i².
        public func svdError2(rank r: Int) -> Double { singularValues.dropFirst(r).reduce(0) { $0 + $1 * $1 } }
    }

    /// Factorizes W (m × n, row-major) as D (m × k) · S (k × n) with `nonzeros` s entries in every column of
    /// S. Needs 1 ≤ s ≤ k ≤ min(m, n). Deterministic.
    public static func factorize(_ w: [Double], rows m: Int, columns n: Int, rank k: Int, nonzeros s: Int,
                                 iterations: Int) throws -> Result {
        precondition(1 <= s && s <= k && k <= min(m, n),
                     "DSFormer sizes: need 1 ≤ s (\(s)) ≤ k (\(k)) ≤ min(m, n) (\(min(m, n)))")
        let (d0, sv, _) = try Factor64.leadingSVD(w, m: m, n: n, k: k)
        // Start: the best s-sparse code of every column under the orthonormal D = U_k.
        let b0 = atA(d0, w, m: m, k: k, n: n)
        var (sMat, support) = project(b0, k: k, n: n, s: s, atomNorms: [Double](repeating: 1, count: k))
        let norm2 = Factor64.frobenius2(w)
        var best = Factor64.residual2(w, d0, sMat, m: m, n: n, k: k)
        let start = best
        // The iterate (D, S) may get worse in an S-step; the best one seen is kept.
        var d = d0, bestD = d0, bestS = sMat, bestSupport = support
        var done = 0
        for _ in 0..<iterations {
            d = try dStep(w, d, sMat, m: m, n: n, k: k)
            let eD = Factor64.residual2(w, d, sMat, m: m, n: n, k: k)
            if eD < best { best = eD; bestD = d; bestS = sMat; bestSupport = support }
            (sMat, support) = try sStep(w, d, m: m, n: n, k: k, s: s)
            let eS = Factor64.residual2(w, d, sMat, m: m, n: n, k: k)
            if eS < best { best = eS; bestD = d; bestS = sMat; bestSupport = support }
            done += 1
        }
        return Result(d: bestD, s: bestS, support: bestSupport, error2: best, startError2: start, norm2: norm2,
                      singularValues: sv, iterations: done)
    }

    /// Aᵀ B with A (m × k), B (m × n): (k × n).
    static func atA(_ a: [Double], _ b: [Double], m: Int, k: Int, n: Int) -> [Double] {
        var out = [Double](repeating: 0, count: k * n)
        a.withUnsafeBufferPointer { ap in b.withUnsafeBufferPointer { bp in out.withUnsafeMutableBufferPointer { op in
            BLAS.gemm(transA: true, m: k, n: n, k: m, a: ap.baseAddress!, lda: k, b: bp.baseAddress!, ldb: n,
                      c: op.baseAddress!, ldc: n)
        } } }
        return out
    }

    /// Keeps, in every column of Z (k × n), the s entries with the largest |z_rc|·atomNorms[r] (ties to the
    /// lower index); returns the kept values (zero elsewhere) and the support.
    static func project(_ z: [Double], k: Int, n: Int, s: Int, atomNorms: [Double]) -> ([Double], [Bool]) {
        var out = [Double](repeating: 0, count: k * n), supp = [Bool](repeating: false, count: k * n)
        for c in 0..<n {
            let top = topIndices(count: s, of: k) { abs(z[$0 * n + c]) * atomNorms[$0] }
            for rr in top { out[rr * n + c] = z[rr * n + c]; supp[rr * n + c] = true }
        }
        return (out, supp)
    }

    /// The `count` indices of 0..<k with the largest scores, ties broken toward the lower index.
    @inline(__always)
    static func topIndices(count s: Int, of k: Int, score: (Int) -> Double) -> [Int] {
        let scores = (0..<k).map(score)
        return (0..<k).sorted { scores[$0] != scores[$1] ? scores[$0] > scores[$1] : $0 < $1 }.prefix(s).map { $0 }
    }

    /// D = (W Sᵀ + ε D)(S Sᵀ + ε I)⁻¹, ε = 1e-9 · mean diagonal of S Sᵀ.
    static func dStep(_ w: [Double], _ d: [Double], _ s: [Double], m: Int, n: Int, k: Int) throws -> [Double] {
        var sst = [Double](repeating: 0, count: k * k), wst = d
        s.withUnsafeBufferPointer { sp in
            sst.withUnsafeMutableBufferPointer { p in
                BLAS.gemm(transB: true, m: k, n: k, k: n, a: sp.baseAddress!, lda: n, b: sp.baseAddress!, ldb: n,
                          c: p.baseAddress!, ldc: k)
            }
        }
        let eps = max(1e-9 * (0..<k).reduce(0) { $0 + sst[$1 * k + $1] } / Double(k), 1e-300)
        for i in 0..<k { sst[i * k + i] += eps }
        // wst = W Sᵀ + ε D
        for i in 0..<(m * k) { wst[i] *= eps }
        w.withUnsafeBufferPointer { wp in s.withUnsafeBufferPointer { sp in wst.withUnsafeMutableBufferPointer { p in
            BLAS.gemm(transB: true, m: m, n: k, k: n, a: wp.baseAddress!, lda: n, b: sp.baseAddress!, ldb: n, beta: 1,
                      c: p.baseAddress!, ldc: k)
        } } }
        try LAPACK.inverseSPD(&sst, n: k)
        var out = [Double](repeating: 0, count: m * k)
        wst.withUnsafeBufferPointer { a in sst.withUnsafeBufferPointer { b in out.withUnsafeMutableBufferPointer { c in
            BLAS.gemm(m: m, n: k, k: k, a: a.baseAddress!, lda: k, b: b.baseAddress!, ldb: k, c: c.baseAddress!, ldc: k)
        } } }
        return out
    }

    /// The S-step: supports from thresholding G⁻¹ B, then a least-squares refit of every column on its support.
    static func sStep(_ w: [Double], _ d: [Double], m: Int, n: Int, k: Int, s: Int) throws -> ([Double], [Bool]) {
        let b = atA(d, w, m: m, k: k, n: n)
        var g = atA(d, d, m: m, k: k, n: k)
        let eps = max(1e-10 * (0..<k).reduce(0) { $0 + g[$1 * k + $1] } / Double(k), 1e-300)
        for i in 0..<k { g[i * k + i] += eps }
        var gi = g
        try LAPACK.inverseSPD(&gi, n: k)
        var z = [Double](repeating: 0, count: k * n)
        gi.withUnsafeBufferPointer { a in b.withUnsafeBufferPointer { bb in z.withUnsafeMutableBufferPointer { c in
            BLAS.gemm(m: k, n: n, k: k, a: a.baseAddress!, lda: k, b: bb.baseAddress!, ldb: n, c: c.baseAddress!,
                      ldc: n)
        } } }
        let norms = (0..<k).map { g[$0 * k + $0].squareRoot() }
        var (out, supp) = project(z, k: k, n: n, s: s, atomNorms: norms)
        // Refit each column on its support: G_II x = b_I (Cholesky; G + εI is positive definite).
        var failed = false
        out.withUnsafeMutableBufferPointer { op in
            supp.withUnsafeBufferPointer { sp in
                Parallel.forEachChunk(n, minChunk: 16) { cols in
                    var a = [Double](repeating: 0, count: s * s), x = [Double](repeating: 0, count: s),
                        idx = [Int](repeating: 0, count: s)
                    for c in cols {
                        var t = 0
                        for rr in 0..<k where sp[rr * n + c] { idx[t] = rr; t += 1 }
                        for i in 0..<s {
                            x[i] = b[idx[i] * n + c]
                            for j in 0..<s { a[i * s + j] = g[idx[i] * k + idx[j]] }
                        }
                        guard choleskySolve(&a, &x, n: s) else { failed = true; continue }
                        for i in 0..<s { op[idx[i] * n + c] = x[i] }
                    }
                }
            }
        }
        if failed {
            throw RecipeError("dsformer: a support's Gram matrix is not positive definite (degenerate dense factor)")
        }
        return (out, supp)
    }

    /// Solves A x = b for symmetric positive-definite A (n × n, row-major) in place (A is overwritten by its
    /// Cholesky factor, b by x); false when A is not positive definite.
    static func choleskySolve(_ a: inout [Double], _ b: inout [Double], n: Int) -> Bool {
        for j in 0..<n {
            var diag = a[j * n + j]
            for p in 0..<j { diag -= a[j * n + p] * a[j * n + p] }
            guard diag > 0 else { return false }
            let l = diag.squareRoot()
            a[j * n + j] = l
            for i in (j + 1)..<max(j + 1, n) {
                var v = a[i * n + j]
                for p in 0..<j { v -= a[i * n + p] * a[j * n + p] }
                a[i * n + j] = v / l
            }
        }
        for i in 0..<n {  // L y = b
            var v = b[i]
            for p in 0..<i { v -= a[i * n + p] * b[p] }
            b[i] = v / a[i * n + i]
        }
        for i in stride(from: n - 1, through: 0, by: -1) {  // Lᵀ x = y
            var v = b[i]
            for p in (i + 1)..<max(i + 1, n) { v -= a[p * n + i] * b[p] }
            b[i] = v / a[i * n + i]
        }
        return true
    }

    /// The largest k ≤ min(m, n) (with s = max(1, round(δ k)) ≤ k) whose factorization holds at most ρ·m·n
    /// parameters; nil when even k = 1 does not fit.
    public static func sizes(ratio: Double, density: Double, rows m: Int,
                             columns n: Int) -> (rank: Int, nonzeros: Int)? {
        let budget = ratio * Double(m * n)
        for k in stride(from: min(m, n), through: 1, by: -1) {
            let s = min(k, max(1, Int((density * Double(k)).rounded())))
            if Double(m * k + s * n) <= budget { return (k, s) }
        }
        return nil
    }
}

/// `dsformer`: replaces the target projections by DSFormer's dense × sparse factorization, initialised by
/// alternating minimisation from the SVD (see the header).
public struct DSFormerPass: CompressionPass {
    public static let name = "dsformer"
    /// Dense weights only (a sparse, quantized or already factorized weight is refused).
    public static let accepts: Set<WeightKind> = [.dense]
    public func produces(from input: Set<WeightKind>) -> Set<WeightKind> { input.union([.factorized]) }

    public var targets: [LinearKind] = LinearKind.allCases
    public var rank: Int?
    public var nonzeros: Int?
    public var parameterRatio: Double?
    public var density = 0.25
    public var iterations = 8

    public init(config s: StrictObject) throws {
        targets = try FactorizationTargets.parse(s)
        rank = try s.optionalInt("rank", in: 1...1 << 20)
        nonzeros = try s.optionalInt("nonzeros", in: 1...1 << 20)
        parameterRatio = try s.optionalDouble("parameter_ratio")
        let hasDensity = s.has("density")
        density = try s.double("density", default: density)
        iterations = try s.int("iterations", default: iterations, in: 0...1000)
        if let parameterRatio {
            guard rank == nil, nonzeros == nil else {
                throw RecipeError("\(s.location): give either 'parameter_ratio' (with optional 'density') or 'rank' " +
                                  "and 'nonzeros', not both")
            }
            guard parameterRatio > 0 && parameterRatio < 1 else {
                throw s.fail("parameter_ratio", "\(parameterRatio) must lie strictly between 0 and 1 (a factorization "
                    + "at least as large as the dense weight saves nothing)")
            }
            guard density > 0 && density <= 1 else {
                throw s.fail("density", "\(density) must lie in (0, 1] (nonzeros per column of S / rank)")
            }
        } else {
            guard let rank, let nonzeros else {
                throw RecipeError("\(s.location): give 'parameter_ratio' (factorized / dense parameters per weight, " +
                                  "with optional 'density' = nonzeros / rank), or both 'rank' (k) and 'nonzeros' (s " +
                                  "per column of S)")
            }
            guard !hasDensity else {
                throw RecipeError("\(s.location): 'density' goes with 'parameter_ratio'; with 'rank' and 'nonzeros' " +
                                  "it is nonzeros / rank")
            }
            guard nonzeros <= rank else {
                throw s.fail("nonzeros", "\(nonzeros) exceeds 'rank' \(rank) (each column of S keeps s of its k "
                    + "entries)")
            }
        }
    }

    /// k and s for a (m × n) weight; errors name the weight and the limit.
    func sizes(for id: LinearID, rows m: Int, columns n: Int) throws -> (rank: Int, nonzeros: Int) {
        if let rank, let nonzeros {
            guard rank <= min(m, n) else {
                throw RecipeError("'rank': \(rank) exceeds min(out, in) = \(min(m, n)) of \(id) (\(m) × \(n))")
            }
            let p = m * rank + nonzeros * n
            guard p < m * n else {
                throw RecipeError("'rank' \(rank), 'nonzeros' \(nonzeros) make \(id) (\(m) × \(n)) hold \(p) " +
                                  "parameters, no fewer than its \(m * n) dense ones")
            }
            return (rank, nonzeros)
        }
        guard let sz = DenseSparseFactorizer.sizes(ratio: parameterRatio!, density: density, rows: m, columns: n) else {
            throw RecipeError("'parameter_ratio': \(parameterRatio!) leaves \(id) (\(m) × \(n)) no factorization " +
                              "(rank 1 needs \(Double(m + n) / Double(m * n)))")
        }
        return sz
    }

    public func run(on model: DecoderModel,
                    context: PassContext) throws -> (model: DecoderModel, diagnostics: JSONValue) {
        let list = try FactorizationTargets.weights(model, kinds: targets, pass: Self.name)
        let plan = try list.map { try sizes(for: $0.id, rows: $0.w.shape[0], columns: $0.w.shape[1]) }
        var out = model
        var rows: [DSFormerReport.Weight] = []
        var tot = (dense: 0, params: 0, err: 0.0, start: 0.0, svd: 0.0, norm: 0.0)
        for (i, ((id, t), sz)) in zip(list, plan).enumerated() {
            let m = t.shape[0], n = t.shape[1], k = sz.rank, s = sz.nonzeros
            let w = Factor64.matrix(t)
            let r = try DenseSparseFactorizer.factorize(w, rows: m, columns: n, rank: k, nonzeros: s,
                                                        iterations: iterations)
            var dd = r.d, ss = r.s
            Factor64.balance(&dd, &ss, m: m, n: n, k: k)
            let supp = r.support
            let f = try Factor64.weight(dd, ss, m: m, n: n, k: k) { supp[$0] }
            out = try out.replacing(.linear(id), with: .factorized(f))
            let params = m * k + s * n, svdRank = params / (m + n), svdE2 = r.svdError2(rank: svdRank)
            func rel(_ e2: Double) -> Double { (e2 / max(r.norm2, 1e-300)).squareRoot() }
            tot.dense += m * n
            tot.params += params
            tot.err += r.error2
            tot.start += r.startError2
            tot.svd += svdE2
            tot.norm += r.norm2
            rows.append(DSFormerReport.Weight(
                layer: id.layer, projection: id.kind.shortName, rank: k, nonzeros: s, parameters: params,
                denseParameters: m * n, iterations: r.iterations, relativeError: rel(r.error2),
                startRelativeError: rel(r.startError2), svdRank: svdRank, svdRelativeError: rel(svdE2)))
            context.progress(String(format: "dsformer %d/%d: %@ k %d s %d, relative error %.4f (SVD start %.4f, " +
                                            "truncated SVD rank %d at equal parameters %.4f), %d alternations",
                                    i + 1, list.count, id.description, k, s, rel(r.error2), rel(r.startError2), svdRank,
                                    rel(svdE2), r.iterations))
        }
        func rel(_ e2: Double) -> Double { (e2 / max(tot.norm, 1e-300)).squareRoot() }
        let report = DSFormerReport(weights: rows, parameters: tot.params, denseParameters: tot.dense,
                                    relativeError: rel(tot.err), startRelativeError: rel(tot.start),
                                    svdRelativeError: rel(tot.svd))
        return (out, try JSONValue(encoding: report))
    }
}

/// The report of a `dsformer` stage: each factorized weight W ≈ D·S (S sparse), and the totals over them;
/// relative errors are ‖W − D·S‖_F / ‖W‖_F (over all weights: √(Σ error² / Σ ‖W‖²)).
public struct DSFormerReport: Codable, Equatable {
    /// One factorized weight.
    public struct Weight: Codable, Equatable {
        public var layer: Int
        /// "gate_proj", "down_proj", ...
        public var projection: String
        /// D's columns, and S's nonzeros per column.
        public var rank: Int
        public var nonzeros: Int
        public var parameters: Int
        public var denseParameters: Int
        /// Alternations run.
        public var iterations: Int
        public var relativeError: Double
        /// At the truncated-SVD start of the alternation.
        public var startRelativeError: Double
        /// The truncated SVD with as many parameters, and its error.
        public var svdRank: Int
        public var svdRelativeError: Double
    }
    public var weights: [Weight]
    public var parameters: Int
    public var denseParameters: Int
    public var relativeError: Double
    public var startRelativeError: Double
    public var svdRelativeError: Double
}
