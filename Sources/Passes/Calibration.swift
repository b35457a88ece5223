import Foundation
import Model
import TensorCore

/// How per-token scores are reduced over a window's positions, then over the calibration windows.
public enum Aggregation: String, Codable, CaseIterable, Sendable {
    case mean, sum, l2, max

    /// Folds one value into an accumulator (the reduction's running state).
    @inline(__always) func fold(_ acc: inout Double, _ x: Double) {
        switch self {
        case .mean, .sum: acc += x
        case .l2: acc += x * x
        case .max: acc = Swift.max(acc, x)
        }
    }

    /// The reduction of `count` folded values.
    @inline(__always) func finish(_ acc: Double, count: Int) -> Double {
        switch self {
        case .mean: return acc / Double(count)
        case .sum, .max: return acc
        case .l2: return acc.squareRoot()
        }
    }
}

/// Runs calibration windows through a model while keeping the residual stream entering every sublayer, so a
/// variant of the model that differs from sublayer s on resumes at s instead of recomputing from the embedding
/// (FinerCut's trials, Minitron's block-removal perplexities).
final class ResumableForward: ForwardObserver {
    let engine: TransformerDecoder
    let T: Int, C: Int, S: Int
    /// (2L + 1) × T × C: the residual entering sublayer s; s = 2L is the input of the final norm.
    let states: Tensor
    let logits: Tensor

    init(model: DecoderModel, window: Int) {
        engine = TransformerDecoder(model: model, window: window)
        T = window
        C = model.config.hiddenSize
        S = 2 * model.layers.count
        states = Tensor(shape: [S + 1, window, C])
        logits = Tensor(shape: [window, model.config.vocabSize])
    }

    func sublayerInput(_ s: Int, x: UnsafePointer<Float>, rows: Int) {
        (states.data + s * T * C).update(from: x, count: rows * C)
    }

    /// The full forward of `ids` (T tokens) without the sublayers in `skip`, saving every sublayer's input;
    /// returns the logits (T, V).
    @discardableResult
    func run(_ ids: [Int32], skip: Set<Int> = []) -> UnsafePointer<Float> {
        precondition(ids.count == T, "calibration window of \(ids.count) tokens, expected \(T)")
        engine.embed(ids)
        engine.runSublayers(0..<S, rows: T, skip: skip, observer: self)
        let h = engine.finalNorm(rows: T, observer: self)
        engine.head(h, rows: T, into: logits.data)
        return UnsafePointer(logits.data)
    }

    /// Logits (T, V) of the model without `skip`, resuming from the saved input of sublayer `s`. Valid when
    /// the saved states came from a run whose skipped set agrees with `skip` on every sublayer before s.
    func resume(at s: Int, skip: Set<Int>) -> UnsafePointer<Float> {
        engine.residual.update(from: states.data + s * T * C, count: T * C)
        engine.runSublayers(s..<S, rows: T, skip: skip)
        let h = engine.finalNorm(rows: T)
        engine.head(h, rows: T, into: logits.data)
        return UnsafePointer(logits.data)
    }
}

/// Σ NLL of tokens 2..T of `ids` under (T, V) logits, in Double.
func windowNLL(_ logits: UnsafePointer<Float>, _ ids: [Int32], vocab V: Int) -> Double {
    var nll = [Double](repeating: 0, count: ids.count - 1)
    ids.withUnsafeBufferPointer { idp in
        nll.withUnsafeMutableBufferPointer {
            crossEntropyForward(nll: $0.baseAddress!, logits: logits, targets: idp.baseAddress! + 1,
                                rows: ids.count - 1, columns: V)
        }
    }
    return nll.reduce(0, +)
}

/// Minitron's activation-based importance of heads, MLP neurons and embedding channels (see Minitron.swift).
public struct ActivationImportance: Codable, Equatable, Sendable {
    /// [layer][head]: aggregated ‖attention output of the head‖₂.
    public var heads: [[Double]]
    /// [layer][neuron]: aggregated |input of down_proj|.
    public var neurons: [[Double]]
    /// [channel]: aggregated Σ over every RMSNorm output (the layers' two and the final one) of |value|.
    public var channels: [Double]

