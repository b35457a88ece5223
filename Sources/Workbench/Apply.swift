import Checkpoint
import Evaluation
import Export
import Diagnostics
import Foundation
import Model
import Passes
import Quantization
import Tokenizer
import Recipes
import SafeFiles
import TensorCore
import Training

/// Inputs of `compress apply` beyond the recipe itself.
public struct ApplyOptions {
    public var recipe: String
    /// Overrides the recipe's `base`.
    public var checkpoint: String?
    /// Overrides the recipe's `output`.
    public var output: String?
    /// Calibration statistics directory (nil: no cache).
    public var cacheDirectory: String? = ".cache/compress"
    /// Continue an interrupted distill stage from its saved state.
    public var resume = false
    public var progress = true
    /// Testing aid: SIGKILL this process right after distillation step N (simulates a crash).
    public var killAfterStep: Int? = nil
    /// Allow the output to be one of the inputs (the base checkpoint).
    public var force = false
    /// Overrides the recipe's "precision" (nil: the recipe's, else fp32).
    public var precision: Precision?
    public init(recipe: String) { self.recipe = recipe }
}

/// What one stage did.
public struct StageReport: Codable {
    public var index: Int
    public var stage: String
    public var settings: JSONValue
    public var parametersBefore: Int
    public var parametersAfter: Int
    public var bytesBefore: Int
    public var bytesAfter: Int
    public var seconds: Double
    /// For eval stages: PPL of the model at this point, and base PPL / PPL.
    public var ppl: Double?
    public var retention: Double?
    /// For eval stages (unless the recipe's eval sets "kld": false): mean KL(base ‖ model) per token, its 99th
    /// percentile, the share of positions with the base's top-1 token, and the whole `DivergenceReport`.
    public var kld: Double?
    public var kldP99: Double?
    public var sameTopP: Double?
    public var divergence: DivergenceReport?
    /// Calibration statistics read from / written to the cache.
    public var cacheHits: [String]?
    public var cacheMisses: [String]?
    /// The stage's own report (its Codable report struct, encoded by `JSONValue(encoding:)`); a trained stage's
    /// holds its `TrainingReport` entries beside its own.
    public var diagnostics: JSONValue
}

/// What `compress apply` reports.
public struct ApplyReport: Codable {
    public var recipe: String
    public var name: String?
    public var base: String
    public var output: String
    public var parametersBefore: Int
    public var parametersAfter: Int
    public var bytesBefore: Int
    public var bytesAfter: Int
    /// PPL of the base checkpoint and of the result (the last eval stage), on the recipe's eval text.
    public var pplBefore: Double?
    public var pplAfter: Double?
    public var retention: Double?
    /// The last eval stage's divergence from the base: mean KLD, its 99th percentile, same-top-1 share.
    public var kldAfter: Double?
    public var kldP99After: Double?
    public var sameTopPAfter: Double?
    /// The evaluations' protocol ("pinned" or "llamacpp", `PerplexityProtocol.Kind`).
    public var evalProtocol: String?
    public var evalTokens: Int?
    /// Whether the evaluations used the BOS protocol (the base's tokenizer adds BOS; `PerplexityProtocol`).
    public var evalBos: Bool?
    public var calibrationTokens: Int
    public var seconds: Double
    public var peakResidentBytes: Int
    public var blasCore: String
    /// The matrix products' precision and what ran them (`MatrixProduct.kernels`); absent before issue 29.
    public var precision: String?
    public var kernels: String?
    public var stages: [StageReport]
}

/// Everything a run on one base checkpoint reads or measures once: the checkpoint, its content hash and
/// tokenizer, calibration windows, test tokens and the base perplexity (each memoised by its settings). `apply`
/// runs one recipe on a session; a sweep runs many points on one.
public final class Session {
    public let basePath: String
    public let base: Checkpoint
    public let baseHash: String
    public let tokenizer: any TextTokenizer
    /// Calibration statistics directory (nil: no disk cache).
    public let cacheDirectory: String?
    public var progress: Bool
    private var calibrationMemo: [String: [[Int32]]] = [:]
    private var textMemo: [String: [Int32]] = [:]
    private var pplMemo: [String: Double] = [:]
    private var referenceMemo: [String: BaseReference] = [:]
    /// Passes' analyses (scores, orders, sensitivities, moments) computed in this session, by cache key.
    public let analyses = AnalysisMemo()

