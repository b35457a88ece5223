import Model
import TensorCore

/// Training-side view of a student: the one decoder forward in training mode (Model/TransformerDecoder.swift), its
/// backward (Model/TransformerDecoderBackward.swift) and the gradient buffers. The model is the trainer's own: it
/// is a deep copy of the model given, so training never writes into a caller's weights.
public final class Trainer {
    /// The model being trained (a copy of the one given at init); read it for the trained weights.
    public let model: DecoderModel
    public let decoder: TransformerDecoder
    /// Gradients of every weight not frozen.
    public let grads: ModelGradients
    /// Gradients of the decoder's gates (nil until `setGates`).
    public private(set) var gateGrads: Gates?
    public let batch: Int, window: Int
    /// Rows of every activation: batch × window.
    public var rows: Int { batch * window }
    /// Receives inputs and input gradients in `backward` (nil: none).
    public weak var backwardObserver: BackwardObserver?
    /// Final-normed hidden states (rows, C) of the last forward.
    public var hidden: Tensor { decoder.hidden }
    /// Token ids of the last forward.
    public var ids: [Int32] { decoder.ids }

    /// A trainer of a copy of `model` over batches of B windows of W tokens; `frozen` weights get no gradient.
    public init(model: DecoderModel, batch B: Int, window W: Int, frozen: Set<WeightID> = []) {
        let own = model.copy()
        self.model = own
        batch = B
        window = W
        decoder = TransformerDecoder(model: own, batch: B, window: W, training: true)
        grads = ModelGradients(model: own, frozen: frozen)
    }

    /// Every trainable tensor with its gradient, in canonical order, named by `ModelWeight.parameterNames`
    /// (a tied LM head appears once, as the embedding).
    public var parameters: [(id: WeightID, name: String, value: Tensor, grad: Tensor)] {
        model.weights.flatMap { w -> [(WeightID, String, Tensor, Tensor)] in
            guard let g = grads.slots[w.id] else { return [] }
            return zip(zip(w.weight.parameterNames(w.id, config: model.config), w.weight.trainableTensors), g).map {
                (w.id, $0.0, $0.1, $1)
            }
        }
    }

    /// Installs gates in the forward, with gradient buffers of the same shapes.
    public func setGates(_ gates: Gates) {
        decoder.gates = gates
        gateGrads = Gates(zerosLike: gates)
    }

    /// Requests the output of decoder layer `layer` to be kept (see `TransformerDecoder.capture`).
    public func capture(layer: Int) { decoder.capture(layer: layer) }
    public var captures: [Int: Tensor] { decoder.captures }
    public var captureGrads: [Int: Tensor] { decoder.captureGrads }

    /// Runs the forward on B·W token ids (window after window); the result is in `hidden`.
    public func forward(_ ids: [Int32]) {
        precondition(ids.count == rows, "forward on \(ids.count) ids, trainer holds \(batch) × \(window)")
        decoder.forward(ids)
    }

    /// Zeroes the weight, gate and capture gradients.
    public func zeroGradients() {
        grads.zero()
        gateGrads?.zero()
        for (_, g) in decoder.captureGrads { g.zero() }
    }

    /// Backpropagates dL/dhidden (rows, C) plus any capture gradients through the last forward, accumulating
    /// into `grads` (and `gateGrads`).
    public func backward(dHidden: UnsafePointer<Float>) {
        decoder.backward(dHidden: dHidden, grads: grads, gateGrads: gateGrads, observer: backwardObserver)
    }
}
