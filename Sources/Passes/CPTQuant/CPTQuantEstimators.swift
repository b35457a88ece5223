// CPTQuant's sensitivity estimators (CMPQ, PMPQ, TDMPQ) and their observers; see CPTQuant.swift.

import Foundation
import Model
import Quantization
import Recipes
import TensorCore
import Training

// MARK: - Estimators

/// Calibration statistics for CPTQuant: per linear input column, E[x²]; CMPQ's per-layer scores.
public struct CalibrationMoments: Codable, Sendable {
    /// Tensor name → E[x_k²] over calibration tokens, per input column k.
    public var columns: [String: [Float]]
    /// CMPQ sensitivity per decoder layer: 1 − mean canonical correlation with the other layers' outputs
    /// (empty when not asked for).
    public var cmpq: [Double]
    /// Pooled vectors per layer the correlations were estimated from.
    public var pooledSamples: Int

    public static func compute(model: DecoderModel, windows: [[Int32]], correlations: Bool = true, poolTokens: Int,
                               ccaDims: Int, ridge: Double,
                               progress: (Int, Int) -> Void = { _, _ in }) throws -> CalibrationMoments {
        let obs = MomentsObserver(model: model, pool: correlations ? poolTokens : nil)
        let engine = TransformerDecoder(model: model, window: windows.map(\.count).max() ?? 1)
        for (i, ids) in windows.enumerated() {
            _ = engine.hiddenStates(ids, observer: obs)
            progress(i + 1, windows.count)
        }
        let tokens = Float(windows.reduce(0) { $0 + $1.count })
        var columns: [String: [Float]] = [:]
        for l in model.layers.indices {
            let inputs = [(LinearKind.q, obs.attnIn[l]), (.k, obs.attnIn[l]), (.v, obs.attnIn[l]), (.o, obs.attnOut[l]),
                          (.gate, obs.mlpIn[l]), (.up, obs.mlpIn[l]), (.down, obs.mlpAct[l])]
            for (kind, sums) in inputs where !sums.isEmpty {
                columns[WeightID.linear(LinearID(layer: l, kind: kind)).hfName] = sums.map { Float($0) / tokens }
            }
        }
        guard correlations else { return CalibrationMoments(columns: columns, cmpq: [], pooledSamples: 0) }
        let rows = (obs.pooled.first?.count ?? 0) / model.config.hiddenSize
        guard rows > ccaDims else {
            throw RecipeError("cptquant: CMPQ has \(rows) pooled vectors per layer; it needs more than cca_dims = "
                + "\(ccaDims) (more calibration samples, or smaller pool_tokens or cca_dims)")
        }
        let reduced = obs.pooled.map { principalScores($0, rows: rows, dimensions: ccaDims) }
        let L = reduced.count
        var corr = [[Double]](repeating: [Double](repeating: 0, count: L), count: L)
        for a in 0..<L {
            for b in (a + 1)..<L {
                let rho = canonicalCorrelations(reduced[a], reduced[b], rows: rows, ridge: ridge)
                corr[a][b] = rho.reduce(0, +) / Double(rho.count)
                corr[b][a] = corr[a][b]
            }
        }
        let cmpq: [Double] = (0..<L).map { a -> Double in
            let others: Double = corr[a].reduce(0, +) - corr[a][a]
            return 1 - others / Double(max(L - 1, 1))
        }
        return CalibrationMoments(columns: columns, cmpq: cmpq, pooledSamples: rows)
    }
}

/// Accumulates Σx² per input column of every linear layer and the pooled outputs of every decoder layer.
final class MomentsObserver: ForwardObserver {
    let L: Int, C: Int
    /// Tokens per pooled vector; nil: no pooling.
    let pool: Int?
    var attnIn: [[Double]], attnOut: [[Double]], mlpIn: [[Double]], mlpAct: [[Double]]
    /// [layer]: pooled output vectors (row-major, samples × C), in Double.
    var pooled: [[Double]]

