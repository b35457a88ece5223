import Diagnostics
import Evaluation
import Foundation
import Model
import TensorCore
import Training
import Checkpoint

/// One product shape's part of a benchmark's matrix-product time (`BLAS.shapeProfile`).
public struct ProductShare: Codable {
    /// "m×k·k×n", "ᵀ" on a transposed operand, " (attention)" inside the attention kernels.
    public var shape: String
    public var calls: Int
    /// Share of the run's CPU time (wall time × cores).
    public var share: Double
    /// GFLOP/s per process: flops over the shape's core-seconds divided by the cores.
    public var gflopPerSecond: Double

    /// The shapes of `BLAS.shapeProfile`, most time first.
    static func fromProfile(seconds: Double, cores: Double) -> [ProductShare] {
        BLAS.shapeProfile.map { key, t in
            ProductShare(shape: key, calls: t.calls, share: t.coreSeconds / (seconds * cores),
                         gflopPerSecond: t.flops / 1e9 / max(t.coreSeconds / cores, 1e-9))
        }.sorted { $0.share > $1.share }
    }

    /// Lines of the human report: the `limit` largest shapes.
    static func lines(_ products: [ProductShare], limit: Int = 12) -> String {
        products.prefix(limit).map {
            "\n    " + $0.shape.padding(toLength: 34, withPad: " ", startingAt: 0)
                + String(format: "%5.1f%% of CPU time, %6.1f GFLOP/s, %d calls", $0.share * 100, $0.gflopPerSecond,
                         $0.calls)
        }.joined()
    }
}

/// What `compress bench` reports: forward throughput of a random-weight model and where the time goes.
public struct BenchReport: Codable {
    public var config: JSONValue
    public var parameters: Int
    public var window: Int
    public var windows: Int
    public var seconds: Double
    public var tokensPerSecond: Double
    /// Share of CPU time (wall time × cores) inside sgemm calls.
    public var sgemmShare: Double
    public var sgemmGflops: Double
    public var sgemmGflopPerSecond: Double
    /// The part of the products that is attention's QKᵀ and PV: share of CPU time, GFLOP, GFLOP/s.
    public var attentionShare: Double
    public var attentionGflops: Double
    public var attentionGflopPerSecond: Double
    /// Every product shape, most time first.
    public var products: [ProductShare]
    public var blasCore: String
    public var blasThreads: Int
    public var workerThreads: Int
    public var peakResidentBytes: Int
    /// The matrix products' precision and what ran them (`MatrixProduct.kernels`).
    public var precision: String
    public var kernels: String

    public var text: String {
        String(format: """
            forward (eval protocol, incl. LM head + cross-entropy): %.1f tokens/s  (%d window(s) of %d, %.2f s)
            matrix products: %.1f%% of CPU time, %.1f GFLOP, %.1f GFLOP/s per process   [%@; OpenBLAS core %@, \
            %d BLAS threads, %d worker threads]
              of which attention's QKᵀ and PV: %.1f%% of CPU time, %.1f GFLOP, %.1f GFLOP/s per process
            parameters %d, peak memory %@
            products by shape (m×k·k×n):
            """, tokensPerSecond, windows, window, seconds, sgemmShare * 100, sgemmGflops, sgemmGflopPerSecond,
                      kernels, blasCore, blasThreads, workerThreads, attentionShare * 100, attentionGflops,
                      attentionGflopPerSecond, parameters, formatBytes(peakResidentBytes))
            + ProductShare.lines(products)
    }
}

extension Workbench {
    /// SmolLM2-135M's shape: 30 layers, hidden 576, 9 heads / 3 KV heads, FFN 1536, vocab 49152, tied.
    public static func smolLM2Config(layers: Int = 30) -> ModelConfig {
        ModelConfig(
        vocabSize: 49152, hiddenSize: 576, intermediateSize: 1536, numHiddenLayers: layers, numAttentionHeads: 9,
        numKeyValueHeads: 3, rmsNormEps: 1e-5, ropeTheta: 100000, maxPositionEmbeddings: 8192, tieWordEmbeddings: true)
    }

