import Quantization
import TensorCore

/// Which projection of a decoder layer. Hugging Face names are made from it in one place (`WeightID.hfName`).
public enum LinearKind: String, CaseIterable, Codable, Sendable, Comparable {
    case q, k, v, o, gate, up, down

    /// Attention projections (q, k, v, o) belong to sublayer 2·layer, MLP ones to 2·layer + 1.
    public var isAttention: Bool { self == .q || self == .k || self == .v || self == .o }
    /// The short name recipes use ("q_proj", ..., "down_proj").
    public var shortName: String { rawValue + "_proj" }
    public init?(shortName: String) {
        guard shortName.hasSuffix("_proj"), let k = LinearKind(rawValue: String(shortName.dropLast(5))) else {
            return nil
        }
        self = k
    }
    public static func < (a: LinearKind, b: LinearKind) -> Bool {
        allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
    }
}

/// A decoder linear weight: (layer, projection).
public struct LinearID: Hashable, Codable, Sendable, Comparable, CustomStringConvertible {
    public var layer: Int
    public var kind: LinearKind
    public init(layer: Int, kind: LinearKind) { self.layer = layer; self.kind = kind }
    public static func < (a: LinearID, b: LinearID) -> Bool { (a.layer, a.kind) < (b.layer, b.kind) }
    public var description: String { "layer \(layer) \(kind.shortName)" }
}

/// The representations a linear weight can take; stages declare which they accept and produce.
public enum WeightKind: String, CaseIterable, Codable, Sendable, Comparable {
    case dense, sparse, quantized, factorized
    public static func < (a: WeightKind, b: WeightKind) -> Bool {
        allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
    }
}

/// A 0/1 pattern over a (rows, cols) matrix, held as packed bits (row-major, little-endian within each byte:
/// element i is bit i % 8 of byte i / 8), the layout the checkpoint stores.
public struct SparsityMask: Equatable, Sendable {
    /// N:M keeps exactly N of every M consecutive elements along a row (the input dimension), as NVIDIA's
    /// sparse tensor cores and MaskLLM define it; unstructured keeps any set.
    public enum Pattern: Equatable, Sendable, CustomStringConvertible {
        case nm(n: Int, m: Int)
        case unstructured
        public var description: String {
            switch self {
            case .nm(let n, let m): "\(n):\(m)"
            case .unstructured: "unstructured"
            }
        }
        /// Parses "2:4" or "unstructured".
        public init?(_ text: String) {
            if text == "unstructured" { self = .unstructured; return }
            let parts = text.split(separator: ":")
            guard parts.count == 2, let n = Int(parts[0]), let m = Int(parts[1]), n >= 1, n < m, m <= 64 else {
                return nil
            }
            self = .nm(n: n, m: m)
        }
    }

    public let pattern: Pattern
    public let rows: Int, cols: Int
    public let bits: [UInt8]

    public var count: Int { rows * cols }
    /// Bytes of the packed bits.
    public var bytes: Int { bits.count }

    /// A mask from packed bits; checks the byte count, zero padding bits and, for N:M, every group.
    public init(pattern: Pattern, rows: Int, cols: Int, bits: [UInt8]) throws {
        guard rows >= 0, cols >= 0 else { throw ConfigError("mask of negative shape (\(rows), \(cols))") }
        guard bits.count == (rows * cols + 7) / 8 else {
            throw ConfigError(
                "mask (\(rows), \(cols)) needs \((rows * cols + 7) / 8) bytes of bits, found \(bits.count)")
        }
        self.pattern = pattern; self.rows = rows; self.cols = cols; self.bits = bits
        let n = rows * cols
        if n % 8 != 0, bits[n / 8] >> UInt8(n % 8) != 0 {
            throw ConfigError("mask has bits set beyond its \(n) elements")
        }
        if case .nm(let N, let M) = pattern {
            guard N >= 1, N < M else { throw ConfigError("N:M pattern \(N):\(M) needs 1 ≤ N < M") }
            guard cols % M == 0 else {
                throw ConfigError("N:M pattern \(N):\(M) needs the input size \(cols) to be a multiple of \(M)")
            }
            for g in 0..<(n / M) {
                var kept = 0
                for i in (g * M)..<((g + 1) * M) where self[i] { kept += 1 }
                guard kept == N else {
                    throw ConfigError(
                        "N:M mask \(N):\(M): group \(g) (row \(g * M / cols), columns "
                            + "\(g * M % cols)..<\(g * M % cols + M)) keeps \(kept), not \(N)")
                }
            }
        }
    }

