import Model
import TensorCore

/// Something the distillation loop trains besides (or instead of) the student's plain weights: gates, N:M mask
/// logits, dense × sparse factors. The loop calls, per optimizer step:
///   for each micro-batch: willForward → forward, loss, backward → didBackward
///   then regularize (extra loss terms, their gradients added) → clip → AdamW on every parameter.
/// Parameters are saved in the training state and restored on resume, so a killed run resumes bit for bit.
public protocol Trainable: AnyObject {
    /// Unique among a run's trainables; prefixes its parameter names in the state file.
    var name: String { get }
    /// Called once, before training: install what it needs in the student trainer (gates, ...).
    func bind(to student: Trainer) throws
    /// Tensors AdamW updates, each with its gradient buffer, learning rate and weight decay.
    var parameters: [Parameter] { get }
    /// Names of student parameters whose gradient is still computed but which AdamW must not update: this
    /// trainable takes them over (the Straight-Through Factorizer's latent replaces S's values).
    var replacedParameters: Set<String> { get }
    /// Before each micro-batch's forward (e.g. sample noise, write an effective weight).
    func willForward(step: Int, micro: Int)
    /// After each micro-batch's backward (e.g. chain a weight's gradient into own parameters).
    func didBackward(step: Int, micro: Int)
    /// Extra loss terms, once per step after the micro-batches: adds their gradients to the parameters'
    /// and returns their values by name (added to the loss and reported in the step statistics).
    func regularize(step: Int) -> [String: Double]
    /// After the optimizer update of a step: statistics by name for the step's report (e.g. mask change rate).
    func didUpdate(step: Int) -> [String: Double]
    /// Student weights whose gradient the distiller must compute but not apply: the trainable reads it in
    /// `didBackward` (e.g. dL/dW_eff of a masked weight) and owns the update of what it derives from.
    var weightGradients: Set<WeightID> { get }
    /// The trainable's own settings as text; a training state resumes only under the same text.
    var stateSettings: String { get }
}

extension Trainable {
    public var replacedParameters: Set<String> { [] }
    public func bind(to student: Trainer) throws {}
    public func willForward(step: Int, micro: Int) {}
    public func didBackward(step: Int, micro: Int) {}
    public func regularize(step: Int) -> [String: Double] { [:] }
    public func didUpdate(step: Int) -> [String: Double] { [:] }
    public var weightGradients: Set<WeightID> { [] }
    public var stateSettings: String { "" }
}

/// Gates of the student's forward (per head, neuron, channel, sublayer; Model/TransformerDecoder.swift), trained
/// with an optional L1 penalty λ · Σ|g| (its subgradient λ · sign(g) added each step).
public final class GateTrainable: Trainable {
    public let name: String
    public let gates: Gates
    public let lr: Double
    public let l1: Double
    public private(set) var parameters: [Parameter] = []

    public init(name: String = "gates", gates: Gates, lr: Double, l1: Double = 0) {
        self.name = name; self.gates = gates; self.lr = lr; self.l1 = l1
    }

    public func bind(to student: Trainer) throws {
        try gates.validate(student.model.config)
        student.setGates(gates)
        guard let grads = student.gateGrads else { return }
        parameters = zip(gates.named, grads.named).map { g, d in
            Parameter(name: name + "." + g.name, value: g.tensor, grad: d.tensor, lr: lr, weightDecay: 0)
        }
    }

    public func regularize(step: Int) -> [String: Double] {
        guard l1 > 0 else { return [:] }
        var total = 0.0
        for p in parameters {
            for i in 0..<p.value.count {
                let g = p.value[i]
                total += Double(abs(g))
                p.grad[i] += Float(l1) * (g > 0 ? 1 : g < 0 ? -1 : 0)
            }
        }
        return [name + ".l1": l1 * total]
    }
}
