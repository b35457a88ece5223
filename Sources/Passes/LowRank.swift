// Low-rank factorization by truncated SVD: the baseline DSFormer is compared against.
//
// Eckart–Young–Mirsky (C. Eckart, G. Young, "The approximation of one matrix by another of lower rank",
// 1936): for W (OC × C) = U Σ Vᵀ, the best rank-k approximation in Frobenius norm is U_k Σ_k V_kᵀ, with
//   ‖W − U_k Σ_k V_kᵀ‖_F² = Σ_{i>k} σ_i².
// The factors are split evenly, D = U_k Σ_k^½ (OC × k) and S = Σ_k^½ V_kᵀ (k × C), so both start at the
// same scale for training. W ≈ D · S holds k · (OC + C) parameters; at a parameter ratio r (factorized /
// dense parameters) the rank is the largest k with k · (OC + C) ≤ r · OC · C.
//
// Representation: a factorized weight (Model/LinearWeight.swift) whose S keeps all k entries of every column
// (a dense S is the special case s = k of DSFormer's factorization), so the forward, backward, distillation
// and checkpoint paths are the factorized ones. Storage counts S as the checkpoint writes it: every value
// with its row index (one byte for k ≤ 256), although a dense S would not need indices; parameter counts are
// exact and are what the comparisons use.
//
// This is the standard baseline (DSFormer, Chand et al. 2023, compares against it); no deviation.

import Foundation
import Model
import Recipes
import TensorCore

/// The decoder projections a factorization pass replaces (recipe key `targets`: an array of short names
/// "q_proj" … "down_proj", or the groups "attention", "mlp", "all"; default all seven).
public enum FactorizationTargets {
    /// The targets of `s` (`StrictObject.linearKinds` with the groups), in canonical order.
    public static func parse(_ s: StrictObject) throws -> [LinearKind] { try s.linearKinds(groups: true) }

    /// The model's target weights in canonical order; every one must be dense (a sparse, quantized or already
    /// factorized weight is refused, naming it).
    static func weights(_ model: DecoderModel, kinds: [LinearKind],
                        pass: String) throws -> [(id: LinearID, w: Tensor)] {
        let list = model.linearWeights.filter { kinds.contains($0.id.kind) }
        guard !list.isEmpty else {
            throw RecipeError("\(pass): the model has no \(kinds.map(\.shortName).joined(separator: ", ")) weights")
        }
        return try list.map { id, w in
            guard case .dense(let t) = w else {
                throw RecipeError("\(pass): \(id) is \(w.kind.rawValue); '\(pass)' factorizes dense weights only")
            }
            return (id, t)
        }
    }
}

/// Float64 matrix helpers shared by the factorization passes (row-major).
enum Factor64 {
    static func matrix(_ t: Tensor) -> [Double] { (0..<t.count).map { Double(t[$0]) } }

    static func frobenius2(_ a: [Double]) -> Double { a.reduce(0) { $0 + $1 * $1 } }

    /// ‖W − D·S‖_F² with W (m × n), D (m × k), S (k × n).
    static func residual2(_ w: [Double], _ d: [Double], _ s: [Double], m: Int, n: Int, k: Int) -> Double {
        var r = w
        d.withUnsafeBufferPointer { dp in s.withUnsafeBufferPointer { sp in r.withUnsafeMutableBufferPointer { rp in
            BLAS.gemm(m: m, n: n, k: k, alpha: -1, a: dp.baseAddress!, lda: k, b: sp.baseAddress!, ldb: n, beta: 1,
                      c: rp.baseAddress!, ldc: n)
        } } }
        return frobenius2(r)
    }