    init(model: DecoderModel, pool: Int?) {
        let c = model.config
        L = model.layers.count; C = c.hiddenSize; self.pool = pool
        attnIn = model.layers.map { $0.attention == nil ? [] : [Double](repeating: 0, count: c.hiddenSize) }
        attnOut = zip(model.layers, c.blocks).map {
            $0.attention == nil ? [] : [Double](repeating: 0, count: $1.numAttentionHeads * c.headDim)
        }
        mlpIn = model.layers.map { $0.mlp == nil ? [] : [Double](repeating: 0, count: c.hiddenSize) }
        mlpAct = zip(model.layers, c.blocks).map {
            $0.mlp == nil ? [] : [Double](repeating: 0, count: $1.intermediateSize)
        }
        pooled = [[Double]](repeating: [], count: L)
    }

    static func addSquares(_ acc: inout [Double], _ x: UnsafePointer<Float>, rows: Int) {
        let n = acc.count
        acc.withUnsafeMutableBufferPointer { a in
            for t in 0..<rows { for k in 0..<n { let v = Double(x[t * n + k]); a[k] += v * v } }
        }
    }

    func normed(_ s: Int, n: UnsafePointer<Float>, rows: Int) {
        guard s < 2 * L else { return }
        if s % 2 == 0 {
            Self.addSquares(&attnIn[s / 2], n, rows: rows)
        } else {
            Self.addSquares(&mlpIn[s / 2], n, rows: rows)
        }
    }
    func headOutputs(layer: Int, att: UnsafePointer<Float>, rows: Int) {
        Self.addSquares(&attnOut[layer], att, rows: rows)
    }
    func mlpActivation(layer: Int, act: UnsafePointer<Float>, rows: Int) {
        Self.addSquares(&mlpAct[layer], act, rows: rows)
    }

    func sublayerInput(_ s: Int, x: UnsafePointer<Float>, rows: Int) {
        // The stream entering sublayer 2(ℓ+1) is the output of layer ℓ.
        guard let pool, s >= 2, s % 2 == 0 else { return }
        let l = s / 2 - 1
        var t0 = 0
        while t0 + pool <= rows {
            var v = [Double](repeating: 0, count: C)
            for t in t0..<(t0 + pool) { for c in 0..<C { v[c] += Double(x[t * C + c]) } }
            pooled[l] += v.map { $0 / Double(pool) }
            t0 += pool
        }
    }
}

extension CPTQuantPass {
    /// PMPQ: calibration perplexity rise when each unit loses `fraction` of every tensor's weights (smallest
    /// magnitudes). The unit's tensors are pruned in place, evaluated from the saved residual stream entering
    /// the unit, and restored bit for bit.
    static func pruningSensitivity(model given: DecoderModel, units: [Unit], fraction: Double, windows: [[Int32]],
                                   progress: (Int, Int) -> Void) -> [Double] {
        // A private copy is pruned and restored, never the model given (models are values).
        let model = given.copy()
        let tensors = denseWeights(model)
        // Indices to zero per tensor: the ⌊fraction · n⌋ smallest |w| (ties by index).
        var prune: [WeightID: [Int32]] = [:]
        for name in Set(units.flatMap(\.tensors)) {
            let w = tensors[name]!
            let k = Int(fraction * Double(w.count))
            let order = (0..<Int32(w.count)).sorted {
                abs(w[Int($0)]) != abs(w[Int($1)]) ? abs(w[Int($0)]) < abs(w[Int($1)]) : $0 < $1
            }
            prune[name] = Array(order.prefix(k))
        }
        let T = windows[0].count, V = model.config.vocabSize
        let fwd = ResumableForward(model: model, window: T)
        var base = 0.0, nll = [Double](repeating: 0, count: units.count)
        for (i, ids) in windows.enumerated() {
            base += windowNLL(fwd.run(ids), ids, vocab: V)
            for (u, unit) in units.enumerated() {
                var saved: [[Float]] = []
                for name in unit.tensors {
                    let w = tensors[name]!
                    saved.append(w.array)
                    for j in prune[name]! { w[Int(j)] = 0 }
                }
                nll[u] += windowNLL(fwd.resume(at: unit.firstSublayer, skip: []), ids, vocab: V)
                for (name, values) in zip(unit.tensors, saved) {
                    values.withUnsafeBufferPointer {
                        tensors[name]!.data.update(from: $0.baseAddress!, count: $0.count)
                    }
                }
            }
            progress(i + 1, windows.count)
        }
        let predicted = Double(windows.count * (T - 1))
        let basePPL = Foundation.exp(base / predicted)
        return nll.map { Foundation.exp($0 / predicted) - basePPL }
    }

