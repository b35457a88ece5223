import CKernels
import Diagnostics

// Weight-only integer quantization of linear layers, group-wise along the input dimension (CPTQuant's
// quantizer; issue 6; full-range symmetric codes: issue 19).
//
// A weight matrix W (out × in) is cut, row by row, into groups of G consecutive input columns (in must be a
// multiple of G). Each group stores b-bit codes and, in float16, its scale (and minimum):
//   asymmetric, b bits:  s = (hi − lo) / (2^b − 1),  q = clamp(round((w − lo) / s), 0, 2^b − 1),   w' = lo + s·q
//   symmetric,  b bits:  m = the group's weight of largest magnitude (signed; the first one on a tie),
//                        s = m / −2^(b−1),  q = clamp(round(w / s), −2^(b−1), 2^(b−1) − 1),
//                        stored as c = q + 2^(b−1) ∈ [0, 2^b − 1],                                  w' = s·(c −
// 2^(b−1)) with (lo, hi) = (min w, max w) of the group for round-to-nearest (RTN). Symmetric formats use all 2^b
// levels, −2^(b−1) … 2^(b−1) − 1, as llama.cpp's Q4_0 does (d = max / −8): the scale is signed, chosen so that the
// group's extreme lands exactly on the negative end −2^(b−1), which always exists; zero stays exact. The scale
// is signed in the file too, so code c and scale s are Q4_0's (q, d) at 4 bits (Q8_0 at 8 bits, whose
// levels include −128) and an export to those formats is lossless.
// (Before issue 19, symmetric codes were q ∈ [−(2^(b−1) − 1), 2^(b−1) − 1] with s = max|w| / (2^(b−1) − 1) ≥ 0
// and code 0 unused; such files dequantize by the same rule w' = s·(c − 2^(b−1)) and mean the same weights.)
// Float16 rounding: the asymmetric scale is rounded up and the minimum down; the symmetric scale's magnitude is
// rounded up. Error bound: asymmetric, |w − w'| ≤ s/2 for every weight. Symmetric, |w/s| ≤ 2^(b−1), so
// |w − w'| ≤ |s|/2 wherever w/s ≤ 2^(b−1) − 1/2 (every weight of the extreme's sign, and the rest up to
// (2^(b−1) − 1/2)·|s| in magnitude), and |w − w'| ≤ |s| for the few of the other sign beyond that, which
// clamp to the top level 2^(b−1) − 1 (e.g. 4 bits: −m itself lands one step short, at 7·|s| = (7/8)|m|).
//
// Scale search (the error-minimizing option): per group, the clipping ratio α (symmetric: {1, 1 − 1/40, …, 0.6};
// asymmetric: see below) shrinks the range (asymmetric: [α·lo, α·hi]; symmetric: s = α·m / −2^(b−1)), and the α
// minimizing
//   Σ_k h_k (w_k − w'_k)²,   h_k = E[x_k²] over calibration tokens of input column k,
// is kept. Σ_k h_k δ_k² is the diagonal part of the layer-output error E‖δ·x‖² = δᵀ E[x xᵀ] δ; cross terms
// between columns are ignored (GPTQ keeps them; this is the cheaper, per-group search). α = 1 is RTN, so the
// search never does worse than RTN on the weighted error. Without h (h_k = 1) it minimizes the weight MSE.
// Symmetric formats (issue 19): α also runs above 1, up to 1.125, and each α's codes q_k get their weighted
// least-squares scale s* = Σ_k h_k w_k q_k / Σ_k h_k q_k² (float16), tried as a further grid (every weight re-rounded
// on it); the candidate of least weighted error is kept. llama.cpp's imatrix quantizers (make_qx_quants) do
// the same refit over scales (nmax ± 0.1·i)/max; their weights are h_k·√(σ² + w_k²), ours h_k alone unless
// `magnitudeWeighted` (CPTQuant's `search_weights: activation_magnitude`).
// Asymmetric formats (issue 19, revision 5): the starts are α ∈ {1, 0.95, …, 0.8} and the anchored grids whose
// step is (hi − lo) / (2^b − 1 + δ), δ ∈ {−1, −0.75, …, 1}, with lo or hi on a grid point; from each, up to two
// rounds of the weighted least-squares pair (s*, lo*) = argmin Σ_k h_k (w_k − lo − s·q_k)² for the current codes
// (2 × 2 normal equations, float16), every weight re-rounded on it. llama.cpp's make_qkx2_quants scans the same
// steps and refits scale and minimum the same way. Against a brute-force scan of (s, lo) the result is within
// 2 % of the best weighted error (QuantizerTests); weights already on a float16 asymmetric grid (a dequantized
// Q4_1 group) are kept exactly.
//
// Float16 ("f16") keeps a tensor at 16 bits: each weight rounded to the nearest float16.
// Codes are bit-packed little-endian over the whole tensor: code i occupies bits [i·b, (i+1)·b).