    public init(checkpoint path: String, cacheDirectory: String?, progress: Bool = true) throws {
        basePath = path
        base = try Checkpoint.read(path)
        tokenizer = try Workbench.tokenizer(base.tokenizer, path: path)
        baseHash = try fileContentHash(path)
        self.cacheDirectory = cacheDirectory
        self.progress = progress
    }

    func say(_ line: String) { if progress { progressLine(line) } }

    /// The token ids of a text file, tokenized once per session.
    public func tokens(of file: String) throws -> [Int32] {
        if let t = textMemo[file] { return t }
        let t = tokenizer.encode(try Workbench.readText(file))
        textMemo[file] = t
        return t
    }

    /// Calibration windows of these settings, drawn once per session.
    public func calibrationWindows(_ c: Recipe.Calibration) throws -> [[Int32]] {
        let key = jsonValue(c).text
        if let w = calibrationMemo[key] { return w }
        let w: [[Int32]]
        w = try c.windows(from: try tokens(of: c.text), source: c.text)
        say("calibration: \(c.samples) windows of \(c.window) tokens from \(c.text) (seed \(c.seed))")
        calibrationMemo[key] = w
        return w
    }

    /// The perplexity protocol of evaluations with these settings: the named one, with the base's tokenizer's BOS.
    public func perplexityProtocol(_ e: Recipe.Evaluation = .init()) throws -> PerplexityProtocol {
        try Workbench.perplexityProtocol(base.tokenizer, path: basePath,
                                         kind: PerplexityProtocol.Kind(rawValue: e.protocol ?? "pinned") ?? .pinned)
    }

    /// The base's reference for these eval settings (hidden states, or top-k with "reference": "topk"; nil when they
    /// set "kld": false): once per session, kept in the cache directory (a temporary file without one).
    public func baseReference(_ e: Recipe.Evaluation) throws -> BaseReference? {
        guard e.kld ?? true else { return nil }
        let key = jsonValue(e).text
        if let r = referenceMemo[key] { return r }
        let k = e.reference == "topk" ? e.topK ?? BaseReference.defaultTopK : nil
        let what = k.map { "top-\($0) reference" } ?? "hidden-state reference"
        let start = Date()
        var shown = start
        let made: (reference: BaseReference, cached: Bool)
        // The base's figures are the float32 truth whatever the recipe's precision (so their cache keys need none).
        do { made = try MatrixProduct.withPrecision(.fp32) { try Workbench.reference(
            base: base.model, basePath: basePath, tokens: try tokens(of: e.text), window: e.window,
            protocol: try perplexityProtocol(e), maxTokens: e.tokens, k: k, cacheDirectory: cacheDirectory,
            warning: { [weak self] in self?.say("warning: \($0)") }
        ) { [weak self] done, total in
            guard let self, self.progress, Date().timeIntervalSince(shown) > 5 || done == total else { return }
            shown = Date()
            let el = Date().timeIntervalSince(start)
            progressLine(String(format: "eval base (%@): window %d/%d  ETA %.0fs", what, done, total,
                                el / Double(done) * Double(total - done)))
        } } } catch let err as EvaluationError {
            throw err.adding(ErrorContext(file: e.text), place: e.text, note: "base \(basePath), window \(e.window)")
        }
        let (r, cached) = made
        say(String(format: "eval base: ppl %.4f%@ (%@, %@)", r.header.ppl ?? .nan, cached ? " (cached)" : "", what,
                   r.path))
        referenceMemo[key] = r
        return r
    }

    /// The base checkpoint's PPL under these eval settings: once per session; from the base reference when there is
    /// one, else measured and cached on disk by base hash.
    public func basePPL(_ e: Recipe.Evaluation) throws -> Double {
        let key = jsonValue(e).text
        if let p = pplMemo[key] { return p }
        if let r = try baseReference(e), let p = r.header.ppl { pplMemo[key] = p; return p }
        let test = try tokens(of: e.text)
        let scoring = try perplexityProtocol(e)
        // The base PPL's cache scope; the BOS protocol's id joins it (no-BOS keys are as before the BOS protocol
        // existed), and a protocol other than pinned.
        struct Scope: Encodable { var base: String; var eval: JSONValue; var evalBos: Int?; var evalProtocol: String? }
        let scope = Scope(base: baseHash, eval: jsonValue(e), evalBos: scoring.bos.map { Int($0) },
                          evalProtocol: scoring.kind != .pinned ? scoring.kind.rawValue : nil)
        let cache = StatsCache(directory: cacheDirectory, scope: try JSONValue(encoding: scope))
        let p = try cache.value("ppl", settings: .object([:])) {
            try MatrixProduct.withPrecision(.fp32) {
                try Workbench.measurePPL(self.base.model, tokens: test, source: e.text, window: e.window,
                                         protocol: scoring, maxTokens: e.tokens,
                                         label: "base", naming: "base \(self.basePath)", progress: self.progress)
            }
        }
        if !cache.hits.isEmpty { say(String(format: "eval base: ppl %.4f (cached)", p)) }
        for w in cache.warnings { say("warning: \(w)") }
        pplMemo[key] = p
        return p
    }

