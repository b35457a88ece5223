import Foundation
import Model
import Training

/// `distill`: knowledge distillation of the model at this point (the student) from the base (the teacher);
/// the loop's settings (Training/Distillation.swift) plus the training text and the state-save cadence.
/// Takes dense, sparse (the mask is kept) and factorized weights; quantized weights cannot be trained.
public struct DistillStage: RecipeStage {
    public static let name = "distill"
    public static let accepts: Set<WeightKind> = [.dense, .sparse, .factorized]
    public var config: DistillConfig
    public var text = "data/wiki.train.txt"
    public var saveEvery = 50
    public var logEvery = 10
    /// DSFormer's Straight-Through Factorizer (Training/StraightThroughFactorizer.swift): factorized weights'
    /// sparse factors are trained through a dense latent whose top-s entries per column the forward uses;
    /// false (default) trains their values on the fixed support. Needs factorized weights.
    public var stf = false

    public init(config s: StrictObject) throws {
        config = try DistillConfig(settings: s, defaults: DistillConfig(), keys: .distill)
        text = try s.string("text", default: text)
        saveEvery = try s.int("save_every", default: saveEvery, in: 0...10_000_000)
        logEvery = try s.int("log_every", default: logEvery, in: 1...10_000_000)
        stf = try s.bool("stf", default: stf)
    }
}
