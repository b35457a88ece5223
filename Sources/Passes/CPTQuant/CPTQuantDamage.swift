// CPTQuant's measured damage (issue 19): KL(base ‖ variant) per unit and format; see CPTQuant.swift.

import Foundation
import Model
import Quantization
import Recipes
import TensorCore
import Training

// MARK: - Measured damage

extension CPTQuantPass {
    /// The first `count` calibration windows cut to their first `tokens` tokens (all windows share a length).
    static func damageWindows(_ windows: [[Int32]], count: Int, tokens: Int) throws -> [[Int32]] {
        guard windows.count >= count else {
            throw RecipeError("cptquant: 'damage_windows' is \(count), but the recipe draws \(windows.count) "
                + "calibration windows (raise calibration.samples or lower damage_windows)")
        }
        guard let T = windows.first?.count, T >= 2 else {
            throw RecipeError("cptquant: measured damage needs calibration windows of at least 2 tokens")
        }
        return windows.prefix(count).map { Array($0.prefix(Swift.min(tokens, T))) }
    }
}

/// KL(base ‖ variant) of next-token distributions on fixed windows, for variants of a model that differ in a
/// few weights. The base run keeps every window's residual stream entering every sublayer and its log-
/// probabilities; a variant writes its values into a private copy's dense tensors, resumes at a sublayer
/// (or runs from the embedding), and restores the base values bit for bit.
final class DamageProbe {
    let windows: [[Int32]]
    let T: Int, C: Int, V: Int, S: Int
    private let model: DecoderModel
    private let tensors: [WeightID: Tensor]
    private let fwd: ResumableForward
    /// Per window: the saved residuals, (S + 1) × T × C.
    private var saved: [[Float]] = []
    /// Per window: the base's logits, T × V (the KL kernel takes both distributions as logits, in Double inside).
    private var baseLogits: [[Float]] = []

    /// Runs the base over `windows`; throws when its outputs are not finite (the KL kernel would hide a NaN).
    init(model given: DecoderModel, windows: [[Int32]]) throws {
        model = given.copy()  // written into and restored; never the model given
        tensors = CPTQuantPass.denseWeights(model)
        self.windows = windows
        T = windows[0].count; C = model.config.hiddenSize; V = model.config.vocabSize; S = 2 * model.layers.count
        fwd = ResumableForward(model: model, window: T)
        for (w, ids) in windows.enumerated() {
            let logits = fwd.run(ids)
            try requireFiniteOutputs(logits, rows: T, columns: V, stage: "cptquant",
                                     "the base's output on damage window \(w + 1)")
            saved.append(Array(UnsafeBufferPointer(start: fwd.states.data, count: (S + 1) * T * C)))
            baseLogits.append(Array(UnsafeBufferPointer(start: logits, count: T * V)))
        }
    }

    /// Mean over the windows' positions of KL(p_base ‖ p) in nats, p the model with `values` (dense weights by
    /// id, row-major) in place of the base's; resumed at sublayer `s`, or from the embedding when nil (needed
    /// when the embedding changes). Valid for s when no changed weight acts before sublayer s. A damage that is not
    /// finite throws, naming the tensors.
    func divergence(_ values: [WeightID: [Float]], resumeAt s: Int?) throws -> Double {
        var originals: [WeightID: [Float]] = [:]
        for (id, v) in values {
            guard let t = tensors[id], t.count == v.count else {
                throw RecipeError("cptquant: no dense weight '\(id.hfName)' of \(v.count) values to measure")
            }
            originals[id] = t.array
            v.withUnsafeBufferPointer { t.data.update(from: $0.baseAddress!, count: $0.count) }
        }
        defer {
            for (id, v) in originals {
                v.withUnsafeBufferPointer { tensors[id]!.data.update(from: $0.baseAddress!, count: $0.count) }
            }
        }
        let what = values.keys.map { "'\($0.hfName)'" }.sorted().joined(separator: ", ")
        var total = 0.0
        var kl = [Double](repeating: 0, count: T)
        for (w, ids) in windows.enumerated() {
            let logits: UnsafePointer<Float>
            if let s {
                saved[w].withUnsafeBufferPointer {
                    (fwd.states.data + s * T * C).update(from: $0.baseAddress! + s * T * C, count: T * C)
                }
                logits = fwd.resume(at: s, skip: [])
            } else {
                logits = fwd.run(ids)
            }
            try requireFiniteOutputs(logits, rows: T, columns: V, stage: "cptquant",
                                     "the output with \(what) quantized")
            // The evaluator's kernel (`compress eval --reference`): KL per position, summed in order.
            baseLogits[w].withUnsafeBufferPointer { zp in
                klDivergenceForward(kl: &kl, reverse: nil, reference: zp.baseAddress!, logits: logits,
                                    rows: T, columns: V)
            }
            for x in kl { total += x }
        }
        let damage = total / Double(windows.count * T)
        try requireFinite([damage], stage: "cptquant") { _ in
            "the measured damage (mean KL from the base) with \(what) quantized"
        }
        return damage
    }
}