    /// What running a recipe's stages produced.
    public struct Result {
        public var model: DecoderModel
        public var reports: [StageReport]
        public var basePPL: Double?
        public var lastPPL: Double?
        /// The last eval stage's divergence from the base (nil without one, or with "kld": false).
        public var lastDivergence: DivergenceReport?
        public var calibrationTokens: Int
        public var evalTokens: Int?
        /// Whether the evaluations used the BOS protocol (nil: no eval stage).
        public var evalBos: Bool?
        /// Training states of distill stages, to delete once the output is safely written.
        public var statePaths: [String]
    }

    /// Runs the recipe's stages on the base model. The base is never changed: every stage returns a new
    /// model, and distillation trains a copy with the base as its teacher. `statePrefix` names the trained
    /// stages' state files (`<prefix>.stageN.state.h5`), kept until the caller has written its output.
    public func run(_ recipe: Recipe, label name: String, statePrefix: String, resume: Bool = false,
                    killAfterStep: Int? = nil) throws -> Result {
        var recipe = recipe
        do { try recipe.check(baseKinds: base.model.weightKinds) } catch {
            throw error.adding(note: "base \(basePath)")
        }
        try checkExportable(recipe, label: name)
        // Settings checked against the base before anything runs, up to the first stage that changes the model.
        for (i, entry) in recipe.stages.enumerated() {
            if recipe.stages.prefix(i).contains(where: { $0.stage.work.changesModel }) { break }
            do { try entry.stage.preflight(base.model) } catch {
                throw error.adding(ErrorContext(file: recipe.path, stage: i + 1, stageName: entry.name),
                                   note: "base \(basePath)")
            }
        }
        let needsCalibration = recipe.stages.contains { $0.stage.needs.contains(.calibration) }
        let evaluating = recipe.stages.contains { $0.stage.work.evaluates }
        let e = recipe.evaluation
        var run = StageRun(recipe: recipe, name: name, statePrefix: statePrefix, resume: resume,
                           killAfterStep: killAfterStep,
                           calibration: needsCalibration ? try calibrationWindows(recipe.calibration) : [],
                           scoring: evaluating ? try perplexityProtocol(e) : .noBOS)
        run.basePPL = evaluating ? try basePPL(e) : nil
        run.test = evaluating ? try tokens(of: e.text) : []
        run.reference = evaluating ? try baseReference(e) : nil
        var model = base.model
        var reports: [StageReport] = []
        for i in recipe.stages.indices {
            let report: StageReport
            (model, report) = try runStage(i, on: model, &run)
            reports.append(report)
        }
        return Result(model: model, reports: reports, basePPL: run.basePPL, lastPPL: run.lastPPL,
                      lastDivergence: run.lastDivergence,
                      calibrationTokens: run.calibration.count * recipe.calibration.window,
                      evalTokens: evaluating ? min(e.tokens ?? run.test.count, run.test.count) : nil,
                      evalBos: evaluating ? run.scoring.bos != nil : nil, statePaths: run.statePaths)
    }

    /// An export after a stage that may leave layers differing needs a family whose server formats hold that.
    func checkExportable(_ recipe: Recipe, label name: String) throws {
        let family = base.model.config.familyType
        guard !family.perLayerExport,
              let ex = recipe.stages.firstIndex(where: { $0.stage.work.writes }),
              let het = recipe.stages.prefix(ex).firstIndex(where: { $0.stage.makesHeterogeneous }) else { return }
        let f = family.name
        throw WorkbenchError("\(name), stage \(ex + 1) (\(recipe.stages[ex].name)): stage \(het + 1) "
            + "(\(recipe.stages[het].name)) leaves a heterogeneous \(f) model (per-layer sizes or removed sublayers), "
            + "which no \(f) server format holds (\(family.hfArchitecture) and GGUF '\(family.ggufArchitectures[0])' " +
              "have "
            + "one size for every layer; DeciLM and GGUF 'deci' are Llama's); drop the export stage and keep our "
            + "checkpoint, or prune with minitron (homogeneous) (base \(basePath))")
    }