    /// A mask keeping the elements for which `keep(i)` is true.
    public init(pattern: Pattern, rows: Int, cols: Int, keep: (Int) -> Bool) throws {
        var b = [UInt8](repeating: 0, count: (rows * cols + 7) / 8)
        for i in 0..<(rows * cols) where keep(i) { b[i >> 3] |= 1 << UInt8(i & 7) }
        try self.init(pattern: pattern, rows: rows, cols: cols, bits: b)
    }

    @inlinable public subscript(i: Int) -> Bool { bits[i >> 3] & (1 << UInt8(i & 7)) != 0 }

    /// Elements kept.
    public var nonzeros: Int { bits.reduce(0) { $0 + $1.nonzeroBitCount } }
    /// Kept fraction.
    public var density: Double { count == 0 ? 0 : Double(nonzeros) / Double(count) }

    /// Zeroes the elements of a (rows, cols) buffer that the mask drops.
    public func apply(to p: UnsafeMutablePointer<Float>) {
        bits.withUnsafeBufferPointer { b in
            Parallel.forEachChunk(b.count, minChunk: 8192) { range in
                for j in range {
                    let byte = b[j]
                    if byte == 0xFF { continue }
                    let base = j << 3
                    for bit in 0..<min(8, count - base) where byte & (1 << UInt8(bit)) == 0 { p[base + bit] = 0 }
                }
            }
        }
    }

    /// The mask as a (rows, cols) tensor of 0 and 1.
    public func floatMask() -> Tensor {
        let t = Tensor(shape: [rows, cols])
        for i in 0..<count where self[i] { t[i] = 1 }
        return t
    }
}

/// A sparse weight: values (zero wherever the mask drops) and the mask. Stored as the kept values and the
/// packed mask, so a 2:4 weight costs 16 + 1 bits per element against dense float32's 32.
public struct SparseWeight: Sendable {
    public let values: Tensor
    public let mask: SparsityMask

    /// Masks a copy of `dense` (rows, cols): the dropped elements become 0.
    public init(masking dense: Tensor, mask: SparsityMask) {
        precondition(
            dense.shape == [mask.rows, mask.cols], "mask (\(mask.rows), \(mask.cols)) for a weight \(dense.shape)")
        let v = dense.copy()
        mask.apply(to: v.data)
        values = v
        self.mask = mask
    }

    /// Values that are already zero outside the mask (checked).
    public init(values: Tensor, mask: SparsityMask) throws {
        guard values.shape == [mask.rows, mask.cols] else {
            throw ConfigError("mask (\(mask.rows), \(mask.cols)) for values of shape \(values.shape)")
        }
        for i in 0..<values.count where !mask[i] && values[i] != 0 {
            throw ConfigError("sparse values hold \(values[i]) at element \(i), where the mask drops it")
        }
        self.values = values
        self.mask = mask
    }
}

/// A quantized weight: the packed group-wise codes are the truth; `cache` is their dequantization, derived
/// once, for BLAS (no quantized GEMM on this CPU yet).
public struct QuantizedWeight: Sendable {
    public let packed: QuantizedTensor
    public let cache: Tensor
    public init(_ packed: QuantizedTensor) {
        self.packed = packed
        cache = Tensor(shape: packed.shape, values: packed.dequantized())
    }
}

