import Model
import Training

/// `distill` as a trained stage: the one distillation runner (`compress apply`'s distill stages and `compress
/// distill`) prepares its run here and drives it like every `TrainingPass`.
extension DistillStage: TrainingPass {
    /// A distill stage with these settings (what `compress distill` builds from its options).
    public init(config: DistillConfig, text: String, saveEvery: Int, logEvery: Int, stf: Bool) {
        self.config = config
        self.text = text
        self.saveEvery = saveEvery
        self.logEvery = logEvery
        self.stf = stf
    }

    public var trainText: String { text }
    public var trainingWindow: Int { config.window }
    public var cachesStatistics: Bool { false }

    /// "stf": true trains factorized weights: the input must hold some.
    public var requires: InputRequirement? {
        stf ? InputRequirement(anyOf: [.factorized], reason: "'stf': true trains factorized weights",
                               hint: "put a dsformer or lowrank stage before it") : nil
    }

    /// The student is `model` (a sparse student stays sparse: its sparse weights' gradients are masked); with
    /// "stf", its factorized weights train through the Straight-Through Factorizer's dense latent and `finish`
    /// projects them back to s nonzeros per column (S = P_s(S̃) of the final latent). Errors are `ConfigError`.
    public func prepare(model: DecoderModel, teacher: DecoderModel, trainTokens: [Int32],
                        context: PassContext) throws -> TrainingRun {
        var student = model
        var factorizer: StraightThroughFactorizer? = nil
        if stf {
            (student, factorizer) = try StraightThroughFactorizer.prepare(model, lr: config.lr,
                                                                          weightDecay: config.weightDecay)
        }
        let distiller = try Distiller(teacher: teacher, student: student, config: config, trainTokens: trainTokens,
                                      trainables: factorizer.map { [$0] } ?? [])
        return TrainingRun(distiller: distiller) {
            (try factorizer?.finalize(distiller.student) ?? distiller.student, .object([:]))
        }
    }
}