    /// One run's inputs and what its stages leave for the ones after them.
    struct StageRun {
        let recipe: Recipe
        let name: String
        let statePrefix: String
        let resume: Bool
        let killAfterStep: Int?
        let calibration: [[Int32]]
        let scoring: PerplexityProtocol
        var basePPL: Double? = nil
        var test: [Int32] = []
        var reference: BaseReference? = nil
        var lastPPL: Double? = nil
        var lastDivergence: DivergenceReport? = nil
        /// Training states of trained stages, to delete once the output is safely written.
        var statePaths: [String] = []
    }

    /// What one stage returned to the runner.
    struct StageOutcome {
        var model: DecoderModel
        var diagnostics: JSONValue = .object([:])
        var ppl: Double? = nil
        var divergence: DivergenceReport? = nil
        var cache: StatsCache? = nil
    }

    /// Runs stage `i` on `model`: dispatches on the stage's own description (`StageWork`), then reports and checks
    /// the report's figures finite.
    func runStage(_ i: Int, on model: DecoderModel, _ run: inout StageRun) throws -> (DecoderModel, StageReport) {
        let entry = run.recipe.stages[i]
        let label = "stage \(i + 1)/\(run.recipe.stages.count) (\(entry.name))"
        let place = "\(run.name), stage \(i + 1) (\(entry.name))"  // as recipe decoding errors name it
        let inStage = ErrorContext(file: run.recipe.path, stage: i + 1, stageName: entry.name)
        say("\(label): start, \(model.parameterCount) parameters")
        let t0 = Date()
        let before = (params: model.parameterCount, bytes: model.storageBytes)
        var out = StageOutcome(model: model)
        switch entry.stage.work {
        case .compress(let pass):
            out.cache = try stageCache(before: i, of: run.recipe)
            let context = passContext(run, cache: out.cache, label: label)
            do { (out.model, out.diagnostics) = try pass.run(on: model, context: context) } catch {
                throw error.adding(inStage, place: place, note: "base \(basePath)")
            }
        case .train(let stage):
            out.cache = stage.cachesStatistics ? try stageCache(before: i, of: run.recipe) : nil
            let context = passContext(run, cache: out.cache, label: label)
            do {
                (out.model, out.diagnostics) = try train(stage, index: i, on: model, context: context, &run,
                                                         label: label)
            } catch { throw error.adding(inStage, place: place) }
        case .write(let stage):
            let r: (report: JSONValue, warnings: [String])
            do { r = try stage.write(model, base: base, basePath: basePath) } catch {
                throw error.adding(inStage, place: place)
            }
            for w in r.warnings { say("\(label): warning: \(w)") }
            out.diagnostics = r.report
        case .evaluate:
            // The message names the stage already (`naming`); the stage is added as fields only.
            do { (out.ppl, out.divergence) = try evaluate(model, run, label: label, place: place) } catch {
                throw error.adding(inStage)
            }
            run.lastPPL = out.ppl
            run.lastDivergence = out.divergence
        }
        let report = StageReport(
            index: i + 1, stage: entry.name, settings: entry.settings,
            parametersBefore: before.params, parametersAfter: out.model.parameterCount,
            bytesBefore: before.bytes, bytesAfter: out.model.storageBytes, seconds: Date().timeIntervalSince(t0),
            ppl: out.ppl, retention: out.ppl.flatMap { p in run.basePPL.map { $0 / p } },
            kld: out.divergence?.kld.mean, kldP99: out.divergence?.kld.percentiles["99"],
            sameTopP: out.divergence?.sameTopP, divergence: out.divergence, cacheHits: out.cache?.hits,
            cacheMisses: out.cache?.misses, diagnostics: out.diagnostics)
        // Every figure of the stage's report is a number: a NaN distance, score, damage or loss stops the run here.
        if let bad = firstNonFiniteNumber(in: report) {
            throw WorkbenchError("\(place): the stage's report holds a non-finite number at \(bad) (expected "
                + "finite figures; the model's outputs hold NaN or infinite values) (base \(basePath))")
        }
        for w in out.cache?.warnings ?? [] { say("warning: \(w)") }
        say(String(format: "%@: done in %@, %d -> %d parameters", label, formatDuration(report.seconds), before.params,
                   out.model.parameterCount)
            + (out.ppl.map { String(format: ", ppl %.4f", $0) } ?? "")
            + (out.divergence.map { String(format: ", KLD %.5f, same top-1 %.2f %%", $0.kld.mean, 100 * $0.sameTopP) }
               ?? ""))
        return (out.model, report)
    }