/// DSFormer's dense × sparse factorization W (OC, C) = D (OC, k) · S (k, C), S with the same number s of
/// nonzeros in every column (each input column a sparse combination of the k dense atoms). Stored as D, S's
/// kept values and their row indices (one byte each when k ≤ 256, else two).
///
/// D may be stored quantized (`quantizedDense`, CPTQuant after DSFormer or low rank): then the packed codes
/// are the truth and `dense` is their dequantization D̂, derived once (as `QuantizedWeight.cache`), which the
/// forward, backward and `dequantized()` use; such a factor is frozen (no trainable tensors). The codes are
/// those of Dᵀ (k, OC), grouped along OC: a group is G consecutive output rows of one atom (one column of D).
/// Grouping along k would need k to be a multiple of G, which DSFormer's and low rank's sizes (k = 263, ...)
/// rarely are, while OC (576, 1536, ...) always is; and one atom's entries share a scale.
///
/// S's kept values may be stored quantized too (`quantizedSparse`): their codes in storage order (column by
/// column, ascending row within a column: the checkpoint's order), shape (1, nonzeros), in groups of G
/// consecutive kept values (a group may span columns: s per column is rarely a multiple of G); `sparse.values`
/// is then their dequantization. The row indices are stored as before. Either factor quantized makes the weight
/// frozen and counts it as quantized.
public struct FactorizedWeight: Sendable {
    /// D (OC, k): float32, or D̂ derived from `quantizedDense` (never write into it then).
    public let dense: Tensor
    public let sparse: SparseWeight
    /// D stored quantized: the codes of Dᵀ, shape (k, OC), grouped along OC; nil when D is float32.
    public let quantizedDense: QuantizedTensor?
    /// S's kept values stored quantized, shape (1, nonzeros), in storage order; nil when they are float32.
    public let quantizedSparse: QuantizedTensor?
    /// Whether either factor is stored quantized (the weight is then frozen).
    public var isQuantized: Bool { quantizedDense != nil || quantizedSparse != nil }
    public init(dense: Tensor, sparse: SparseWeight) throws {
        guard dense.shape.count == 2, dense.shape[1] == sparse.mask.rows else {
            throw ConfigError(
                "factorized weight: dense factor \(dense.shape) does not match the sparse factor (\(sparse.mask.rows), "
                    + "\(sparse.mask.cols))")
        }
        try Self.checkColumns(sparse)
        self.init(checked: dense, sparse)
    }
    /// A factorization whose dense factor is stored quantized: `quantizedDense` holds Dᵀ (k, OC) (see the type's
    /// documentation); D̂ is derived from it.
    public init(quantizedDense q: QuantizedTensor, sparse: SparseWeight) throws {
        guard q.shape.count == 2, q.shape[0] == sparse.mask.rows else {
            throw ConfigError(
                "factorized weight: quantized dense factor Dᵀ \(q.shape) does not match the sparse factor "
                    + "(\(sparse.mask.rows), \(sparse.mask.cols)); Dᵀ is (rank, out)")
        }
        try Self.checkColumns(sparse)
        self.init(
            checked: Tensor(
                shape: [q.shape[1], q.shape[0]],
                values: Self.transpose(q.dequantized(), rows: q.shape[0], cols: q.shape[1])), sparse, q)
    }
    private static func checkColumns(_ sparse: SparseWeight) throws {
        let k = sparse.mask.rows, C = sparse.mask.cols
        let s = (0..<k).reduce(0) { $0 + (sparse.mask[$1 * C] ? 1 : 0) }
        for c in 0..<C {
            let n = (0..<k).reduce(0) { $0 + (sparse.mask[$1 * C + c] ? 1 : 0) }
            guard n == s else {
                throw ConfigError(
                    "factorized weight: column \(c) of the sparse factor has \(n) nonzeros, column 0 has \(s); every "
                        + "column needs the same number")
            }
        }
    }
    /// The transpose of a row-major (rows, cols) matrix, row-major (cols, rows).
    public static func transpose(_ a: [Float], rows: Int, cols: Int) -> [Float] {
        precondition(a.count == rows * cols)
        var out = [Float](repeating: 0, count: a.count)
        for r in 0..<rows { for c in 0..<cols { out[c * rows + r] = a[r * cols + c] } }
        return out
    }
    /// The same S with D stored as `q` (Dᵀ's codes, (k, OC)); throws when the shapes differ.
    public func quantizingDense(_ q: QuantizedTensor) throws -> FactorizedWeight {
        guard q.shape == [rank, dense.shape[0]] else {
            throw ConfigError(
                "factorized weight: a quantized dense factor must hold Dᵀ of shape \([rank, dense.shape[0]]), found "
                    + "\(q.shape)")
        }
        return FactorizedWeight(
            checked: Tensor(
                shape: dense.shape, values: Self.transpose(q.dequantized(), rows: q.shape[0], cols: q.shape[1])),
            sparse, q, quantizedSparse)
    }
    /// S's kept values in storage order: column by column, ascending row within a column.
    public var keptValues: [Float] {
        let k = rank, C = sparse.mask.cols
        var out: [Float] = []
        out.reserveCapacity(sparse.mask.nonzeros)
        for c in 0..<C { for r in 0..<k where sparse.mask[r * C + c] { out.append(sparse.values[r * C + c]) } }
        return out
    }
    /// The same D and S's support with S's kept values stored as `q` (shape (1, nonzeros), storage order).
    public func quantizingSparseValues(_ q: QuantizedTensor) throws -> FactorizedWeight {
        let n = sparse.mask.nonzeros, k = rank, C = sparse.mask.cols
        guard q.shape == [1, n] else {
            throw ConfigError(
                "factorized weight: quantized sparse values must have shape [1, \(n)] (S's kept values), found "
                    + "\(q.shape)")
        }
        let kept = q.dequantized(), values = Tensor(shape: [k, C])
        var j = 0
        for c in 0..<C { for r in 0..<k where sparse.mask[r * C + c] { values[r * C + c] = kept[j]; j += 1 } }
        return FactorizedWeight(checked: dense, try SparseWeight(values: values, mask: sparse.mask), quantizedDense, q)
    }
    /// Nonzeros in every column of S.
    public var nonzerosPerColumn: Int { sparse.mask.cols == 0 ? 0 : sparse.mask.nonzeros / sparse.mask.cols }
    fileprivate init(
        checked dense: Tensor, _ sparse: SparseWeight, _ quantizedDense: QuantizedTensor? = nil,
        _ quantizedSparse: QuantizedTensor? = nil
    ) {
        self.dense = dense
        self.sparse = sparse
        self.quantizedDense = quantizedDense
        self.quantizedSparse = quantizedSparse
    }
    public var rank: Int { dense.shape[1] }
    /// Bytes of one row index of S.
    public var indexBytes: Int { rank <= 256 ? 1 : 2 }
    /// Bytes of D as stored: float32, or the codes with their scales (and minimums).
    public var denseBytes: Int { quantizedDense?.bytes ?? dense.bytes }
    /// Bytes of S as stored: kept values (float32, or codes with scales) and their row indices.
    public var sparseBytes: Int {
        (quantizedSparse?.bytes ?? 4 * sparse.mask.nonzeros) + indexBytes * sparse.mask.nonzeros
    }
}