    /// The k leading singular triplets of W (m × n) and all min(m, n) singular values (descending), from the
    /// eigen-decomposition of the smaller Gram matrix: for n ≤ m, WᵀW = V Σ² Vᵀ and U_k = W V_k Σ_k⁻¹; else
    /// WWᵀ = U Σ² Uᵀ and V_kᵀ = Σ_k⁻¹ U_kᵀ W. About a third of a full SVD's work at these shapes; accurate for
    /// the leading triplets (σ_k well above √ε σ₁), which is all the factorizations use. A zero σ gives a zero
    /// vector. Returns u (m × k), s, vt (k × n), row-major.
    static func leadingSVD(_ w: [Double], m: Int, n: Int, k: Int) throws -> (u: [Double], s: [Double], vt: [Double]) {
        let small = min(m, n)
        precondition(k >= 1 && k <= small)
        var g = [Double](repeating: 0, count: small * small)
        w.withUnsafeBufferPointer { wp in g.withUnsafeMutableBufferPointer { gp in
            if n <= m {
                BLAS.gemm(transA: true, m: n, n: n, k: m, a: wp.baseAddress!, lda: n, b: wp.baseAddress!, ldb: n,
                          c: gp.baseAddress!, ldc: n)
            } else {
                BLAS.gemm(transB: true, m: m, n: m, k: n, a: wp.baseAddress!, lda: n, b: wp.baseAddress!, ldb: n,
                          c: gp.baseAddress!, ldc: m)
            }
        } }
        let (values, vectors) = try LAPACK.symmetricEigen(g, n: small)
        let sv = values.reversed().map { max($0, 0).squareRoot() }
        // Leading eigenvectors as a (small × k) matrix, column j = eigenvector of the j-th largest value.
        var e = [Double](repeating: 0, count: small * k)
        for j in 0..<k { let row = small - 1 - j; for i in 0..<small { e[i * k + j] = vectors[row * small + i] } }
        var other = [Double](repeating: 0, count: (n <= m ? m : n) * k)
        w.withUnsafeBufferPointer { wp in e.withUnsafeBufferPointer { ep in other.withUnsafeMutableBufferPointer { op in
            if n <= m {  // W V_k (m × k)
                BLAS.gemm(m: m, n: k, k: n, a: wp.baseAddress!, lda: n, b: ep.baseAddress!, ldb: k, c: op.baseAddress!,
                          ldc: k)
            } else {     // Wᵀ U_k (n × k)
                BLAS.gemm(transA: true, m: n, n: k, k: m, a: wp.baseAddress!, lda: n, b: ep.baseAddress!, ldb: k,
                          c: op.baseAddress!, ldc: k)
            }
        } } }
        let rows = n <= m ? m : n
        for j in 0..<k {
            let inv = sv[j] > 0 ? 1 / sv[j] : 0
            for i in 0..<rows { other[i * k + j] *= inv }
        }
        // u (m × k) and vt (k × n).
        let (u, vk) = n <= m ? (other, e) : (e, other)   // vk: (n × k)
        var vt = [Double](repeating: 0, count: k * n)
        for j in 0..<k { for c in 0..<n { vt[j * n + c] = vk[c * k + j] } }
        return (u, sv, vt)
    }

    /// Rescales atom r of D by a_r and row r of S by 1/a_r so that ‖d_r‖ = ‖s_r‖ (the product is unchanged);
    /// training then starts with both factors at the same scale.
    static func balance(_ d: inout [Double], _ s: inout [Double], m: Int, n: Int, k: Int) {
        for r in 0..<k {
            var dn = 0.0, sn = 0.0
            for i in 0..<m { dn += d[i * k + r] * d[i * k + r] }
            for j in 0..<n { sn += s[r * n + j] * s[r * n + j] }
            guard dn > 0, sn > 0 else { continue }
            let a = (sn / dn).squareRoot().squareRoot()
            for i in 0..<m { d[i * k + r] *= a }
            for j in 0..<n { s[r * n + j] /= a }
        }
    }

    /// The factorized weight D (m × k) · S (k × n) with S kept where `keep` says (checked: same count per column).
    static func weight(_ d: [Double], _ s: [Double], m: Int, n: Int, k: Int,
                       keep: (Int) -> Bool) throws -> FactorizedWeight {
        let D = Tensor(shape: [m, k], values: d.map(Float.init))
        let mask = try SparsityMask(pattern: .unstructured, rows: k, cols: n, keep: keep)
        let S = Tensor(shape: [k, n])
        for i in 0..<(k * n) where mask[i] { S[i] = Float(s[i]) }
        return try FactorizedWeight(dense: D, sparse: SparseWeight(values: S, mask: mask))
    }
}

/// Truncated-SVD factorization of one weight (leading triplets from the Gram matrix, `Factor64.leadingSVD`).
public enum LowRankFactorizer {
    /// W (m × n) ≈ D (m × k) · S (k × n) by the SVD, D = U_k Σ_k^½, S = Σ_k^½ V_kᵀ; returns the factors (Float64,
    /// row-major), the singular values and the squared error Σ_{i>k} σ_i². Needs 1 ≤ k ≤ min(m, n).
    public static func factorize(_ w: [Double], rows m: Int, columns n: Int, rank k: Int) throws
        -> (d: [Double], s: [Double], singularValues: [Double], error2: Double)
    {
        precondition(k >= 1 && k <= min(m, n), "rank \(k) outside 1...\(min(m, n))")
        let (u, sv, vt) = try Factor64.leadingSVD(w, m: m, n: n, k: k)
        let r = k
        var d = [Double](repeating: 0, count: m * k), s = [Double](repeating: 0, count: k * n)
        for j in 0..<k {
            let h = sv[j].squareRoot()
            for i in 0..<m { d[i * k + j] = u[i * r + j] * h }
            for c in 0..<n { s[j * n + c] = vt[j * n + c] * h }
        }
        let tail = sv[k...].reduce(0) { $0 + $1 * $1 }
        return (d, s, sv, tail)
    }

    /// The largest rank whose factorization holds at most `ratio` × m·n parameters: ⌊ratio · m·n / (m + n)⌋.
    public static func rank(forRatio ratio: Double, rows m: Int, columns n: Int) -> Int {
        Int((ratio * Double(m * n) / Double(m + n)).rounded(.down))
    }
}

