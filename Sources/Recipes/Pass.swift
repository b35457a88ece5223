import Diagnostics
import Checkpoint
import Model
import Training

/// What a stage needs the runner to provide.
public struct PassNeeds: OptionSet, Sendable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    /// Token windows of calibration data (`PassContext.calibration`).
    public static let calibration = PassNeeds(rawValue: 1)
}

/// What the runner hands a pass besides the model.
public struct PassContext {
    /// Calibration windows (each `window` token ids), drawn by the recipe's calibration settings.
    public var calibration: [[Int32]]
    public var seed: UInt64
    /// Where calibration statistics are kept between runs (nil: always computed).
    public var cache: StatsCache?
    /// Progress lines for long computations (stderr in the CLI).
    public var progress: (String) -> Void
    public init(calibration: [[Int32]] = [], seed: UInt64 = 0, cache: StatsCache? = nil,
                progress: @escaping (String) -> Void = { _ in }) {
        self.calibration = calibration; self.seed = seed; self.cache = cache; self.progress = progress
    }

    /// `compute()`'s value, through the cache when there is one.
    public func cached<T: Codable>(_ name: String, settings: JSONValue, _ compute: () throws -> T) throws -> T {
        guard let cache else { return try compute() }
        return try cache.value(name, settings: settings, compute: compute)
    }
}

/// A recipe stage kind: every pass, `distill` and `eval` are registered the same way and declare what they
/// accept and produce, so an impossible order (a pass on a representation it cannot take, training after
/// quantization) is refused when the recipe is decoded, before anything runs (Model Optimizer's
/// `next_modes`, checked at composition).
public protocol RecipeStage {
    /// The name recipes use ("minitron", "distill", ...).
    static var name: String { get }
    /// Linear-weight representations this stage can take; a model holding any other is refused.
    static var accepts: Set<WeightKind> { get }
    /// Reads the stage's settings (every key but "stage"); unknown keys and out-of-range values throw.
    init(config: StrictObject) throws
    /// What this stage, with these settings, needs from the runner.
    var needs: PassNeeds { get }
    /// The representations present after the stage, given those before it (default: unchanged).
    func produces(from input: Set<WeightKind>) -> Set<WeightKind>
    /// A stage that only writes the model out (`export`): it must come after every other stage (default false).
    static var isTerminal: Bool { get }
    /// Whether this stage, with these settings, may leave layers that differ (per-layer heads or widths, removed
    /// sublayers), which only some families' server formats hold (`ModelFamily.perLayerExport`; default false).
    var makesHeterogeneous: Bool { get }
    /// Checks the settings against the model the stage will receive, before any stage runs (called only while
    /// no earlier stage changes the model's shape); throws `RecipeError` naming the key (default: nothing).
    func preflight(_ model: DecoderModel) throws
    /// Representations the stage's input must hold, beyond what it accepts (default nil: none), e.g. distill with
    /// "stf": true trains factorized weights and needs some. Checked at composition, like `accepts`.
    var requires: InputRequirement? { get }
    /// What the runner does with this stage: the closed set of stage kinds (Model Optimizer's mode descriptor).
    /// `CompressionPass` and `TrainingPass` supply it; `eval` and `export` say theirs.
    var work: StageWork { get }
}

/// Representations a stage needs in its input, and why (for the error that names the stage).
public struct InputRequirement {
    /// At least one of these must be present.
    public var anyOf: Set<WeightKind>
    /// Why, naming the setting: "'stf': true trains factorized weights".
    public var reason: String
    /// What to do about it: "put a dsformer or lowrank stage before it".
    public var hint: String
    public init(anyOf: Set<WeightKind>, reason: String, hint: String) {
        self.anyOf = anyOf; self.reason = reason; self.hint = hint
    }
}

/// The stage kinds the runner knows, each with what the runner calls on it; the runner switches over this closed
/// enum, so a new stage kind is a compile error there rather than a runtime one.
public enum StageWork {
    /// A one-shot pass: `run(on:context:)` returns the new model and its diagnostics.
    case compress(any CompressionPass)
    /// A trained stage (distill, MaskLLM, VTrans): `prepare`, the runner's loop (states, resume), then `finish`.
    case train(any TrainingPass)
    /// Perplexity (and divergence from the base) of the model at this point, on the recipe's eval text.
    case evaluate
    /// Writes the model for another reader (export); must come after every other stage.
    case write(any OutputStage)

    /// Whether the stage writes the model out (export).
    public var writes: Bool { if case .write = self { return true } else { return false } }
    /// Whether the stage evaluates the model.
    public var evaluates: Bool { if case .evaluate = self { return true } else { return false } }
    /// Whether the stage changes the model (one-shot passes and trained stages do).
    public var changesModel: Bool {
        switch self {
        case .compress, .train: return true
        case .evaluate, .write: return false
        }
    }
}