/// A storage scheme for one weight tensor: b-bit integer codes in groups (symmetric or asymmetric), or
/// float16.
public struct QuantFormat: Equatable, Hashable, Sendable, CustomStringConvertible, Codable {
    public static let supportedBits = [2, 3, 4, 5, 6, 8]
    /// Bits per code (2…8), or 16 for float16.
    public let bits: Int
    /// Weights per group (1 for float16).
    public let groupSize: Int
    public let symmetric: Bool

    public init(bits: Int, groupSize: Int, symmetric: Bool) throws {
        guard Self.supportedBits.contains(bits) else {
            throw QuantizationError(
                "bits \(bits) is not supported (supported: "
                    + "\(Self.supportedBits.map(String.init).joined(separator: ", ")), or 16 for float16)")
        }
        guard (1...Self.maxGroupSize).contains(groupSize) else {
            throw QuantizationError("group size must lie in 1...\(Self.maxGroupSize), got \(groupSize)")
        }
        self.bits = bits; self.groupSize = groupSize; self.symmetric = symmetric
    }

    /// Largest group size (weights per scale) a format may have.
    public static let maxGroupSize = 1 << 16

    private init(float16: ()) { bits = 16; groupSize = 1; symmetric = true }

    /// The 16-bit format: every weight rounded to float16.
    public static let float16 = QuantFormat(float16: ())

    /// A width from a recipe's ladder: 16 is float16, anything else an integer format of this group size.
    public static func width(_ bits: Int, groupSize: Int, symmetric: Bool) throws -> QuantFormat {
        bits == 16 ? .float16 : try QuantFormat(bits: bits, groupSize: groupSize, symmetric: symmetric)
    }

    public var isFloat16: Bool { bits == 16 }

    /// "q4_g64_asym", "q3_g32_sym" or "f16".
    public var description: String { isFloat16 ? "f16" : "q\(bits)_g\(groupSize)_\(symmetric ? "sym" : "asym")" }

    /// Parses `description`.
    public init(name: String) throws {
        if name == "f16" { self = .float16; return }
        let parts = name.split(separator: "_")
        guard parts.count == 3, parts[0].first == "q", parts[1].first == "g", let b = Int(parts[0].dropFirst()),
              let g = Int(parts[1].dropFirst()), parts[2] == "sym" || parts[2] == "asym" else {
            throw QuantizationError(
                "'\(name)' is not a quantization format (expected f16 or q<bits>_g<group>_<sym|asym>, e.g. q4_g64_asym)"
            )
        }
        try self.init(bits: b, groupSize: g, symmetric: parts[2] == "sym")
    }

    public init(from decoder: Decoder) throws {
        try self.init(name: try decoder.singleValueContainer().decode(String.self))
    }
    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }

    /// Largest stored code.
    public var maxCode: Int { (1 << bits) - 1 }
    /// Bytes of packed codes for `count` weights.
    public func codeBytes(_ count: Int) -> Int { isFloat16 ? 2 * count : (count * bits + 7) / 8 }
    /// Float16 values stored per group beside the codes: scale, and the minimum when asymmetric.
    public var scalesPerGroup: Int { isFloat16 ? 0 : (symmetric ? 1 : 2) }
    /// Storage of one group: codes plus float16 scale (and minimum).
    public var bytesPerGroup: Double { Double(groupSize * bits) / 8 + Double(2 * scalesPerGroup) }
    /// Storage bits per weight, scales included.
    public var bitsPerWeight: Double { bytesPerGroup * 8 / Double(groupSize) }
    /// Exact bytes a (rows × columns) tensor takes in this format.
    public func storageBytes(rows: Int, columns: Int) -> Int {
        codeBytes(rows * columns) + 2 * scalesPerGroup * (rows * columns / groupSize)
    }
}