/// How one linear weight (OC, C) is held. Forward, backward, the reference forward, storage bytes and
/// dequantization each switch over every case, so a representation cannot be forgotten anywhere.
public enum LinearWeight: Sendable {
    /// (OC, C) float32.
    case dense(Tensor)
    /// (OC, C) values, zero outside the mask (N:M or unstructured).
    case sparse(SparseWeight)
    /// Packed group-wise codes (or float16) with a derived dense cache.
    case quantized(QuantizedWeight)
    /// D (OC, k) · S (k, C), S sparse.
    case factorized(FactorizedWeight)

    public var kind: WeightKind {
        switch self {
        case .dense: .dense
        case .sparse: .sparse
        case .quantized: .quantized
        case .factorized: .factorized
        }
    }

    /// Every representation the weight holds: `kind`, plus quantized for a factorized weight whose dense
    /// factor is stored quantized (what stages must accept to take it: nothing may train or re-quantize it).
    public var kinds: Set<WeightKind> {
        if case .factorized(let f) = self, f.isQuantized { return [.factorized, .quantized] }
        return [kind]
    }

    /// (OC, C).
    public var shape: [Int] {
        switch self {
        case .dense(let t): t.shape
        case .sparse(let s): s.values.shape
        case .quantized(let q): q.packed.shape
        case .factorized(let f): [f.dense.shape[0], f.sparse.mask.cols]
        }
    }
    public var outFeatures: Int { shape[0] }
    public var inFeatures: Int { shape[1] }

    /// The float32 matrix the forward multiplies by, when one exists without computing anything: the dense
    /// tensor, the sparse values, the quantized cache; nil for a factorized weight. Never write into it.
    public var denseView: Tensor? {
        switch self {
        case .dense(let t): t
        case .sparse(let s): s.values
        case .quantized(let q): q.cache
        case .factorized: nil
        }
    }

    /// W as a new (OC, C) float32 tensor (D · S multiplied out for a factorized weight).
    public func dequantized() -> Tensor {
        switch self {
        case .dense(let t): return t.copy()
        case .sparse(let s): return s.values.copy()
        case .quantized(let q): return q.cache.copy()
        case .factorized(let f):
            let OC = f.dense.shape[0], k = f.rank, C = f.sparse.mask.cols
            let out = Tensor(shape: [OC, C])
            BLAS.gemm(m: OC, n: C, k: k, a: f.dense.data, lda: k, b: f.sparse.values.data, ldb: C, c: out.data, ldc: C)
            return out
        }
    }

