import Diagnostics
import Evaluation
import Foundation
import Model
import TensorCore
import Training
import Checkpoint

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
    public var blasCore: String
    public var blasThreads: Int
    public var workerThreads: Int
    public var peakResidentBytes: Int

    public var text: String {
        String(format: """
            forward (eval protocol, incl. LM head + cross-entropy): %.1f tokens/s  (%d window(s) of %d, %.2f s)
            sgemm: %.1f%% of CPU time, %.1f GFLOP, %.1f GFLOP/s per process   [OpenBLAS core %@, %d BLAS threads, %d worker threads]
            parameters %d, peak memory %@
            """, tokensPerSecond, windows, window, seconds, sgemmShare * 100, sgemmGflops, sgemmGflopPerSecond,
                      blasCore, blasThreads, workerThreads, parameters, formatBytes(peakResidentBytes))
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
        _ = try Perplexity.evaluate(model: model, tokens: Array(tokens.prefix(min(window, 64))), window: min(window, 64), protocol: .noBOS)
        BLAS.resetProfile()
        BLAS.profiling = true
        defer { BLAS.profiling = false }
        let r = try Perplexity.evaluate(model: model, tokens: tokens, window: window, protocol: .noBOS)
        let cores = max(BLAS.threads, Parallel.threads)
        return BenchReport(
            config: config.json, parameters: model.parameterCount, window: window, windows: windows, seconds: r.seconds,
            tokensPerSecond: r.tokensPerSecond, sgemmShare: BLAS.gemmCoreSeconds / (r.seconds * Double(cores)),
            sgemmGflops: BLAS.gemmFlops / 1e9, sgemmGflopPerSecond: BLAS.gemmFlops / 1e9 / max(BLAS.gemmCoreSeconds / Double(cores), 1e-9), blasCore: BLAS.coreName,
            blasThreads: BLAS.threads, workerThreads: Parallel.threads, peakResidentBytes: peakResidentBytes())
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
    public var blasCore: String
    public var workerThreads: Int
    public var peakResidentBytes: Int
    public var weights: String

    public var text: String {
        String(format: """
            training step (forward + backward + clip + AdamW, cross-entropy): %.1f tokens/s  (%d timed steps of %d × %d, %.2f s)
            sgemm: %.1f%% of CPU time, %.1f GFLOP/s   [OpenBLAS core %@, %d worker threads]
            parameters %d (%@), loss %.4f, peak memory %@
            """, tokensPerSecond, steps, batch, window, seconds, sgemmShare * 100, sgemmGflopPerSecond, blasCore, workerThreads,
                      parameters, weights, loss, formatBytes(peakResidentBytes))
    }
}

extension Workbench {
    /// Times training steps of the distillation loop with the LM cross-entropy loss only (no teacher), on
    /// random token windows: a checkpoint's weights when given, else random SmolLM2-shaped weights.
    public static func benchTrain(checkpoint: String?, batch: Int, window: Int, steps: Int, warmup: Int, seed: UInt64 = 0) throws -> BenchTrainReport {
        let model = try checkpoint.map { try Checkpoint.read($0).model } ?? DecoderModel.random(config: smolLM2Config(), seed: seed)
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
            parameters: model.parameterCount, batch: batch, window: window, steps: steps, warmup: warmup, seconds: seconds,
            tokensPerSecond: Double(steps * batch * window) / seconds, loss: loss,
            sgemmShare: BLAS.gemmCoreSeconds / (seconds * cores), sgemmGflopPerSecond: BLAS.gemmFlops / seconds / 1e9,
            blasCore: BLAS.coreName, workerThreads: Parallel.threads, peakResidentBytes: peakResidentBytes(),
            weights: checkpoint ?? "random")
    }
}
