// Layer-wise calibration for one-shot compressors that reconstruct each linear layer from its inputs
// (SparseGPT, GPTQ, Wanda): the shared mechanism of Passes/Sparsity.swift and CPTQuant's `method: gptq`.
//
// Papers: E. Frantar, D. Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot",
// 2023; E. Frantar, S. Ashkboos, T. Hoefler, D. Alistarh, "GPTQ: Accurate Post-Training Quantization for
// Generative Pre-trained Transformers", 2022; M. Sun, Z. Liu, A. Bair, J. Z. Kolter, "A Simple and Effective
// Pruning Approach for Large Language Models" (Wanda), 2023.
//
// Each compressor minimises, per linear layer W (OC, C) with calibration inputs X (C, n), the layer-output
// error ‖WX − ŴX‖², whose Hessian in Ŵ's rows is
//   H = 2 X Xᵀ / n  (here accumulated as (2/n) Σ_t x_t x_tᵀ over the n calibration tokens).
// Each window's Σ_t x_t x_tᵀ is one Gram product (`MatrixProduct.gramUpper`), float32 whatever the run's precision,
// summed in Float64 across windows in window order; the windows' Gram products run side by side, one single-threaded
// product per worker (`InputStatistics.add(windows:rows:)`: the same doubles as one window at a time). A stage's
// `hessian_precision: "bf16"` rounds the Gram product's inputs to bf16 (float32 accumulation): 1.7× faster where bf16
// runs at twice float32 (AVX512-BF16 on Zen 4), but on SmolLM2 at 128 × 2048 tokens it moved SparseGPT 2:4's PPL by
// +2.2 and +4.0 % against the float32 Hessian under the same bf16 forward (two calibration draws; benchmarks/README.md,
// issue 29), so it is opt-in. (A likely reason, not verified: each entry's rounding error is up to 2⁻⁸ of Σ_t |x_ti
// x_tj|, which the few tokens with massive activations dominate, so it need not average out over the tokens.) Damping,
// the factorization and the weight updates stay float32 / Float64.
// The calibration windows run through the model in order, sublayer by sublayer:
//   1. the residual stream of every window entering sublayer s is kept (windows × T × C floats);
//   2. the input projections (q/k/v, or gate/up) share one input, the normed stream: its statistics are
//      accumulated once and each targeted projection is compressed with them;
//   3. the sublayer runs with the compressed input projections up to its output projection (o_proj: the
//      attention output; down_proj: the SwiGLU activation), whose input is kept (the projection is not run with
//      its old weights: its output would be discarded); after the windows, its statistics are accumulated from
//      the kept inputs and the output projection is compressed;
//   4. the kept streams advance through the compressed sublayer (x += post(input · Ŵ_outᵀ + b_out): the output
//      projection's bias and, when the spec has them, the post-sublayer norm, as the decoder adds a sublayer).
// So every layer is compressed on the activations of the already-compressed layers before it, as SparseGPT
// and GPTQ do.
// Deviation: the papers' reference procedures collect all of a decoder layer's inputs in one forward with the
// layer still dense; here o_proj (down_proj) sees the outputs of the already-compressed q/k/v (gate/up), which
// is the papers' "sequential" principle applied inside the layer too.
// Memory: the residual streams (windows × T × C floats) plus, when an output projection is targeted, its
// inputs (windows × T × max(H·D, F) floats): 0.6 GB and 1.6 GB for 128 × 2048 tokens of SmolLM2-135M; and for the
// statistics, a batch of one window per worker (its normed input and float32 Gram matrix; 28 MB for SmolLM2 on two
// cores), when the batch fits in 512 MiB (else one window at a time, each Gram product split over the workers).

import Diagnostics
import Foundation
import Model
import Recipes
import TensorCore