    /// Values stored (a sparse weight counts its kept values; a factorized one D and S's kept values).
    public var parameterCount: Int {
        switch self {
        case .dense(let t): t.count
        case .sparse(let s): s.mask.nonzeros
        case .quantized(let q): q.packed.count
        case .factorized(let f): f.dense.count + f.sparse.mask.nonzeros
        }
    }

    /// Bytes as the checkpoint stores it.
    public var storageBytes: Int {
        switch self {
        case .dense(let t): t.bytes
        case .sparse(let s): 4 * s.mask.nonzeros + s.mask.bytes
        case .quantized(let q): q.packed.bytes
        case .factorized(let f): f.denseBytes + f.sparseBytes
        }
    }

    /// The float tensors training may update, in a fixed order (gradients are given in the same order):
    /// dense [W]; sparse [values] (the gradient is masked); quantized [] (frozen); factorized [D, S values],
    /// or [] (frozen) when either factor is stored quantized.
    public var trainableTensors: [Tensor] {
        switch self {
        case .dense(let t): [t]
        case .sparse(let s): [s.values]
        case .quantized: []
        case .factorized(let f): f.isQuantized ? [] : [f.dense, f.sparse.values]
        }
    }

    /// A deep copy (the packed codes of a quantized weight, and a quantized dense factor with its D̂, are
    /// immutable and shared).
    public func copy() -> LinearWeight {
        switch self {
        case .dense(let t): return .dense(t.copy())
        case .sparse(let s): return .sparse(SparseWeight(masking: s.values, mask: s.mask))
        case .quantized: return self
        case .factorized(let f):
            return .factorized(
                FactorizedWeight(
                    checked: f.quantizedDense == nil ? f.dense.copy() : f.dense,
                    SparseWeight(masking: f.sparse.values, mask: f.sparse.mask), f.quantizedDense, f.quantizedSparse))
        }
    }

    /// out (T, OC) = beta · out + inp (T, C) · Wᵀ.
    public func forward(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, rows T: Int, beta: Float = 0) {
        let OC = outFeatures, C = inFeatures
        switch self {
        case .dense(let w):
            MatrixProduct.gemm(
                transB: true, m: T, n: OC, k: C, a: inp, lda: C, b: w.data, ldb: C, beta: beta, c: out, ldc: OC,
                weight: w)
        case .sparse(let s):
            // Dense GEMM with zeros: this CPU has no sparse GEMM that beats OpenBLAS at these densities.
            MatrixProduct.gemm(
                transB: true, m: T, n: OC, k: C, a: inp, lda: C, b: s.values.data, ldb: C, beta: beta, c: out, ldc: OC,
                weight: s.values)
        case .quantized(let q):
            MatrixProduct.gemm(
                transB: true, m: T, n: OC, k: C, a: inp, lda: C, b: q.cache.data, ldb: C, beta: beta, c: out, ldc: OC,
                weight: q.cache)
        case .factorized(let f):
            // tmp (T, k) = inp · Sᵀ;  out = beta · out + tmp · Dᵀ
            let k = f.rank, tmp = Tensor(shape: [T, k])
            MatrixProduct.gemm(
                transB: true, m: T, n: k, k: C, a: inp, lda: C, b: f.sparse.values.data, ldb: C, c: tmp.data, ldc: k,
                weight: f.sparse.values)
            MatrixProduct.gemm(
                transB: true, m: T, n: OC, k: k, a: tmp.data, lda: k, b: f.dense.data, ldb: k, beta: beta, c: out,
                ldc: OC, weight: f.dense)
        }
    }