/// One row of the formats table: a format and its traits, with its quantize and dequantize functions.
public struct FormatTraits: Sendable {
    public let format: QuantFormat
    public var name: String { format.description }
    public var bits: Int { format.bits }
    public var groupSize: Int { format.groupSize }
    public var symmetric: Bool { format.symmetric }
    public var bytesPerGroup: Double { format.bytesPerGroup }
    public var bitsPerWeight: Double { format.bitsPerWeight }
    /// W (rows × columns) → stored form; `importance` (per column, E[x²]) and `search` as in `quantize`.
    public let quantize:
        @Sendable (_ weights: [Float], _ shape: [Int], _ importance: [Float]?, _ search: Bool) throws -> QuantizedTensor
    public let dequantize: @Sendable (QuantizedTensor) -> [Float]
}

extension QuantFormat {
    /// The formats table for a group size: every integer width, symmetric and asymmetric, and float16.
    public static func table(groupSize: Int) throws -> [FormatTraits] {
        var formats = [QuantFormat.float16]
        for symmetric in [false, true] {
            for b in supportedBits {
                formats.append(try QuantFormat(bits: b, groupSize: groupSize, symmetric: symmetric))
            }
        }
        return formats.map { f in
            FormatTraits(
                format: f,
                quantize: { w, shape, h, search in
                    try QuantizedTensor(weights: w, shape: shape, format: f, importance: h, search: search)
                },
                dequantize: { $0.dequantized() })
        }
    }
}

public struct QuantizationError: ContextualError, Sendable {
    /// What is wrong; the file, when `context` names one, is prefixed when rendered.
    public let message: String
    /// Where and what: the file, key, tensor, expected and found value, as far as the thrower knows them.
    public let context: ErrorContext
    /// An error whose message says everything (it names its file itself, if any).
    public init(_ description: String) { message = description; context = ErrorContext() }
    /// An error with fields; `description` is "FILE: MESSAGE" when `context` names a file.
    public init(_ message: String, _ context: ErrorContext) { self.message = message; self.context = context }
    public var description: String { context.prefixingFile(message) }
}

/// Weights a format cannot store: a float16 value, or a group's float16 scale or minimum, would overflow.
/// Another width may still hold them (a wider code needs a smaller scale), so allocation drops this width
/// for the unit instead of failing (`AllocationUnit.init(name:candidates:)`).
public struct UnrepresentableWeights: ContextualError, Sendable {
    /// What is wrong; the file, when `context` names one, is prefixed when rendered.
    public let message: String
    /// Where and what: the file, key, tensor, expected and found value, as far as the thrower knows them.
    public let context: ErrorContext
    /// An error whose message says everything (it names its file itself, if any).
    public init(_ description: String) { message = description; context = ErrorContext() }
    /// An error with fields; `description` is "FILE: MESSAGE" when `context` names a file.
    public init(_ message: String, _ context: ErrorContext) { self.message = message; self.context = context }
    public var description: String { context.prefixingFile(message) }
}

/// Packs `codes` (each < 2^bits) into a little-endian bit stream.
public func packCodes(_ codes: [UInt8], bits: Int) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: (codes.count * bits + 7) / 8)
    var bit = 0
    for c in codes {
        precondition(Int(c) < 1 << bits, "code \(c) does not fit in \(bits) bits")
        var v = UInt16(c) << UInt16(bit % 8)
        var byte = bit / 8
        while v != 0 { out[byte] |= UInt8(v & 0xff); v >>= 8; byte += 1 }
        bit += bits
    }
    return out
}