    /// Scores of `model` on `windows`: per token the value above, reduced over each window's positions by
    /// `sequence`, then over the windows by `batch`.
    public static func compute(model: DecoderModel, windows: [[Int32]], sequence: Aggregation, batch: Aggregation,
                               progress: (Int, Int) -> Void = { _, _ in }) -> ActivationImportance {
        let obs = ImportanceObserver(model: model, sequence: sequence, batch: batch)
        let engine = TransformerDecoder(model: model, window: windows.map(\.count).max() ?? 1)
        for (i, ids) in windows.enumerated() {
            obs.beginWindow(rows: ids.count)
            _ = engine.hiddenStates(ids, observer: obs)
            obs.endWindow()
            progress(i + 1, windows.count)
        }
        return obs.result(windows: windows.count)
    }
}

/// Accumulates `ActivationImportance` from the forward's intermediate values.
final class ImportanceObserver: ForwardObserver {
    let sequence: Aggregation, batch: Aggregation
    let D: Int, C: Int
    let heads: [Int], widths: [Int]
    var rows = 0
    // Per window: the sequence accumulators; per run: the batch accumulators.
    var seqHeads: [[Double]], seqNeurons: [[Double]], tokenChannels: [Double]
    var batHeads: [[Double]], batNeurons: [[Double]], batChannels: [Double]

    init(model: DecoderModel, sequence: Aggregation, batch: Aggregation) {
        let c = model.config
        self.sequence = sequence; self.batch = batch
        D = c.headDim; C = c.hiddenSize
        heads = c.blocks.map { $0.attention ? $0.numAttentionHeads : 0 }
        widths = c.blocks.map { $0.mlp ? $0.intermediateSize : 0 }
        seqHeads = heads.map { [Double](repeating: 0, count: $0) }
        seqNeurons = widths.map { [Double](repeating: 0, count: $0) }
        batHeads = seqHeads; batNeurons = seqNeurons
        tokenChannels = []
        batChannels = [Double](repeating: 0, count: C)
    }

    func beginWindow(rows T: Int) {
        rows = T
        for l in seqHeads.indices { for i in seqHeads[l].indices { seqHeads[l][i] = 0 } }
        for l in seqNeurons.indices { for i in seqNeurons[l].indices { seqNeurons[l][i] = 0 } }
        tokenChannels = [Double](repeating: 0, count: T * C)
    }

    func headOutputs(layer l: Int, att: UnsafePointer<Float>, rows T: Int) {
        let H = heads[l]
        for t in 0..<T {
            for h in 0..<H {
                let p = att + t * H * D + h * D
                var s = 0.0
                for d in 0..<D { s += Double(p[d]) * Double(p[d]) }
                sequence.fold(&seqHeads[l][h], s.squareRoot())
            }
        }
    }

    func mlpActivation(layer l: Int, act: UnsafePointer<Float>, rows T: Int) {
        let F = widths[l]
        seqNeurons[l].withUnsafeMutableBufferPointer { acc in
            for t in 0..<T {
                let p = act + t * F
                for f in 0..<F { sequence.fold(&acc[f], Double(abs(p[f]))) }
            }
        }
    }

    func normed(_ s: Int, n: UnsafePointer<Float>, rows T: Int) {
        tokenChannels.withUnsafeMutableBufferPointer { acc in
            for i in 0..<(T * C) { acc[i] += Double(abs(n[i])) }
        }
    }

    func endWindow() {
        for l in seqHeads.indices {
            for h in seqHeads[l].indices { batch.fold(&batHeads[l][h], sequence.finish(seqHeads[l][h], count: rows)) }
        }
        for l in seqNeurons.indices {
            for f in seqNeurons[l].indices {
                batch.fold(&batNeurons[l][f], sequence.finish(seqNeurons[l][f], count: rows))
            }
        }
        for c in 0..<C {
            var acc = 0.0
            for t in 0..<rows { sequence.fold(&acc, tokenChannels[t * C + c]) }
            batch.fold(&batChannels[c], sequence.finish(acc, count: rows))
        }
    }

    func result(windows n: Int) -> ActivationImportance {
        ActivationImportance(heads: batHeads.map { $0.map { batch.finish($0, count: n) } },
                             neurons: batNeurons.map { $0.map { batch.finish($0, count: n) } },
                             channels: batChannels.map { batch.finish($0, count: n) })
    }
}

/// Minitron's depth importance of every decoder layer (block).
public struct DepthImportance: Codable, Equatable, Sendable {
    /// [layer]: mean over calibration tokens of 1 - cos(block input, block output) (residual streams).
    public var cosine: [Double]
    /// [layer]: perplexity on the calibration windows with the block removed.
    public var ppl: [Double]
    /// Perplexity on the calibration windows with every block.
    public var basePpl: Double