    /// The statistics cache of stage `i`: keyed by everything its input depends on (the base, the calibration data,
    /// the stages before it).
    func stageCache(before i: Int, of recipe: Recipe) throws -> StatsCache {
        struct Stage: Encodable { var stage: String; var settings: JSONValue }
        /// `precision` only when bf16: float32 keys stay those from before precision existed.
        struct Scope: Encodable {
            var base: String; var calibration: JSONValue; var stagesBefore: [Stage]; var precision: String?
        }
        let scope = Scope(base: baseHash, calibration: jsonValue(recipe.calibration),
                          stagesBefore: recipe.stages.prefix(i).map { Stage(stage: $0.name, settings: $0.settings) },
                          precision: MatrixProduct.precision == .fp32 ? nil : MatrixProduct.precision.rawValue)
        return StatsCache(directory: cacheDirectory, scope: try JSONValue(encoding: scope), memo: analyses)
    }

    func passContext(_ run: StageRun, cache: StatsCache?, label: String) -> PassContext {
        PassContext(calibration: run.calibration, seed: run.recipe.calibration.seed, cache: cache) { [weak self] in
            self?.say("\(label): \($0)")
        }
    }

    /// A trained stage: prepared by the stage, driven by `Workbench.train` (states, resume), finished by the stage.
    func train(_ stage: any TrainingPass, index i: Int, on model: DecoderModel, context: PassContext,
               _ run: inout StageRun, label: String) throws -> (DecoderModel, JSONValue) {
        let trainIDs = try tokens(of: stage.trainText)
        try Workbench.requireTokens(trainIDs, from: stage.trainText, needed: stage.trainingWindow + 1,
                                    for: "one training window of \(stage.trainingWindow) + 1")
        let prepared = try stage.prepare(model: model, teacher: base.model, trainTokens: trainIDs, context: context)
        var trained = Workbench.Trained(keepState: false, resumedFrom: nil, seconds: 0)
        var diagnostics: [String: JSONValue] = [:]
        if let distiller = prepared.distiller {
            let statePath = run.statePrefix + ".stage\(i + 1).state.h5"
            trained = try Workbench.train(distiller, statePath: statePath, saveEvery: stage.saveEvery,
                                          logEvery: stage.logEvery, resume: run.resume ? .ifPresent : .no,
                                          progress: progress, label: label, killAfterStep: run.killAfterStep)
            if trained.keepState { run.statePaths.append(statePath) }
            diagnostics = try JSONValue(encoding: Workbench.trainingDiagnostics(distiller, trained)).objectValue ?? [:]
        }
        let finished = try prepared.finish()
        for (k, v) in finished.diagnostics.objectValue ?? [:] { diagnostics[k] = v }
        return (finished.model, .object(diagnostics))
    }

    /// An eval stage: PPL of `model`, with its divergence from the base when the run keeps a base reference.
    func evaluate(_ model: DecoderModel, _ run: StageRun, label: String, place: String) throws
        -> (ppl: Double, divergence: DivergenceReport?) {
        let e = run.recipe.evaluation
        let naming = "\(place), base \(basePath)"
        if let reference = run.reference {
            return try Workbench.measureDivergence(
                model, reference: reference, base: base.model, tokens: run.test, source: e.text, label: label,
                naming: naming, progress: progress)
        }
        let ppl = try Workbench.measurePPL(
            model, tokens: run.test, source: e.text, window: e.window, protocol: run.scoring, maxTokens: e.tokens,
            label: label, naming: naming, progress: progress)
        return (ppl, nil)
    }
}

extension Workbench {
    /// Whether a run resumes from its training state: never, when the state exists, or only from one (an error
    /// naming the path when it is missing: `compress distill --resume`).
    enum Resume { case no, ifPresent, required }