/// The first `count` codes of a packed stream.
public func unpackCodes(_ packed: [UInt8], bits: Int, count: Int) -> [UInt8] {
    precondition(
        packed.count * 8 >= count * bits, "\(packed.count) bytes hold fewer than \(count) codes of \(bits) bits")
    let mask = UInt16((1 << bits) - 1)
    return packed.withUnsafeBufferPointer { p in
        (0..<count).map { i in
            let bit = i * bits, byte = bit / 8
            var v = UInt16(p[byte])
            if byte + 1 < p.count { v |= UInt16(p[byte + 1]) << 8 }
            return UInt8((v >> UInt16(bit % 8)) & mask)
        }
    }
}

/// `x.rounded()` (to nearest, ties away from zero), bit for bit, without the libm call `roundf` that the baseline
/// x86-64 target (no SSE4.1 `roundss`) makes of it: the clipping search rounds every weight of a group for every
/// candidate grid, and the call was 9 % of a GPTQ pass's samples. |x| < 2^23 is truncated through Int32 (exact) and
/// its fraction (exact) compared with 1/2; larger magnitudes, infinities and NaN are returned as they are.
@inline(__always) func roundedHalfAway(_ x: Float) -> Float {
    let a = abs(x)
    guard a < 8_388_608 else { return x }
    let t = Float(Int32(a))
    let r = a - t >= 0.5 ? t + 1 : t
    return x.sign == .minus ? -r : r
}

/// The smallest float16 ≥ x (x finite, ≥ 0 and below float16's largest value).
@inline(__always) func halfUp(_ x: Float) -> Float16 {
    var h = Float16(x)
    if Float(h) < x { h = h.nextUp }
    return h
}

/// The largest float16 ≤ x.
@inline(__always) func halfDown(_ x: Float) -> Float16 {
    var h = Float16(x)
    if Float(h) > x { h = h.nextDown }
    return h
}

/// A weight tensor in stored (quantized) form: packed codes with float16 scales and minimums per group, or
/// float16 values.
public struct QuantizedTensor: Equatable, Sendable {
    public let format: QuantFormat
    /// (rows, columns) = (out, in) of the linear layer.
    public let shape: [Int]
    /// Packed codes (integer formats) or the float16 values' bytes (float16).
    public let codes: [UInt8]
    /// Per group, row-major (rows × columns / G); empty for float16. Signed in symmetric formats (the sign
    /// puts the group's extreme on the negative end), ≥ 0 in asymmetric ones.
    public let scales: [Float16]
    /// Per group, asymmetric formats only.
    public let mins: [Float16]

    /// Changes when the quantizer's output for the same input changes (cache keys of statistics computed
    /// from quantized weights): 2 = full-range symmetric codes (issue 19); 3 = the symmetric search's
    /// least-squares refit and α above 1.
    public static let revision = "3"

    /// The revision of the quantizer's output for one format: asymmetric formats changed again with their
    /// search's least-squares refits of scale and minimum and its anchored starts (5; 4 was a single refit per
    /// α); symmetric ones and float16 are at `revision`.
    public static func revision(of f: QuantFormat) -> String { f.symmetric || f.isFloat16 ? revision : "5" }

    public var count: Int { shape.reduce(1, *) }
    public var groups: Int { format.isFloat16 ? 0 : count / format.groupSize }
    /// Bytes this tensor takes on disk: codes, scales and minimums.
    public var bytes: Int { codes.count + 2 * (scales.count + mins.count) }