/// Calibration statistics of one linear input (shared by the projections that read it): the number of
/// tokens n, Σ_t x_t² per column, and, when asked for, the Gram matrix Σ_t x_t x_tᵀ.
public final class InputStatistics {
    /// Input features C.
    public let features: Int
    /// Calibration tokens seen.
    public private(set) var tokens = 0
    /// Wall seconds spent accumulating (the Hessian's share of a layer-wise pass).
    public private(set) var seconds = 0.0
    /// Σ_t x_{t,j}² per column j, in Float64.
    public private(set) var squares: [Double]
    /// Σ_t x_t x_tᵀ (C, C) row-major in Float64 (upper triangle while accumulating); nil: diagonal only.
    private var gram: [Double]?
    /// One float32 Gram matrix (C, C) per window of a batch.
    private var scratch: [UnsafeMutablePointer<Float>] = []
    private var factorizations: [String: HessianFactorization] = [:]

    /// The precision of each window's Gram product (float32, or bf16 inputs with float32 accumulation).
    public let gramPrecision: Precision

    /// `gramPrecision` bf16 needs `MatrixProduct.prepareBF16()` to have succeeded.
    public init(features: Int, full: Bool, gramPrecision: Precision = .fp32) {
        self.features = features
        self.gramPrecision = gramPrecision
        squares = [Double](repeating: 0, count: features)
        gram = full ? [Double](repeating: 0, count: features * features) : nil
    }

    /// Adds the rows of x (rows, C).
    public func add(_ x: UnsafePointer<Float>, rows: Int) { add(windows: [x], rows: rows) }

    /// Adds the rows of each window xs[i] (rows, C), in order: the same doubles as one `add` per window (each
    /// column sums its tokens window after window; each window's float32 Gram matrix is added to the Float64 sum
    /// in window order), but the windows' Gram products run side by side, one per worker
    /// (`MatrixProduct.gramUpper(each:)`), which is faster than splitting each over the workers.
    public func add(windows xs: [UnsafePointer<Float>], rows: Int) {
        let C = features, start = Date()
        defer { seconds += Date().timeIntervalSince(start) }
        tokens += rows * xs.count
        // Columns split over the workers; each column still sums its tokens in order (the same doubles).
        squares.withUnsafeMutableBufferPointer { sq in
            let s = sq.baseAddress!
            Parallel.forEachChunk(C, minChunk: 64) { cols in
                for x in xs {
                    DoubleAccumulation.addSquares(x + cols.lowerBound, rows: rows, cols: cols.count, ld: C,
                                                  into: s + cols.lowerBound)
                }
            }
        }
        guard gram != nil, !xs.isEmpty else { return }
        while scratch.count < xs.count {
            scratch.append(UnsafeMutablePointer<Float>.allocate(capacity: C * C))
        }
        let grams = Array(scratch.prefix(xs.count))
        // Each window's Gram matrix, float32 accumulation (of bf16-rounded rows with `gramPrecision` bf16), summed in
        // Float64 across windows.
        MatrixProduct.gramUpper(n: C, k: rows, each: xs, lda: C, into: grams, ldc: C, precision: gramPrecision)
        // Rows split so that each worker adds as many of the triangle's elements (row i has C − i).
        let parts = Parallel.chunkCount(C, minChunk: 32)
        let ends = (0...parts).map { p in C - Int((Double(C * C) * (1 - Double(p) / Double(parts))).squareRoot()) }
        gram!.withUnsafeMutableBufferPointer { g in
            let g = g.baseAddress!
            DispatchQueue.concurrentPerform(iterations: parts) { p in
                for i in ends[p]..<ends[p + 1] {
                    for s in grams { DoubleAccumulation.add(s + i * C + i, count: C - i, into: g + i * C + i) }
                }
            }
        }
    }

    deinit { for s in scratch { s.deallocate() } }

    /// Per column ‖x_j‖₂ over the calibration tokens (Wanda's input norm).
    public var columnNorms: [Double] { squares.map { $0.squareRoot() } }

    /// H = (2/n) Σ_t x_t x_tᵀ (C, C), row-major, Float64. Needs the full statistics.
    public func hessian() -> [Double] {
        guard let g = gram else { preconditionFailure("input statistics kept the diagonal only") }
        let C = features, scale = tokens > 0 ? 2 / Double(tokens) : 0
        var h = [Double](repeating: 0, count: C * C)
        for i in 0..<C {
            for j in i..<C { h[i * C + j] = scale * g[i * C + j]; h[j * C + i] = h[i * C + j] }
        }
        return h
    }