    /// Backward of `forward`, accumulating into what is given:
    ///   dinp (T, C) += dout (T, OC) · W;   grads[i] += dL/d(trainableTensors[i])
    /// dense: dW += doutᵀ · inp; sparse: the same, then masked; quantized: dinp only; factorized, with
    /// tmp = inp · Sᵀ: dD += doutᵀ · tmp, dtmp = dout · D, dS += (dtmpᵀ · inp) masked, dinp += dtmp · S
    /// (with either factor stored quantized: dinp only, through D̂ and Ŝ).
    /// `grads` is empty (all frozen) or has one optional pointer per trainable tensor.
    public func backward(
        dinp: UnsafeMutablePointer<Float>?, grads: [UnsafeMutablePointer<Float>?], dout: UnsafePointer<Float>,
        inp: UnsafePointer<Float>, rows T: Int
    ) {
        let OC = outFeatures, C = inFeatures
        func grad(_ i: Int) -> UnsafeMutablePointer<Float>? { i < grads.count ? grads[i] : nil }
        switch self {
        case .dense(let w):
            linearBackward(
                dinp: dinp, dweight: grad(0), dout: dout, inp: inp, weight: w.data, weightTensor: w, rows: T,
                inFeatures: C, outFeatures: OC)
        case .sparse(let s):
            linearBackward(
                dinp: dinp, dweight: grad(0), dout: dout, inp: inp, weight: s.values.data, weightTensor: s.values,
                rows: T, inFeatures: C, outFeatures: OC)
            if let g = grad(0) { s.mask.apply(to: g) }
        case .quantized(let q):
            linearBackward(
                dinp: dinp, dweight: nil, dout: dout, inp: inp, weight: q.cache.data, weightTensor: q.cache, rows: T,
                inFeatures: C, outFeatures: OC)
        case .factorized(let f):
            let k = f.rank, tmp = Tensor(shape: [T, k]), dtmp = Tensor(shape: [T, k])
            MatrixProduct.gemm(
                transB: true, m: T, n: k, k: C, a: inp, lda: C, b: f.sparse.values.data, ldb: C, c: tmp.data, ldc: k,
                weight: f.sparse.values)
            let frozen = f.isQuantized
            linearBackward(
                dinp: dtmp.data, dweight: frozen ? nil : grad(0), dout: dout, inp: tmp.data, weight: f.dense.data,
                weightTensor: f.dense, rows: T, inFeatures: k, outFeatures: OC)
            linearBackward(
                dinp: dinp, dweight: frozen ? nil : grad(1), dout: dtmp.data, inp: inp, weight: f.sparse.values.data,
                weightTensor: f.sparse.values, rows: T, inFeatures: C, outFeatures: k)
            if !frozen, let g = grad(1) { f.sparse.mask.apply(to: g) }
        }
    }

    /// Plain reference of `forward` (beta 0): Double accumulation, no BLAS; a factorized weight is applied
    /// as D · (S · x) with both products in plain loops (a quantized D dequantized from its codes here, not
    /// taken from the cache).
    public func forwardReference(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, rows T: Int) {
        let OC = outFeatures, C = inFeatures
        switch self {
        case .dense(let w):
            linearForwardReference(out: out, inp: inp, weight: w.data, rows: T, inFeatures: C, outFeatures: OC)
        case .sparse(let s):
            for t in 0..<T {
                for o in 0..<OC {
                    var acc = 0.0
                    for c in 0..<C where s.mask[o * C + c] {
                        acc += Double(inp[t * C + c]) * Double(s.values[o * C + c])
                    }
                    out[t * OC + o] = Float(acc)
                }
            }
        case .quantized(let q):
            let w = q.packed.dequantized()
            for t in 0..<T {
                for o in 0..<OC {
                    var acc = 0.0
                    for c in 0..<C { acc += Double(inp[t * C + c]) * Double(w[o * C + c]) }
                    out[t * OC + o] = Float(acc)
                }
            }
        case .factorized(let f):
            let k = f.rank
            // D[o, r]: the float32 factor, or Dᵀ's codes dequantized (Dᵀ is (k, OC)).
            let qd = f.quantizedDense?.dequantized()
            let d: (Int, Int) -> Float = { o, r in qd.map { $0[r * OC + o] } ?? f.dense[o * k + r] }
            // S[r, c]: the float32 values, or the kept values' codes dequantized, in storage order.
            var sq: [Int: Float]? = nil
            if let q = f.quantizedSparse {
                let kept = q.dequantized()
                var m: [Int: Float] = [:], j = 0
                for c in 0..<C { for r in 0..<k where f.sparse.mask[r * C + c] { m[r * C + c] = kept[j]; j += 1 } }
                sq = m
            }
            let sv: (Int) -> Float = { i in sq.map { $0[i]! } ?? f.sparse.values[i] }
            var tmp = [Double](repeating: 0, count: k)
            for t in 0..<T {
                for r in 0..<k {
                    var acc = 0.0
                    for c in 0..<C where f.sparse.mask[r * C + c] {
                        acc += Double(inp[t * C + c]) * Double(sv(r * C + c))
                    }
                    tmp[r] = acc
                }
                for o in 0..<OC {
                    var acc = 0.0
                    for r in 0..<k { acc += tmp[r] * Double(d(o, r)) }
                    out[t * OC + o] = Float(acc)
                }
            }
        }
    }
}