    /// TDMPQ: mean over calibration tokens of |x · ∂L/∂x| at each unit's input.
    /// `perTensor`: each unit's score is the sum over its tensors of their own inputs' (sublayer and tensor
    /// granularity); otherwise the residual stream entering the unit's layer (layer granularity).
    static func taylorSensitivity(model: DecoderModel, units: [Unit], windows: [[Int32]], perTensor: Bool,
                                  progress: (Int, Int) -> Void) -> [Double] {
        let T = windows[0].count, C = model.config.hiddenSize
        let trainer = Trainer(model: model, batch: 1, window: T, frozen: Set(model.weights.map(\.id)))
        let obs = TaylorObserver(units: units, perTensor: perTensor)
        trainer.backwardObserver = obs
        let loss = LogitLoss(vocab: model.config.vocabSize)
        let dHidden = Tensor(shape: [T, C])
        for (i, ids) in windows.enumerated() {
            trainer.forward(ids)
            dHidden.zero()
            _ = loss.compute(student: trainer, teacher: nil, weights: LogitLossWeights(kl: 0, ce: 1), scale: 1,
                             dHidden: dHidden)
            trainer.backward(dHidden: dHidden.data)
            progress(i + 1, windows.count)
        }
        let tokens = Double(windows.count * T)
        return obs.sums.map { $0 / tokens }
    }
}

/// Σ_t |x_t · dx_t| per unit, from the trainer's backward.
final class TaylorObserver: BackwardObserver {
    let byLayer: [Int: Int], byTensor: [LinearID: Int]
    var sums: [Double]

    init(units: [CPTQuantPass.Unit], perTensor: Bool) {
        byLayer = perTensor ? [:] : Dictionary(uniqueKeysWithValues: units.enumerated().map { ($1.layer, $0) })
        byTensor = perTensor ? Dictionary(uniqueKeysWithValues: units.enumerated().flatMap { u, unit in
            unit.tensors.compactMap { t -> (LinearID, Int)? in
                if case .linear(let id) = t { return (id, u) }
                return nil
            }
        }) : [:]
        sums = [Double](repeating: 0, count: units.count)
    }

    static func sumAbsDot(_ x: UnsafePointer<Float>, _ dx: UnsafePointer<Float>, rows: Int, width: Int) -> Double {
        var total = 0.0
        for t in 0..<rows {
            var d = 0.0
            for k in 0..<width { d += Double(x[t * width + k]) * Double(dx[t * width + k]) }
            total += abs(d)
        }
        return total
    }

    func linearInput(_ id: LinearID, x: UnsafePointer<Float>, dx: UnsafePointer<Float>, rows: Int, features: Int) {
        if let u = byTensor[id] { sums[u] += Self.sumAbsDot(x, dx, rows: rows, width: features) }
    }
    func layerInput(_ layer: Int, x: UnsafePointer<Float>, dx: UnsafePointer<Float>, rows: Int, channels: Int) {
        if let u = byLayer[layer] { sums[u] += Self.sumAbsDot(x, dx, rows: rows, width: channels) }
    }
}