/// A stage that writes the model at this point for another reader (`export`, in Workbench).
public protocol OutputStage: RecipeStage {
    /// The path it writes.
    var outputPath: String { get }
    /// Checks, before any stage runs, that `outputPath` can be written and is none of `inputs`; throws an error
    /// naming the path.
    func checkOutput(inputs: [(role: String, path: String)]) throws
    /// Writes `model` (with the base's tokenizer and history, read from `basePath`); returns the stage's report
    /// (a Codable struct encoded by `JSONValue(encoding:)`) and warnings.
    func write(_ model: DecoderModel, base: Checkpoint, basePath: String) throws
        -> (report: JSONValue, warnings: [String])
}

extension RecipeStage {
    public static var isTerminal: Bool { false }
    public var makesHeterogeneous: Bool { false }
    public var needs: PassNeeds { [] }
    public func produces(from input: Set<WeightKind>) -> Set<WeightKind> { input }
    public func preflight(_ model: DecoderModel) throws {}
    public var requires: InputRequirement? { nil }
}

/// A compression pass: decoded strictly from its recipe stage, run on a model, reporting what it did. It
/// returns a new model and never writes into the one it was given.
///
/// Analysis and targeting are separate: a pass computes its target-independent statistics (scores, a
/// removal order, sensitivities, moments) through `PassContext.cached` under a key made of its analysis
/// settings only (never its target), and then applies its target cheaply; several targets on one base, in
/// one session or across runs, reuse one analysis.
public protocol CompressionPass: RecipeStage {
    /// The compressed model and the pass's own diagnostics (scores, what it removed and why): the pass's Codable
    /// report struct encoded by `JSONValue(encoding:)` (snake-case keys, ints and doubles apart).
    func run(on model: DecoderModel, context: PassContext) throws -> (model: DecoderModel, diagnostics: JSONValue)
}

extension CompressionPass {
    public var work: StageWork { .compress(self) }
}

/// Recipe name → stage kind. Registering a name twice is an error.
public struct StageRegistry {
    private var types: [String: any RecipeStage.Type] = [:]

    public init() {}

    public mutating func register(_ type: any RecipeStage.Type) throws {
        guard types[type.name] == nil else { throw RecipeError("stage '\(type.name)' is registered twice") }
        types[type.name] = type
    }

    public var names: [String] { types.keys.sorted() }

    public func type(named name: String) -> (any RecipeStage.Type)? { types[name] }

    /// Builds the stage from its settings; unknown names list the known ones.
    public func make(_ name: String, config: StrictObject) throws -> any RecipeStage {
        guard let t = types[name] else {
            var c = config.context
            c.key = config.keyPath("stage")
            c.expected = "one of \(names.joined(separator: ", "))"
            c.found = "'\(name)'"
            throw RecipeError(at: config.location, "unknown stage '\(name)' (known: \(names.joined(separator: ", ")))",
                              c)
        }
        let stage = try t.init(config: config)
        try config.finish()
        return stage
    }
}

/// `eval`: perplexity of the model at this point on the recipe's eval text. Takes any representation.
public struct EvalStage: RecipeStage {
    public static let name = "eval"
    public static let accepts = Set(WeightKind.allCases)
    public init(config: StrictObject) throws {}
    public var work: StageWork { .evaluate }
}

/// A stage that trains (MaskLLM's mask logits, ...): it builds a `Distiller` with its trainables, the runner
/// drives the loop with progress lines, saves the state every `saveEvery` steps and resumes it after a kill
/// exactly as for `distill`, and `finish` turns the trained run into the stage's model.
public protocol TrainingPass: RecipeStage {
    /// Training text (tokenized with the base's tokenizer).
    var trainText: String { get }
    var saveEvery: Int { get }
    var logEvery: Int { get }
    /// Tokens per training window: the text must hold one window + 1 (the runner checks, naming the file).
    var trainingWindow: Int { get }
    /// Whether `prepare` may read or write calibration statistics through `PassContext.cached` (then the stage's
    /// report lists its cache hits and misses; default true). Plain distillation computes none.
    var cachesStatistics: Bool { get }
    /// Builds the run on `model` (the model at this point) with `teacher` (the base). Checks every setting
    /// against the model first; errors are `RecipeError`/`ConfigError` naming the key.
    func prepare(model: DecoderModel, teacher: DecoderModel, trainTokens: [Int32],
                 context: PassContext) throws -> TrainingRun
}

extension TrainingPass {
    public var work: StageWork { .train(self) }
    public var cachesStatistics: Bool { true }
}

/// A prepared training stage: its distiller and what turns the trained distiller into the stage's result.
public struct TrainingRun {
    /// nil: nothing to train (e.g. zero steps); `finish` alone makes the result.
    public let distiller: Distiller?
    public let finish: () throws -> (model: DecoderModel, diagnostics: JSONValue)
    public init(distiller: Distiller?, finish: @escaping () throws -> (model: DecoderModel, diagnostics: JSONValue)) {
        self.distiller = distiller; self.finish = finish
    }
}