    /// Times the evaluator's forward pass on random weights and random tokens (after a short warm-up).
    public static func bench(config: ModelConfig, window: Int, windows: Int, seed: UInt64 = 0) throws -> BenchReport {
        let model = DecoderModel.random(config: config, seed: seed)
        var rng = SplitMix64(seed: seed &+ 1)
        let tokens = (0..<(window * windows)).map { _ in Int32(rng.next() % UInt64(config.vocabSize)) }
        // Random weights and tokens, no tokenizer: the no-BOS protocol (windows of W tokens; BOS would cost the same).
        _ = try Perplexity.evaluate(model: model, tokens: Array(tokens.prefix(min(window, 64))),
                                    window: min(window, 64), protocol: .noBOS)
        BLAS.resetProfile()
        BLAS.profiling = true
        defer { BLAS.profiling = false }
        let r = try Perplexity.evaluate(model: model, tokens: tokens, window: window, protocol: .noBOS)
        let cores = max(BLAS.threads, Parallel.threads)
        return BenchReport(
            config: config.json, parameters: model.parameterCount, window: window, windows: windows, seconds: r.seconds,
            tokensPerSecond: r.tokensPerSecond, sgemmShare: BLAS.gemmCoreSeconds / (r.seconds * Double(cores)),
            sgemmGflops: BLAS.gemmFlops / 1e9,
            sgemmGflopPerSecond: BLAS.gemmFlops / 1e9 / max(BLAS.gemmCoreSeconds / Double(cores), 1e-9),
            attentionShare: BLAS.attentionCoreSeconds / (r.seconds * Double(cores)),
            attentionGflops: BLAS.attentionFlops / 1e9,
            attentionGflopPerSecond: BLAS.attentionFlops / 1e9 / max(BLAS.attentionCoreSeconds / Double(cores), 1e-9),
            products: ProductShare.fromProfile(seconds: r.seconds, cores: Double(cores)),
            blasCore: BLAS.coreName,
            blasThreads: BLAS.threads, workerThreads: Parallel.threads, peakResidentBytes: peakResidentBytes(),
            precision: MatrixProduct.precision.rawValue, kernels: MatrixProduct.kernels)
    }
}

/// What `compress bench-train` reports: training throughput (forward + backward + clip + AdamW).
public struct BenchTrainReport: Codable {
    public var parameters: Int
    public var batch: Int
    public var window: Int
    public var steps: Int
    public var warmup: Int
    public var seconds: Double
    public var tokensPerSecond: Double
    public var loss: Double
    public var sgemmShare: Double
    public var sgemmGflopPerSecond: Double
    /// Every product shape, most time first.
    public var products: [ProductShare]
    public var blasCore: String
    public var workerThreads: Int
    public var peakResidentBytes: Int
    public var weights: String
    /// The matrix products' precision and what ran them (`MatrixProduct.kernels`).
    public var precision: String
    public var kernels: String

    public var text: String {
        String(format: """
            training step (forward + backward + clip + AdamW, cross-entropy): %.1f tokens/s  (%d timed steps of %d × \
            %d, %.2f s)
            matrix products: %.1f%% of CPU time, %.1f GFLOP/s   [%@; OpenBLAS core %@, %d worker threads]
            parameters %d (%@), loss %.4f, peak memory %@
            products by shape (m×k·k×n):
            """, tokensPerSecond, steps, batch, window, seconds, sgemmShare * 100, sgemmGflopPerSecond, kernels,
                      blasCore, workerThreads,
                      parameters, weights, loss, formatBytes(peakResidentBytes)) + ProductShare.lines(products)
    }
}

extension Workbench {
    /// Times training steps of the distillation loop with the LM cross-entropy loss only (no teacher), on
    /// random token windows: a checkpoint's weights when given, else random SmolLM2-shaped weights.
    public static func benchTrain(checkpoint: String?, batch: Int, window: Int, steps: Int, warmup: Int,
                                  seed: UInt64 = 0) throws -> BenchTrainReport {
        let model = try checkpoint.map { try Checkpoint.read($0).model }
            ?? DecoderModel.random(config: smolLM2Config(), seed: seed)
        var rng = SplitMix64(seed: seed &+ 1)
        let tokens = (0..<(batch * window * 64)).map { _ in Int32(rng.next() % UInt64(model.config.vocabSize)) }
        var c = DistillConfig()
        c.steps = warmup + steps; c.batch = batch; c.window = window
        c.klWeight = 0; c.ceWeight = 1; c.lr = 1e-4; c.weightDecay = 0.1; c.warmup = 0; c.decay = .constant
        let d: Distiller
        do { d = try Distiller(teacher: model, student: model, config: c, trainTokens: tokens) } catch {
            throw error.adding(place: "bench-train")
        }
        for _ in 0..<warmup { d.trainStep() }
        BLAS.resetProfile()
        BLAS.profiling = true
        let start = Date()
        var loss = 0.0
        for _ in 0..<steps { loss = d.trainStep().loss }
        let seconds = Date().timeIntervalSince(start)
        BLAS.profiling = false
        let cores = Double(max(Parallel.threads, 1))
        return BenchTrainReport(
            parameters: model.parameterCount, batch: batch, window: window, steps: steps, warmup: warmup,
            seconds: seconds,
            tokensPerSecond: Double(steps * batch * window) / seconds, loss: loss,
            sgemmShare: BLAS.gemmCoreSeconds / (seconds * cores), sgemmGflopPerSecond: BLAS.gemmFlops / seconds / 1e9,
            products: ProductShare.fromProfile(seconds: seconds, cores: cores),
            blasCore: BLAS.coreName, workerThreads: Parallel.threads, peakResidentBytes: peakResidentBytes(),
            weights: checkpoint ?? "random", precision: MatrixProduct.precision.rawValue,
            kernels: MatrixProduct.kernels)
    }
}