    /// Assembles a stored tensor (from a file), checking every size against the format.
    public init(format: QuantFormat, shape: [Int], codes: [UInt8], scales: [Float16], mins: [Float16]) throws {
        guard shape.count == 2, shape.allSatisfy({ $0 > 0 }) else {
            throw QuantizationError("expected a 2-D shape, found \(shape)")
        }
        let n = shape[0] * shape[1]
        guard shape[1] % format.groupSize == 0 else {
            throw QuantizationError("\(shape[1]) input columns are not a whole number of groups of \(format.groupSize)")
        }
        guard codes.count == format.codeBytes(n) else {
            throw QuantizationError(
                "\(codes.count) code bytes, expected \(format.codeBytes(n)) for \(shape) in \(format)")
        }
        let g = format.isFloat16 ? 0 : n / format.groupSize
        guard scales.count == (format.scalesPerGroup > 0 ? g : 0) else {
            throw QuantizationError("\(scales.count) scales, expected \(g) for \(shape) in \(format)")
        }
        guard mins.count == (format.scalesPerGroup > 1 ? g : 0) else {
            throw QuantizationError(
                "\(mins.count) minimums, expected \(format.scalesPerGroup > 1 ? g : 0) for \(shape) in \(format)")
        }
        if let bad = scales.firstIndex(where: { !$0.isFinite || (!format.symmetric && $0 < 0) })
            ?? mins.firstIndex(where: { !$0.isFinite })
        {
            throw QuantizationError(
                "scale or minimum of group \(bad) is not finite (or an asymmetric format's scale is negative)")
        }
        self.format = format; self.shape = shape; self.codes = codes; self.scales = scales; self.mins = mins
    }

    /// Quantizes W (shape (rows, columns), row-major), group-wise along each row. `importance`: per input
    /// column, E[x²] on calibration data (weights the search's error; nil: uniform). `search`: the clipping
    /// search (see the top of this file); false is round-to-nearest. `magnitudeWeighted`: the search's error
    /// weight of w_k is h_k·√(σ² + w_k²), σ² the mean w² of its row (llama.cpp's imatrix rule), instead of h_k.
    public init(
        weights w: [Float], shape: [Int], format f: QuantFormat, importance: [Float]? = nil, search: Bool = false,
        magnitudeWeighted: Bool = false
    ) throws {
        try Self.checkQuantizable(w, shape: shape, format: f, importance: importance)
        let K = shape[1]
        if f.isFloat16 {
            let halves = w.map { Float16($0) }
            if let i = halves.firstIndex(where: { !$0.isFinite }) {
                throw UnrepresentableWeights("weight \(i) = \(w[i]) overflows float16")
            }
            try self.init(format: f, shape: shape, codes: halves.withUnsafeBytes { [UInt8]($0) }, scales: [], mins: [])
            return
        }
        let G = f.groupSize, groups = w.count / G
        var codes = [UInt8](repeating: 0, count: w.count)
        var scales = [Float16](repeating: 0, count: groups),
            mins = [Float16](repeating: 0, count: f.symmetric ? 0 : groups)
        let alphas = Self.alphas(format: f, search: search)
        var failure: String?
        // The search's per-weight error weights of the current group.
        var hw = [Float](repeating: 1, count: G)
        var rowMeanSquare: Float = 0
        w.withUnsafeBufferPointer { wp in
            codes.withUnsafeMutableBufferPointer { cp in
                for g in 0..<groups {
                    let base = g * G, col0 = base % K
                    let x = UnsafeBufferPointer(rebasing: wp[base..<(base + G)])
                    if alphas.count > 1 {
                        if magnitudeWeighted && col0 == 0 {
                            var ss: Float = 0
                            for k in base..<(base + K) { ss += wp[k] * wp[k] }
                            rowMeanSquare = ss / Float(K)
                        }
                        for k in 0..<G {
                            let h = importance?[col0 + k] ?? 1
                            hw[k] = magnitudeWeighted ? h * (rowMeanSquare + x[k] * x[k]).squareRoot() : h
                        }
                    }
                    let found = hw.withUnsafeBufferPointer {
                        Self.searchGroup(x, format: f, alphas: alphas, errorWeights: $0)
                    }
                    guard let best = found else {
                        failure = "group \(g) (row \(g * G / K)) has a range too large for a float16 scale"
                        return
                    }
                    scales[g] = best.scale
                    if !f.symmetric { mins[g] = best.min }
                    let (sf, lof) = (Float(best.scale), Float(best.min))
                    for k in 0..<G { cp[base + k] = UInt8(Self.code(x[k], s: sf, lo: lof, format: f)) }
                }
            }
        }
        if let failure { throw UnrepresentableWeights(failure) }
        try self.init(format: f, shape: shape, codes: packCodes(codes, bits: f.bits), scales: scales, mins: mins)
    }