    public static func compute(model: DecoderModel, windows: [[Int32]],
                               progress: (Int, Int) -> Void = { _, _ in }) -> DepthImportance {
        let L = model.layers.count, V = model.config.vocabSize, C = model.config.hiddenSize
        let T = windows.first?.count ?? 0
        precondition(windows.allSatisfy { $0.count == T } && T >= 2, "calibration windows must share one length >= 2")
        let fwd = ResumableForward(model: model, window: T)
        var cosSum = [Double](repeating: 0, count: L), nll = [Double](repeating: 0, count: L), baseNLL = 0.0
        for (i, ids) in windows.enumerated() {
            baseNLL += windowNLL(fwd.run(ids), ids, vocab: V)
            for l in 0..<L {
                let a = fwd.states.data + 2 * l * T * C, b = fwd.states.data + (2 * l + 2) * T * C
                for t in 0..<T {
                    var ab = 0.0, aa = 0.0, bb = 0.0
                    for j in 0..<C {
                        let x = Double(a[t * C + j]), y = Double(b[t * C + j])
                        ab += x * y; aa += x * x; bb += y * y
                    }
                    cosSum[l] += 1 - (aa > 0 && bb > 0 ? ab / (aa * bb).squareRoot() : 1)
                }
                nll[l] += windowNLL(fwd.resume(at: 2 * l, skip: [2 * l, 2 * l + 1]), ids, vocab: V)
            }
            progress(i + 1, windows.count)
        }
        let tokens = Double(windows.count * T), predicted = Double(windows.count * (T - 1))
        return DepthImportance(cosine: cosSum.map { $0 / tokens }, ppl: nll.map { Foundation.exp($0 / predicted) },
                               basePpl: Foundation.exp(baseNLL / predicted))
    }
}

/// Per sublayer s (2·layer: attention, 2·layer + 1: MLP) and hidden channel j, the mean over calibration tokens of
/// y_j², y the input of s's post-sublayer norm (the output projection's output with its bias), under optional
/// `gates` (head and neuron gates act before it, channel and sublayer gates after): what width pruning needs to
/// rescale post-norms when hidden channels go (Model/Pruning.swift, `ChannelRemoval.postNormFactor`). Empty lists
/// for absent sublayers.
public enum PostNormInputs {
    public static func compute(model: DecoderModel, windows: [[Int32]], gates: Gates? = nil,
                               progress: (Int, Int) -> Void = { _, _ in }) -> [[Double]] {
        let obs = PostNormInputObserver(model: model)
        let engine = TransformerDecoder(model: model, window: windows.map(\.count).max() ?? 1)
        engine.gates = gates
        for (i, ids) in windows.enumerated() {
            engine.forward(ids, observer: obs)
            progress(i + 1, windows.count)
        }
        let n = Double(max(1, windows.reduce(0) { $0 + $1.count }))
        return obs.sums.map { $0.map { $0 / n } }
    }
}

/// Σ_t y_t,j² of every post-norm's input y = W_out · (the output projection's observed input) + b.
final class PostNormInputObserver: ForwardObserver {
    let model: DecoderModel
    let C: Int
    var sums: [[Double]]
    private var y: Tensor

    init(model: DecoderModel) {
        self.model = model
        C = model.config.hiddenSize
        sums = model.layers.flatMap {
            [$0.attention == nil ? [] : [Double](repeating: 0, count: model.config.hiddenSize),
             $0.mlp == nil ? [] : [Double](repeating: 0, count: model.config.hiddenSize)]
        }
        y = Tensor(shape: [0])
    }

    private func add(_ s: Int, _ w: LinearWeight, bias: Tensor?, _ inp: UnsafePointer<Float>, rows: Int) {
        if y.count < rows * C { y = Tensor(shape: [rows, C]) }
        w.forward(out: y.data, inp: inp, rows: rows)
        if let bias { biasForward(out: y.data, bias: bias.data, rows: rows, columns: C) }
        let p = y.data
        sums[s].withUnsafeMutableBufferPointer { acc in
            for t in 0..<rows { for j in 0..<C { let v = Double(p[t * C + j]); acc[j] += v * v } }
        }
    }

    func headOutputs(layer l: Int, att: UnsafePointer<Float>, rows: Int) {
        let a = model.layers[l].attention!
        add(2 * l, a.o, bias: a.biases[.o], att, rows: rows)
    }

    func mlpActivation(layer l: Int, act: UnsafePointer<Float>, rows: Int) {
        let m = model.layers[l].mlp!
        add(2 * l + 1, m.down, bias: m.biases[.down], act, rows: rows)
    }
}