    /// What `train` did: whether the state file stays (until the output is written), the step it resumed from
    /// and the wall time of the steps run.
    struct Trained {
        var keepState: Bool
        var resumedFrom: Int?
        var seconds: Double
    }

    /// The one distillation runner (`compress apply`'s trained stages and `compress distill`): runs a distiller to
    /// its step count, resuming from `statePath` as `resume` says, saving its state every `saveEvery` steps and
    /// once more at the end when it saved or resumed (kept until the output is written: a kill before then resumes
    /// there, not at step 0). Errors name the state file (the caller adds the stage); a damaged state is refused
    /// (`Distiller.loadState`).
    static func train(_ distiller: Distiller, statePath: String, saveEvery: Int, logEvery: Int, resume: Resume,
                      progress: Bool, label: String?, killAfterStep: Int?) throws -> Trained {
        let present = FileManager.default.fileExists(atPath: statePath)
        if resume == .required && !present {
            throw WorkbenchError("no training state to resume from", ErrorContext(file: statePath))
        }
        if resume != .no && present {
            try distiller.loadState(from: statePath)
            if progress {
                progressLine("\(label.map { "\($0): " } ?? "")resumed from \(statePath) at step \(distiller.step)")
            }
        }
        let first = distiller.step
        let seconds = try trainLoop(distiller, saveEvery: saveEvery, statePath: statePath, logEvery: logEvery,
                                    progress: progress, killAfterStep: killAfterStep)
        let keep = saveEvery > 0 || first > 0
        if keep {
            try distiller.saveState(to: statePath)
        }
        return Trained(keepState: keep, resumedFrom: first > 0 ? first : nil, seconds: seconds)
    }

    /// A trained stage's report entries: steps, tokens, speed, first and final loss and the loop's log.
    static func trainingDiagnostics(_ distiller: Distiller, _ t: Trained) -> TrainingReport {
        let c = distiller.config, tokensPerStep = c.batch * c.window * c.accumulation
        let first = t.resumedFrom ?? 0
        return TrainingReport(
            steps: c.steps, resumedFrom: Nullable(t.resumedFrom), tokens: c.steps * tokensPerStep,
            trainSeconds: t.seconds,
            tokensPerSecond: Double((c.steps - first) * tokensPerStep) / max(t.seconds, 1e-9),
            firstLoss: Nullable(distiller.log.first?.loss), finalLoss: Nullable(distiller.log.last?.loss),
            log: distiller.log)
    }
}

/// What every trained stage reports of its training (the stage's own report adds its keys beside these): steps,
/// tokens, speed, the first and final loss (null before any step) and the loop's log.
public struct TrainingReport: Codable {
    public var steps: Int
    /// The step a resumed run started from (null: from step 0).
    public var resumedFrom: Nullable<Int>
    /// Training tokens of all `steps` (batch × window × accumulation each).
    public var tokens: Int
    /// Wall time of the steps this run ran, and their tokens per second.
    public var trainSeconds: Double
    public var tokensPerSecond: Double
    public var firstLoss: Nullable<Double>
    public var finalLoss: Nullable<Double>
    public var log: [StepStats]
}

/// The history entry `compress apply` appends to the base's history in the checkpoint it writes.
public struct ApplyHistoryEntry: Codable {
    /// "apply".
    public var kind: String
    public var recipePath: String
    /// The recipe as read.
    public var recipe: JSONValue
    /// The base checkpoint's path and content hash.
    public var base: String
    public var baseHash: String
    public var stages: [StageReport]
}