    /// The clipping ratios the search tries (see the top of this file); [1] (round to nearest) without search.
    /// Symmetric grids also try α up to 1.125 (the extreme then lands inside the range), as llama.cpp's scale
    /// candidates (nmax ± 0.9)/max do; the least-squares refit makes those worth trying.
    static let symmetricAlphas = (0...16).map { 1 - Float($0) / 40 } + (1...5).map { 1 + Float($0) / 40 }
    static let asymmetricAlphas = (0...4).map { 1 - Float($0) / 20 }
    static func alphas(format f: QuantFormat, search: Bool) -> [Float] {
        search ? (f.symmetric ? symmetricAlphas : asymmetricAlphas) : [1]
    }

    /// The float16 scale (and minimum; 0 when symmetric) that `init(weights:shape: [1, G], format:, importance:,
    /// search:)` gives the one group x (G = `f.groupSize` weights; `importance`: its G columns' E[x²]), without
    /// building the tensor: GPTQ fixes a group's grid this way once per group and row. Throws what that init throws
    /// (a non-finite weight; `UnrepresentableWeights` when the range is too large for a float16 scale).
    public static func groupGrid(_ x: UnsafeBufferPointer<Float>, format f: QuantFormat,
                                 importance: UnsafeBufferPointer<Float>?, search: Bool) throws
        -> (scale: Float16, min: Float16) {
        precondition(!f.isFloat16 && x.count == f.groupSize && (importance?.count ?? x.count) == x.count)
        if let i = x.firstIndex(where: { !$0.isFinite }) { throw QuantizationError("weight \(i) is \(x[i])") }
        let alphas = Self.alphas(format: f, search: search)
        let found = withUnsafeTemporaryAllocation(of: Float.self, capacity: x.count) { hw in
            for k in 0..<x.count { hw[k] = alphas.count > 1 ? importance?[k] ?? 1 : 1 }
            return Self.searchGroup(x, format: f, alphas: alphas, errorWeights: UnsafeBufferPointer(hw))
        }
        guard let best = found else {
            throw UnrepresentableWeights("group 0 (row 0) has a range too large for a float16 scale")
        }
        return (best.scale, f.symmetric ? 0 : best.min)
    }

    /// The checks of `init(weights:shape:format:...)`: a finite 2-D matrix whose rows are whole groups, and one
    /// importance per input column.
    private static func checkQuantizable(
        _ w: [Float], shape: [Int], format f: QuantFormat, importance: [Float]?
    ) throws {
        guard shape.count == 2, w.count == shape[0] * shape[1], w.count > 0 else {
            throw QuantizationError("expected a 2-D weight matrix, found shape \(shape) with \(w.count) values")
        }
        let K = shape[1]
        guard K % f.groupSize == 0 else {
            throw QuantizationError("\(K) input columns are not a whole number of groups of \(f.groupSize)")
        }
        if let h = importance, h.count != K {
            throw QuantizationError("importance has \(h.count) columns, expected \(K)")
        }
        if let i = w.firstIndex(where: { !$0.isFinite }) { throw QuantizationError("weight \(i) is \(w[i])") }
    }