    /// The damped, optionally reordered Hessian's inverse Cholesky factor (computed once per setting and
    /// shared by the projections that read this input).
    public func factorization(damp: Double, actOrder: Bool) throws -> HessianFactorization {
        let key = "\(damp) \(actOrder)"
        if let f = factorizations[key] { return f }
        let f = try HessianFactorization(hessian: hessian(), features: features, damp: damp, actOrder: actOrder)
        factorizations[key] = f
        return f
    }
}

/// What the optimal-brain-surgeon column solver needs from H (SparseGPT, GPTQ):
///   dead columns (H_jj = 0: the input is always 0) get H_jj = 1 and their weights are zeroed;
///   relative damping: H += λ I, λ = damp · mean_j H_jj;
///   optional activation order: columns processed by decreasing H_jj (GPTQ's act-order), P the permutation;
///   U: upper Cholesky factor of (P H Pᵀ)⁻¹, Float32, so that H_F⁻¹'s row j is U_j· · U_jj for the columns
///   F = {j, …} not yet processed.
public struct HessianFactorization {
    /// Columns of the input in processing order (identity without act-order).
    public let order: [Int]
    /// Columns whose input is always zero.
    public let dead: [Int]
    /// The damping λ added to the diagonal.
    public let damping: Double
    /// (C, C) row-major upper factor, in processing order.
    public let u: [Float]

    public init(hessian given: [Double], features C: Int, damp: Double, actOrder: Bool) throws {
        var h = given
        var dead: [Int] = []
        for j in 0..<C where h[j * C + j] == 0 { dead.append(j); h[j * C + j] = 1 }
        let mean = (0..<C).reduce(0.0) { $0 + h[$1 * C + $1] } / Double(max(C, 1))
        let lambda = damp * mean
        for j in 0..<C { h[j * C + j] += lambda }
        let order = actOrder
            ? (0..<C).sorted { h[$0 * C + $0] != h[$1 * C + $1] ? h[$0 * C + $0] > h[$1 * C + $1] : $0 < $1 }
            : Array(0..<C)
        if actOrder {
            var p = [Double](repeating: 0, count: C * C)
            for i in 0..<C { for j in 0..<C { p[i * C + j] = h[order[i] * C + order[j]] } }
            h = p
        }
        do { try SymmetricPositiveDefinite.upperCholeskyOfInverse(&h, n: C) } catch {
            throw RecipeError("the damped Hessian is not positive definite (\(error)); raise 'damp'")
        }
        self.order = order; self.dead = dead; damping = lambda
        u = h.map { Float($0) }
    }
}

/// Where a layer-wise pass's wall time went (issue 29: the bf16 calibration forward against the float32 work):
/// the calibration forward (embedding, sublayers and output projections on every window), the input statistics
/// (Σ x xᵀ, the Hessians) and the compressor's solves (factorizations, OBS / GPTQ updates).
public struct LayerwiseTiming: Codable, Equatable, Sendable {
    public var forwardSeconds = 0.0
    public var hessianSeconds = 0.0
    public var solveSeconds = 0.0
    public init() {}
}

/// The calibration driver (see the top of this file).
public enum Layerwise {
    /// The most memory a batch of windows' statistics may take (`run`): 512 MiB.
    static let batchBytes = 512 << 20

    /// Compresses one linear weight given its input's statistics; returns the replacement (same shape).
    public typealias Compressor = (_ id: LinearID, _ weight: LinearWeight,
                                   _ input: InputStatistics) throws -> LinearWeight

