import Model
import TensorCore

/// DSFormer's Straight-Through Factorizer (R. Chand, Y. Prabhu, P. Kumar, "DSFormer: Effective Compression of
/// Text-Transformers by Dense-Sparse Weight Factorization", 2023): every factorized weight W = D · S of the
/// student is trained jointly, end to end, on the distillation loss, with a dense latent S̃ (k × C) in place
/// of S's values:
///   forward:   S = P_s(S̃), P_s keeping the s entries of largest magnitude in every column (ties to the lower
///              row), the rest 0; W = D · S;
///   backward:  ∂L/∂S̃ := ∂L/∂S (straight through P_s, for every entry, kept or not);  D gets ∂L/∂D directly.
/// AdamW updates S̃ and D; the support of S can change at every step. The result keeps S = P_s(S̃) of the
/// last latent, with exactly s nonzeros per column.
///
/// Mechanics: `prepare` opens every factorized weight's S mask to all k entries per column (same values), so
/// the weight's backward (LinearWeight.backward) yields the dense gradient ∂L/∂S; the latent S̃'s parameter
/// shares that gradient buffer and replaces S's values in the optimizer (`replacedParameters`); before each
/// forward S's values are overwritten with P_s(S̃). `finalize` restores the s-per-column masks.
public final class StraightThroughFactorizer: Trainable {
    public let name = "stf"
    public let lr: Double
    public let weightDecay: Double
    /// S-value parameter names (DecoderModel naming, "….sparse") → nonzeros per column s.
    public let nonzeros: [String: Int]
    /// The student parameters (S's values) whose updates the latent takes over.
    public var replacedParameters: Set<String> { Set(nonzeros.keys) }
    public private(set) var parameters: [Parameter] = []
    /// Per weight: the latent S̃ and the forward's S values (the student trainer's own tensor).
    private var slots: [(latent: Tensor, values: Tensor, s: Int)] = []

    init(nonzeros: [String: Int], lr: Double, weightDecay: Double) {
        self.nonzeros = nonzeros; self.lr = lr; self.weightDecay = weightDecay
    }

    /// The student prepared for STF (every factorized weight's S mask opened to all entries, values as they
    /// were) and the trainable to pass to the `Distiller` with it. Throws when the model has no factorized
    /// weight, or holds one with a quantized factor.
    public static func prepare(_ model: DecoderModel, lr: Double,
                               weightDecay: Double) throws -> (DecoderModel, StraightThroughFactorizer) {
        var out = model, map: [String: Int] = [:]
        for w in model.weights {
            guard case .matrix(.factorized(let f)) = w.weight else { continue }
            guard !f.isQuantized else {
                throw ConfigError("stf: '\(w.id.hfName)' holds a quantized factor (cptquant); quantized weights " +
                                  "cannot be trained")
            }
            let k = f.rank, C = f.sparse.mask.cols
            let open = try SparsityMask(pattern: .unstructured, rows: k, cols: C) { _ in true }
            let g = try FactorizedWeight(dense: f.dense.copy(),
                                         sparse: SparseWeight(values: f.sparse.values.copy(), mask: open))
            out = try out.replacing(w.id, with: .factorized(g))
            map[w.weight.parameterNames(w.id)[1]] = f.nonzerosPerColumn
        }
        guard !map.isEmpty else {
            throw ConfigError("stf: the student has no factorized weights (put a dsformer or lowrank stage before " +
                              "this distill stage)")
        }
        return (out, StraightThroughFactorizer(nonzeros: map, lr: lr, weightDecay: weightDecay))
    }

    public func bind(to student: Trainer) throws {
        parameters = []; slots = []
        for p in student.parameters {
            guard let s = nonzeros[p.name] else { continue }
            let latent = p.value.copy()
            slots.append((latent, p.value, s))
            parameters.append(Parameter(name: name + "." + p.name, value: latent, grad: p.grad, lr: lr,
                                        weightDecay: weightDecay))
        }
        guard slots.count == nonzeros.count else {
            throw ConfigError("stf: \(nonzeros.count - slots.count) factorized weights of the student are frozen or " +
                              "missing; STF trains the S factors")
        }
    }

    public func willForward(step: Int, micro: Int) {
        guard micro == 0 else { return }  // S̃ changes only at the optimizer step
        for slot in slots { Self.project(slot.latent, into: slot.values, nonzeros: slot.s) }
    }

    /// P_s: writes into `out` (k × C) the s largest-magnitude entries of every column of `latent`, 0 elsewhere.
    public static func project(_ latent: Tensor, into out: Tensor, nonzeros s: Int) {
        let k = latent.shape[0], C = latent.shape[1]
        Parallel.forEachChunk(C, minChunk: 64) { cols in
            var order = [Int](repeating: 0, count: k)
            for c in cols {
                for r in 0..<k { order[r] = r }
                order.sort { a, b in
                    let x = abs(latent[a * C + c]), y = abs(latent[b * C + c])
                    return x != y ? x > y : a < b
                }
                for r in 0..<k { out[r * C + c] = 0 }
                for r in order.prefix(s) { out[r * C + c] = latent[r * C + c] }
            }
        }
    }

    /// The trained student with S = P_s(S̃) of the final latent and s-per-column masks restored.
    public func finalize(_ trained: DecoderModel) throws -> DecoderModel {
        var out = trained, byName: [String: Tensor] = [:]
        for (p, slot) in zip(parameters, slots) { byName[String(p.name.dropFirst(name.count + 1))] = slot.latent }
        for w in trained.weights {
            guard case .matrix(.factorized(let f)) = w.weight, let latent = byName[w.weight.parameterNames(w.id)[1]],
                  let s = nonzeros[w.weight.parameterNames(w.id)[1]] else { continue }
            let k = f.rank, C = f.sparse.mask.cols
            let values = Tensor(shape: [k, C])
            Self.project(latent, into: values, nonzeros: s)
            // The support is P_s's choice (a kept entry may be exactly 0): rebuild it by the same rule.
            var keep = [Bool](repeating: false, count: k * C)
            for c in 0..<C {
                let top = (0..<k).sorted { a, b in
                    let x = abs(latent[a * C + c]), y = abs(latent[b * C + c])
                    return x != y ? x > y : a < b
                }.prefix(s)
                for r in top { keep[r * C + c] = true }
            }
            let mask = try SparsityMask(pattern: .unstructured, rows: k, cols: C) { keep[$0] }
            out = try out.replacing(w.id, with: .factorized(try FactorizedWeight(
                dense: f.dense.copy(), sparse: SparseWeight(values: values, mask: mask))))
        }
        return out
    }
}