    /// The grid search over one group x (`f.groupSize` weights): every range shrunk by an α of `alphas` and, when
    /// there is more than one α, the least-squares refits (and, asymmetric, the anchored starts), scored by
    /// Σ_k h_k (x_k − w'_k)² with h = `errorWeights`. Returns the best (error, scale, minimum), nil when a range
    /// is too large for a float16 scale.
    private static func searchGroup(
        _ x: UnsafeBufferPointer<Float>, format f: QuantFormat, alphas: [Float],
        errorWeights hw: UnsafeBufferPointer<Float>
    ) -> (err: Float, scale: Float16, min: Float16)? {
        let G = f.groupSize, half = 1 << (f.bits - 1)
        var best = (err: Float.infinity, scale: Float16(0), min: Float16(0))
        // CKernels' AVX-512 loop for the error and the symmetric refit's sums (bit for bit these loops' floats).
        let simd = compress_kernels_lanes() >= 16
        let qlo = Float(f.symmetric ? -half : 0), qhi = Float(f.symmetric ? half - 1 : f.maxCode)
        func kernelSums(_ sf: Float, _ lof: Float, refit: Bool) -> (err: Float, xq: Float, qq: Float)? {
            guard simd && sf != 0 else { return nil }
            var e: Float = 0, xq: Float = 0, qq: Float = 0
            let status = compress_group_error(x.baseAddress, hw.baseAddress, G, sf, lof, qlo, qhi, refit ? 1 : 0,
                                              &e, &xq, &qq)
            return status == 0 ? (e, xq, qq) : nil
        }
        // Σ_k h_k (x_k − w'_k)² with every weight on its nearest code of the grid (s, lo).
        func weightedError(_ s: Float16, _ lo: Float16) -> Float {
            let (sf, lof) = (Float(s), Float(lo))
            if let k = kernelSums(sf, lof, refit: false) { return k.err }
            var err: Float = 0
            for k in 0..<G {
                let q = Float(Self.code(x[k], s: sf, lo: lof, format: f) - (f.symmetric ? half : 0))
                let d = x[k] - (lof + sf * q)
                err += hw[k] * d * d
            }
            return err
        }
        // Asymmetric search: from the grid (s, lo), up to 2 rounds of the weighted least-squares pair for
        // the current codes q_k, argmin Σ h_k (x_k − lo − s·q_k)² (2 × 2 normal equations, in float16),
        // each weight then re-rounded on it; stops when a round no longer moves the grid.
        func refine(_ s0: Float16, _ lo0: Float16) {
            var (s, lo) = (s0, lo0)
            for _ in 0..<2 {
                let (sf, lof) = (Float(s), Float(lo))
                var sh: Float = 0, sq: Float = 0, sqq: Float = 0, sx: Float = 0, sxq: Float = 0
                for k in 0..<G {
                    let q = Float(Self.code(x[k], s: sf, lo: lof, format: f)), h = hw[k]
                    sh += h; sq += h * q; sqq += h * q * q; sx += h * x[k]; sxq += h * x[k] * q
                }
                let det = sh * sqq - sq * sq
                guard det > 0 else { return }
                let s2 = (sh * sxq - sq * sx) / det, lo2 = (sqq * sx - sq * sxq) / det
                guard s2.isFinite, lo2.isFinite, s2 < 65504, abs(lo2) < 65504 else { return }
                let refit = (Float16(s2), Float16(lo2))
                guard refit.0 > 0, refit != (s, lo) else { return }
                let e = weightedError(refit.0, refit.1)
                if e < best.err { best = (e, refit.0, refit.1) }
                (s, lo) = refit
            }
        }
        for a in alphas {
            guard let (s, lo) = Self.grid(x, format: f, alpha: a) else { return nil }
            // Symmetric: the grid's error and its refit's sums in one pass when the kernel runs.
            let sums = alphas.count > 1 && f.symmetric ? kernelSums(Float(s), Float(lo), refit: true) : nil
            let err = alphas.count > 1 ? sums?.err ?? weightedError(s, lo) : 0
            if err < best.err || best.err == .infinity { best = (err, s, lo) }
            guard alphas.count > 1 else { continue }
            if !f.symmetric {
                // Asymmetric: alternate the weighted least-squares (s, lo) for the current codes and
                // re-rounding on it (up to 2 refits, from this start and the anchored ones below).
                refine(s, lo)
                continue
            }
            // Symmetric: the weighted least-squares scale for this grid's codes q_k,
            // s* = Σ h_k x_k q_k / Σ h_k q_k², in float16, each weight then re-rounded on s*.
            let sf = Float(s)
            var xq: Float = 0, qq: Float = 0
            if let sums {
                (xq, qq) = (sums.xq, sums.qq)
            } else {
                for k in 0..<G {
                    let q = Float(Self.code(x[k], s: sf, lo: 0, format: f) - half), h = hw[k]
                    xq += h * x[k] * q; qq += h * q * q
                }
            }
            guard qq > 0 else { continue }
            let refit = Float16(xq / qq)
            guard refit.isFinite, refit != 0 else { continue }
            let e = weightedError(refit, 0)
            if e < best.err { best = (e, refit, 0) }
        }
        if alphas.count > 1 && !f.symmetric {
            // Anchored starts (llama.cpp's make_qkx2_quants scans the same steps): the group's minimum or
            // maximum on a grid point, step (hi − lo) / (2^b − 1 + δ), δ ∈ {−1, −0.75, …, 1}.
            var lo = Float.infinity, hi = -Float.infinity
            for v in x { lo = Swift.min(lo, v); hi = Swift.max(hi, v) }
            for i in 0...8 {
                let s = halfUp((hi - lo) / (Float(f.maxCode) + Float(i - 4) / 4))
                guard s.isFinite, s > 0 else { continue }
                for anchor in [halfDown(lo), halfDown(hi - Float(f.maxCode) * Float(s))]
                where anchor.isFinite {
                    let e = weightedError(s, anchor)
                    if e < best.err { best = (e, s, anchor) }
                    refine(s, anchor)
                }
            }
        }
        return best
    }