    /// The model with every linear of a kind in `targets` replaced by `compress`'s result, layer by layer on
    /// the calibration `windows` (all of one length) propagated through the already-compressed layers.
    /// `fullHessian`: accumulate Σ x xᵀ (SparseGPT, GPTQ) or only Σ x² per column (Wanda); `hessianPrecision`:
    /// its Gram products' precision (float32, or bf16 inputs: see the top of this file). Throws when bf16 is asked on
    /// a CPU without bf16 products.
    public static func run(model given: DecoderModel, windows: [[Int32]], targets: Set<LinearKind>, fullHessian: Bool,
                           hessianPrecision: Precision = .fp32,
                           timing: UnsafeMutablePointer<LayerwiseTiming>? = nil, progress: (String) -> Void = { _ in },
                           compress: Compressor) throws -> DecoderModel {
        if hessianPrecision == .bf16 && fullHessian {
            do { try MatrixProduct.prepareBF16() } catch {
                throw RecipeError("'hessian_precision' bf16: \(error)")
            }
        }
        guard let T = windows.first?.count, T > 0 else {
            throw RecipeError("layer-wise calibration needs calibration windows")
        }
        guard windows.allSatisfy({ $0.count == T }) else {
            throw RecipeError("calibration windows must share one length")
        }
        var model = given
        let c = model.config, C = c.hiddenSize, N = windows.count, L = model.layers.count
        let start = Date()
        // Residual streams of every window.
        let states = Tensor(shape: [N, T, C])
        do {
            let engine = TransformerDecoder(model: model, window: T)
            for (w, ids) in windows.enumerated() {
                engine.embed(ids)
                (states.data + w * T * C).update(from: engine.residual, count: T * C)
            }
        }
        let outWidth = c.blocks.map {
            max($0.attention ? $0.numAttentionHeads * c.headDim : 0, $0.mlp ? $0.intermediateSize : 0)
        }.max() ?? 0
        let needStore = targets.contains(.o) || targets.contains(.down)
        let store = Tensor(shape: needStore ? [N, T, outWidth] : [0])
        let normed = Tensor(shape: [T, C])
        // Windows whose statistics are added together (their Gram products side by side, one per worker), when a
        // batch's float32 copies (normed inputs and Gram matrices: T·C + W² floats a window, W the widest input)
        // fit in `batchBytes`; else one window at a time, each Gram product split over the workers.
        let widest = needStore && fullHessian ? max(C, outWidth) : C
        let perWindow = 4 * (T * C + (fullHessian ? widest * widest : 0))
        let batch = Parallel.threads > 1 && Parallel.threads * perWindow <= batchBytes ? Parallel.threads : 1
        let normedBatch = Tensor(shape: [batch, T, C])
        let totalSublayers = 2 * L
        var done = 0
        var hessian = 0.0, solve = 0.0
        defer {
            if let timing {
                timing.pointee.hessianSeconds = hessian
                timing.pointee.solveSeconds = solve
                timing.pointee.forwardSeconds = Date().timeIntervalSince(start) - hessian - solve
            }
        }

        func replace(_ id: LinearID, _ stats: InputStatistics) throws {
            guard let w = model.linear(id) else { return }
            let t0 = Date()
            defer { solve += Date().timeIntervalSince(t0) }
            let new = try compress(id, w, stats)
            do { model = try model.replacing(.linear(id), with: new) } catch {
                throw error.adding(ErrorContext(tensor: WeightID.linear(id).hfName), place: "\(id)")
            }
            progress(String(format: "  %@ (%d × %d) on %d tokens: %.2f s", id.description, w.outFeatures, w.inFeatures,
                            stats.tokens,
                            Date().timeIntervalSince(t0)))
        }

        for l in 0..<L {
            for s in [2 * l, 2 * l + 1] {
                let attention = s % 2 == 0
                let layer = model.layers[l]
                guard attention ? layer.attention != nil : layer.mlp != nil else { done += 1; continue }
                let inKinds: [LinearKind] = (attention ? [.q, .k, .v] : [.gate, .up]).filter(targets.contains)
                let outKind: LinearKind = attention ? .o : .down
                // 2. The shared input of the input projections.
                if !inKinds.isEmpty {
                    let stats = InputStatistics(features: C, full: fullHessian, gramPrecision: hessianPrecision)
                    for w0 in stride(from: 0, to: N, by: batch) {
                        let xs = (w0..<min(N, w0 + batch)).map { w in
                            let x = normedBatch.data + (w - w0) * T * C
                            model.applyNorm(s, out: x, inp: states.data + w * T * C, rows: T)
                            return UnsafePointer(x)
                        }
                        stats.add(windows: xs, rows: T)
                    }
                    hessian += stats.seconds
                    for k in inKinds { try replace(LinearID(layer: l, kind: k), stats) }
                }
                // 3. The sublayer with its compressed input projections.
                let outTargeted = targets.contains(outKind)
                let width = attention ? c.blocks[l].numAttentionHeads * c.headDim : c.blocks[l].intermediateSize
                let capture = OutputProjectionInput(
                    sublayer: s, width: width,
                    stats: outTargeted
                        ? InputStatistics(features: width, full: fullHessian, gramPrecision: hessianPrecision) : nil,
                    store: outTargeted ? store.data : nil, windowStride: T * outWidth)
                let engine = TransformerDecoder(model: model, window: T)
                // bf16: each weight packed once for all windows (no weight changes inside).
                MatrixProduct.withWeightCache {
                    for w in 0..<N {
                        Parallel.copy(states.data + w * T * C, to: engine.residual, count: T * C)
                        capture.window = w
                        engine.runSublayers(s..<(s + 1), rows: T, observer: capture, withoutOutput: outTargeted)
                        if !outTargeted {
                            Parallel.copy(engine.residual, to: states.data + w * T * C, count: T * C)
                        }
                    }
                }
                // 4. The output projection, then the streams through it: x += post(input · Ŵᵀ + b), as the decoder adds
                // a sublayer's output (its bias, and its post-sublayer norm when the spec has them).
                if outTargeted, let stats = capture.stats {
                    for w0 in stride(from: 0, to: N, by: batch) {
                        let xs = (w0..<min(N, w0 + batch)).map { UnsafePointer(store.data + $0 * T * outWidth) }
                        stats.add(windows: xs, rows: T)
                    }
                    hessian += stats.seconds
                    let id = LinearID(layer: l, kind: outKind)
                    try replace(id, stats)
                    let wout = model.linear(id)!
                    let bias = attention ? model.layers[l].attention!.biases[.o] : model.layers[l].mlp!.biases[.down]
                    let post = attention ? model.layers[l].attention!.postNorm : model.layers[l].mlp!.postNorm
                    // After the last sublayer nothing reads the streams.
                    let streamsRead = s < totalSublayers - 1
                    MatrixProduct.withWeightCache {
                        for w in 0..<N where streamsRead {
                            let x = states.data + w * T * C, inp = store.data + w * T * outWidth
                            if let post {
                                wout.forward(out: normed.data, inp: inp, rows: T)
                                if let bias { biasForward(out: normed.data, bias: bias.data, rows: T, columns: C) }
                                model.normForward(out: normed.data, inp: normed.data, weight: post.data, rows: T,
                                                  channels: C)
                                residualAdd(x, normed.data, count: T * C)
                            } else {
                                wout.forward(out: x, inp: inp, rows: T, beta: 1)
                                if let bias { biasForward(out: x, bias: bias.data, rows: T, columns: C) }
                            }
                        }
                    }
                }
                done += 1
                let elapsed = Date().timeIntervalSince(start)
                progress(String(format: "layer-wise: sublayer %d/%d done, %.0f s elapsed, ETA %.0f s", done,
                                totalSublayers, elapsed,
                                elapsed / Double(done) * Double(totalSublayers - done)))
            }
        }
        return model
    }
}

/// Keeps the input of a sublayer's output projection (o_proj / down_proj) for its statistics and the forward
/// through the compressed projection.
final class OutputProjectionInput: ForwardObserver {
    let sublayer: Int, width: Int
    let stats: InputStatistics?
    let store: UnsafeMutablePointer<Float>?
    let windowStride: Int
    var window = 0

    init(sublayer: Int, width: Int, stats: InputStatistics?, store: UnsafeMutablePointer<Float>?, windowStride: Int) {
        self.sublayer = sublayer
        self.width = width
        self.stats = stats
        self.store = store
        self.windowStride = windowStride
    }

    /// Keeps the window's input (its statistics are added after the forward, in batches of windows).
    private func keep(_ x: UnsafePointer<Float>, rows: Int) {
        guard let store else { return }
        Parallel.copy(x, to: store + window * windowStride, count: rows * width)
    }
    func headOutputs(layer: Int, att: UnsafePointer<Float>, rows: Int) {
        if sublayer == 2 * layer { keep(att, rows: rows) }
    }
    func mlpActivation(layer: Int, act: UnsafePointer<Float>, rows: Int) {
        if sublayer == 2 * layer + 1 { keep(act, rows: rows) }
    }
}