/// One matrix product shape timed in both precisions (`compress bench --products`).
public struct ProductTiming: Codable {
    /// (m, k) · (k, n): m activation rows, k input features, n output features (weight (n, k), as a linear layer).
    public var m, k, n: Int
    public var what: String
    /// Best of the timed repeats, in GFLOP/s of the whole process (2·m·n·k flops per product).
    public var fp32GflopPerSecond: Double
    /// oneDNN's float32 kernels on the same product.
    public var oneDNNFloat32GflopPerSecond: Double
    public var bf16GflopPerSecond: Double?
}

extension Workbench {
    /// The linear-layer products of a model of `config` over `rows` tokens (and the LM head over 256 rows, the
    /// evaluator's chunk), each timed as the best of `repeats` runs in float32 (OpenBLAS) and, when the CPU has
    /// bf16 units, in bf16 (oneDNN, the weight packed once as in evaluation). The bf16 figures are the peak the
    /// model's own shapes reach on this machine.
    public static func benchProducts(config c: ModelConfig, rows: Int, repeats: Int = 5) -> [ProductTiming] {
        let heads = c.numAttentionHeads * c.headDim, kv = c.numKeyValueHeads * c.headDim
        let shapes: [(String, Int, Int, Int)] = [
            ("q_proj / o_proj", rows, c.hiddenSize, heads), ("k_proj / v_proj", rows, c.hiddenSize, kv),
            ("gate_proj / up_proj", rows, c.hiddenSize, c.intermediateSize),
            ("down_proj", rows, c.intermediateSize, c.hiddenSize), ("lm_head", 256, c.hiddenSize, c.vocabSize),
        ]
        let saved = MatrixProduct.precision
        defer { MatrixProduct.precision = saved }
        var rng = SplitMix64(seed: 7)
        return shapes.map { what, m, k, n in
            let a = Tensor(shape: [m, k]), w = Tensor(shape: [n, k]), out = Tensor(shape: [m, n])
            for i in 0..<a.count { a[i] = Float(Double.random(in: -0.5..<0.5, using: &rng)) }
            for i in 0..<w.count { w[i] = Float(Double.random(in: -0.5..<0.5, using: &rng)) * 0.05 }
            func best(_ p: Precision, _ library: MatrixProduct.Float32Library = .openBLAS) -> Double {
                MatrixProduct.precision = p
                MatrixProduct.float32Library = library
                defer { MatrixProduct.float32Library = .openBLAS }
                return MatrixProduct.withWeightCache {
                    var t = Double.infinity
                    for r in 0...repeats {
                        let start = DispatchTime.now().uptimeNanoseconds
                        MatrixProduct.gemm(transB: true, m: m, n: n, k: k, a: a.data, lda: k, b: w.data, ldb: k,
                                           c: out.data, ldc: n, weight: w)
                        let s = Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
                        if r > 0 { t = min(t, s) }  // the first run creates the primitive and packs the weight
                    }
                    return 2 * Double(m) * Double(n) * Double(k) / t / 1e9
                }
            }
            let bf16 = MatrixProduct.bf16Unsupported() == nil ? best(.bf16) : nil
            return ProductTiming(m: m, k: k, n: n, what: what, fp32GflopPerSecond: best(.fp32),
                                 oneDNNFloat32GflopPerSecond: best(.fp32, .oneDNN), bf16GflopPerSecond: bf16)
        }
    }
}