/// `lowrank`: replaces the target projections by their truncated SVD at a given rank or parameter ratio.
public struct LowRankPass: CompressionPass {
    public static let name = "lowrank"
    /// Dense weights only: a sparse, quantized or factorized weight has no SVD here.
    public static let accepts: Set<WeightKind> = [.dense]
    public func produces(from input: Set<WeightKind>) -> Set<WeightKind> { input.union([.factorized]) }

    public var targets: [LinearKind] = LinearKind.allCases
    /// A fixed rank for every target, or
    public var rank: Int?
    /// factorized / dense parameters per weight, in (0, 1).
    public var parameterRatio: Double?

    public init(config s: StrictObject) throws {
        targets = try FactorizationTargets.parse(s)
        rank = try s.optionalInt("rank", in: 1...1 << 20)
        parameterRatio = try s.optionalDouble("parameter_ratio")
        guard (rank == nil) != (parameterRatio == nil) else {
            throw RecipeError("\(s.location): give exactly one of 'rank' (k of every factorization) and " +
                              "'parameter_ratio' (factorized / dense parameters of each weight, in (0, 1))")
        }
        if let r = parameterRatio, !(r > 0 && r < 1) {
            throw s.fail("parameter_ratio", "\(r) must lie strictly between 0 and 1 (a factorization at least as large "
                + "as the dense weight saves nothing)")
        }
    }

    /// The rank of a (m × n) weight under these settings; errors name the weight and the limit.
    func rank(for id: LinearID, rows m: Int, columns n: Int) throws -> Int {
        if let rank {
            guard rank <= min(m, n) else {
                throw RecipeError("'rank': \(rank) exceeds min(out, in) = \(min(m, n)) of \(id) (\(m) × \(n))")
            }
            guard rank * (m + n) < m * n else {
                throw RecipeError("'rank': \(rank) makes \(id) (\(m) × \(n)) hold \(rank * (m + n)) parameters, no " +
                                  "fewer than its \(m * n) dense ones; use a rank " +
                                  "below \((m * n + m + n - 1) / (m + n))")
            }
            return rank
        }
        let k = LowRankFactorizer.rank(forRatio: parameterRatio!, rows: m, columns: n)
        guard k >= 1 else {
            throw RecipeError("'parameter_ratio': \(parameterRatio!) leaves \(id) (\(m) × \(n)) no rank (rank 1 " +
                              "needs \(Double(m + n) / Double(m * n)))")
        }
        return min(k, min(m, n))
    }

    public func run(on model: DecoderModel,
                    context: PassContext) throws -> (model: DecoderModel, diagnostics: JSONValue) {
        let list = try FactorizationTargets.weights(model, kinds: targets, pass: Self.name)
        // Every rank checked before any SVD.
        let ranks = try list.map { try rank(for: $0.id, rows: $0.w.shape[0], columns: $0.w.shape[1]) }
        var out = model
        var rows: [LowRankReport.Weight] = []
        var denseParams = 0, params = 0, err2 = 0.0, norm2 = 0.0
        for (i, ((id, t), k)) in zip(list, ranks).enumerated() {
            let m = t.shape[0], n = t.shape[1]
            let w = Factor64.matrix(t)
            var (d, s, _, e2) = try LowRankFactorizer.factorize(w, rows: m, columns: n, rank: k)
            Factor64.balance(&d, &s, m: m, n: n, k: k)
            let f = try Factor64.weight(d, s, m: m, n: n, k: k) { _ in true }
            out = try out.replacing(.linear(id), with: .factorized(f))
            let w2 = Factor64.frobenius2(w)
            denseParams += m * n; params += k * (m + n); err2 += e2; norm2 += w2
            rows.append(LowRankReport.Weight(layer: id.layer, projection: id.kind.shortName, rank: k,
                                             parameters: k * (m + n), denseParameters: m * n,
                                             relativeError: (e2 / max(w2, 1e-300)).squareRoot()))
            context.progress(String(format: "lowrank %d/%d: %@ rank %d, relative error %.4f", i + 1, list.count,
                                    id.description, k, (e2 / max(w2, 1e-300)).squareRoot()))
        }
        let report = LowRankReport(weights: rows, parameters: params, denseParameters: denseParams,
                                   relativeError: (err2 / max(norm2, 1e-300)).squareRoot())
        return (out, try JSONValue(encoding: report))
    }
}

/// The report of a `lowrank` stage: each factorized weight, and the totals over them.
public struct LowRankReport: Codable, Equatable {
    /// One weight W ≈ D·S of rank `rank`.
    public struct Weight: Codable, Equatable {
        public var layer: Int
        /// "q_proj", "down_proj", ...
        public var projection: String
        public var rank: Int
        /// rank × (rows + columns), against rows × columns dense.
        public var parameters: Int
        public var denseParameters: Int
        /// ‖W − D·S‖_F / ‖W‖_F.
        public var relativeError: Double
    }
    public var weights: [Weight]
    public var parameters: Int
    public var denseParameters: Int
    /// √(Σ ‖W − D·S‖²_F / Σ ‖W‖²_F) over the weights.
    public var relativeError: Double
}