extension Session {
    /// Writes a run's model (atomically) with the recipe and every stage report appended to the base's history,
    /// re-opens it and checks every tensor finite (the caller deletes the run's training states only after this
    /// returns), and returns the run report.
    public func write(_ r: Result, recipe: Recipe, recipePath: String, output: String,
                      started: Date) throws -> ApplyReport {
        var history = base.history
        history.append(try JSONValue(encoding: ApplyHistoryEntry(
            kind: "apply", recipePath: recipePath, recipe: recipe.json, base: basePath, baseHash: baseHash,
            stages: r.reports)))
        try Checkpoint(model: r.model, tokenizer: base.tokenizer, history: history).write(to: output)
        try Workbench.verifyWritten(output, keeping: r.statePaths.filter { FileManager.default.fileExists(atPath: $0) })
        return ApplyReport(
            recipe: recipePath, name: recipe.name, base: basePath, output: output,
            parametersBefore: base.model.parameterCount, parametersAfter: r.model.parameterCount,
            bytesBefore: base.model.storageBytes, bytesAfter: r.model.storageBytes,
            pplBefore: r.basePPL, pplAfter: r.lastPPL, retention: r.basePPL.flatMap { b in r.lastPPL.map { b / $0 } },
            kldAfter: r.lastDivergence?.kld.mean, kldP99After: r.lastDivergence?.kld.percentiles["99"],
            sameTopPAfter: r.lastDivergence?.sameTopP,
            evalProtocol: r.evalBos == nil ? nil : recipe.evaluation.protocol ?? "pinned",
            evalTokens: r.evalTokens, evalBos: r.evalBos, calibrationTokens: r.calibrationTokens,
            seconds: Date().timeIntervalSince(started), peakResidentBytes: peakResidentBytes(), blasCore: BLAS.coreName,
            precision: MatrixProduct.precision.rawValue, kernels: MatrixProduct.kernels, stages: r.reports)
    }
}

extension Workbench {
    /// Checks, before any work, that `output` can be written as a checkpoint and is none of `inputs`.
    static func checkOutput(_ output: String, inputs: [(role: String, path: String)], force: Bool) throws {
        try SafeFiles.checkOutput(output, role: "output checkpoint")
        try SafeFiles.checkDistinct(output: output, inputs: inputs, force: force)
    }

    /// Checks every export stage's output before any stage runs (writable, not an input, not replacing
    /// anything without the stage's `force`, and no two stages writing one path).
    static func checkExportOutputs(_ recipe: Recipe, inputs: [(role: String, path: String)]) throws {
        var seen: [String: Int] = [:]
        for (i, entry) in recipe.stages.enumerated() {
            guard case .write(let x) = entry.stage.work else { continue }
            let place = "\(recipe.path), stage \(i + 1) (\(entry.name))"
            let key = URL(fileURLWithPath: x.outputPath).standardizedFileURL.path
            if let j = seen[key] {
                throw WorkbenchError("\(place): 'output' \(x.outputPath) is also stage \(j)'s output")
            }
            seen[key] = i + 1
            if inputs.contains(where: { URL(fileURLWithPath: $0.path).standardizedFileURL.path == key }) {
                throw WorkbenchError("\(place): 'output' \(x.outputPath) is one of the run's inputs or outputs")
            }
            do { try x.checkOutput(inputs: inputs) } catch {
                throw error.adding(ErrorContext(file: recipe.path, stage: i + 1, stageName: entry.name), place: place)
            }
        }
    }

    /// Runs a recipe's stages on its base checkpoint and writes the result (atomically) with the recipe and
    /// every stage report appended to its history.
    public static func apply(_ o: ApplyOptions) throws -> ApplyReport {
        let started = Date()
        let recipe: Recipe
        recipe = try Recipe.read(o.recipe, registry: .standard())
        guard let basePath = o.checkpoint ?? recipe.base else {
            throw WorkbenchError("no base checkpoint: give CHECKPOINT on the command line or 'base' in the recipe",
                ErrorContext(file: o.recipe))
        }
        guard let output = o.output ?? recipe.output else {
            throw WorkbenchError("no output path: give -o OUT.h5 or 'output' in the recipe",
                ErrorContext(file: o.recipe))
        }
        try MatrixProduct.select(o.precision ?? recipe.precision ?? .fp32)
        // Before any stage runs: the output can be written, and it is not the base.
        try checkOutput(output, inputs: [("base checkpoint", basePath), ("recipe", o.recipe)], force: o.force)
        try checkExportOutputs(recipe,
                               inputs: [("base checkpoint", basePath), ("recipe", o.recipe),
                                        ("output checkpoint", output)])
        let session = try Session(checkpoint: basePath, cacheDirectory: o.cacheDirectory, progress: o.progress)
        let r = try session.run(recipe, label: o.recipe, statePrefix: output, resume: o.resume,
                                killAfterStep: o.killAfterStep)
        let report = try session.write(r, recipe: recipe, recipePath: o.recipe, output: output, started: started)
        for p in r.statePaths { try? FileManager.default.removeItem(atPath: p) }
        return report
    }
}