    /// The float16 scale and minimum of a group whose range is shrunk by `alpha` (nil when it overflows).
    @inline(__always)
    static func grid(_ x: UnsafeBufferPointer<Float>, format f: QuantFormat, alpha: Float) -> (Float16, Float16)? {
        if f.symmetric {
            // m: the signed weight of largest magnitude; s = α·m / −2^(b−1), magnitude rounded up.
            var m: Float = 0
            for v in x where abs(v) > abs(m) { m = v }
            let s = halfUp(alpha * abs(m) / Float(1 << (f.bits - 1)))
            return s.isFinite ? (m > 0 ? -s : s, 0) : nil
        }
        var lo = Float.infinity, hi = -Float.infinity
        for v in x { lo = Swift.min(lo, v); hi = Swift.max(hi, v) }
        let lo16 = halfDown(alpha * lo)
        let s = halfUp((alpha * hi - Float(lo16)) / Float(f.maxCode))
        return s.isFinite && lo16.isFinite ? (s, lo16) : nil
    }

    /// The stored code of x on the grid (s, lo) (lo = 0 for symmetric formats).
    @inline(__always)
    static func code(_ x: Float, s: Float, lo: Float, format f: QuantFormat) -> Int {
        guard s != 0 else { return f.symmetric ? 1 << (f.bits - 1) : 0 }
        if f.symmetric {
            let half = 1 << (f.bits - 1)
            return Swift.max(-half, Swift.min(half - 1, Int(roundedHalfAway(x / s)))) + half
        }
        return Swift.max(0, Swift.min(f.maxCode, Int(roundedHalfAway((x - lo) / s))))
    }

    /// The weights this tensor stands for (row-major, shape (rows, columns)).
    public func dequantized() -> [Float] {
        let n = count
        if format.isFloat16 {
            return codes.withUnsafeBytes { raw in raw.bindMemory(to: Float16.self).prefix(n).map { Float($0) } }
        }
        let q = unpackCodes(codes, bits: format.bits, count: n)
        let G = format.groupSize, offset = format.symmetric ? 1 << (format.bits - 1) : 0
        var out = [Float](repeating: 0, count: n)
        out.withUnsafeMutableBufferPointer { o in
            for g in 0..<(n / G) {
                let s = Float(scales[g])
                if format.symmetric {
                    // Exactly s·(c − 2^(b−1)), as ggml's Q4_0/Q8_0 and compressed-tensors compute it (a negative
                    // scale gives −0 at code 2^(b−1); adding a zero minimum would turn it into +0).
                    for k in (g * G)..<((g + 1) * G) { o[k] = s * Float(Int(q[k]) - offset) }
                } else {
                    let lo = Float(mins[g])
                    for k in (g * G)..<((g + 1) * G) { o[k] = lo + s * Float(Int(q[k])) }
                }
            }
        }
        return out
    }

    /// Per-group scale (as Float; signed in symmetric formats), for error bounds.
    public func scale(ofGroup g: Int) -> Float { Float(scales[g]) }
}
