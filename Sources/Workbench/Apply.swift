import Checkpoint
import Evaluation
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
    /// Calibration statistics read from / written to the cache.
    public var cacheHits: [String]?
    public var cacheMisses: [String]?
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
    public var evalTokens: Int?
    public var calibrationTokens: Int
    public var seconds: Double
    public var peakResidentBytes: Int
    public var blasCore: String
    public var stages: [StageReport]
}

/// Everything a run on one base checkpoint reads or measures once: the checkpoint, its content hash and
/// tokenizer, calibration windows, test tokens and the base perplexity (each memoised by its settings). `apply`
/// runs one recipe on a session; a sweep runs many points on one.
public final class Session {
    public let basePath: String
    public let base: Checkpoint
    public let baseHash: String
    public let tokenizer: BPETokenizer
    /// Calibration statistics directory (nil: no disk cache).
    public let cacheDirectory: String?
    public var progress: Bool
    private var calibrationMemo: [String: [[Int32]]] = [:]
    private var textMemo: [String: [Int32]] = [:]
    private var pplMemo: [String: Double] = [:]
    /// Passes' analyses (scores, orders, sensitivities, moments) computed in this session, by cache key.
    public let analyses = AnalysisMemo()

    public init(checkpoint path: String, cacheDirectory: String?, progress: Bool = true) throws {
        basePath = path
        base = try Checkpoint.read(path)
        tokenizer = try Workbench.tokenizer(base.tokenizer, path: path)
        do { baseHash = try fileContentHash(path) } catch let e as RecipeError { throw WorkbenchError(e.description) }
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
        do { w = try c.windows(from: try tokens(of: c.text), source: c.text) } catch let e as RecipeError { throw WorkbenchError(e.description) }
        say("calibration: \(c.samples) windows of \(c.window) tokens from \(c.text) (seed \(c.seed))")
        calibrationMemo[key] = w
        return w
    }

    /// The base checkpoint's PPL under these eval settings: once per session, and cached on disk by base hash.
    public func basePPL(_ e: Recipe.Evaluation) throws -> Double {
        let key = jsonValue(e).text
        if let p = pplMemo[key] { return p }
        let test = try tokens(of: e.text)
        let scope: JSONValue = .object(["base": .string(baseHash), "eval": jsonValue(e)])
        let cache = StatsCache(directory: cacheDirectory, scope: scope)
        let p = try cache.value("ppl", settings: .object([:])) {
            try Workbench.measurePPL(self.base.model, tokens: test, source: e.text, window: e.window, maxTokens: e.tokens, label: "base", progress: self.progress)
        }
        if !cache.hits.isEmpty { say(String(format: "eval base: ppl %.4f (cached)", p)) }
        for w in cache.warnings { say("warning: \(w)") }
        pplMemo[key] = p
        return p
    }

    /// What running a recipe's stages produced.
    public struct Result {
        public var model: LlamaModel
        public var reports: [StageReport]
        public var basePPL: Double?
        public var lastPPL: Double?
        public var calibrationTokens: Int
        public var evalTokens: Int?
        /// Training states of distill stages, to delete once the output is safely written.
        public var statePaths: [String]
    }

    /// Runs the recipe's stages on the base model. The base is never changed: every stage returns a new
    /// model, and distillation trains a copy with the base as its teacher. `statePrefix` names the distill
    /// stages' state files (`<prefix>.stageN.state.h5`), kept until the caller has written its output.
    public func run(_ recipe: Recipe, label name: String, statePrefix: String, resume: Bool = false,
                    killAfterStep: Int? = nil) throws -> Result {
        var recipe = recipe
        do { try recipe.check(baseKinds: base.model.weightKinds) } catch let e as RecipeError {
            throw WorkbenchError("\(e.description) (base \(basePath))")
        }
        // VTrans targets checked against the model before anything runs (when no earlier stage changes its shape).
        for (i, entry) in recipe.stages.enumerated() {
            guard let v = entry.stage as? VTransPass else { continue }
            if recipe.stages.prefix(i).contains(where: { $0.stage is any CompressionPass || $0.stage is VTransPass }) { break }
            do { _ = try v.resolveTarget(base.model.config) } catch let e as RecipeError { throw WorkbenchError("\(e.description) (base \(basePath))") }
        }
        let needsCalibration = recipe.stages.contains { $0.stage.needs.contains(.calibration) }
        let calibration = needsCalibration ? try calibrationWindows(recipe.calibration) : []
        let evaluating = recipe.stages.contains { $0.stage is EvalStage }
        let e = recipe.evaluation
        let basePPL = evaluating ? try basePPL(e) : nil
        let test = evaluating ? try tokens(of: e.text) : []

        var model = base.model
        var reports: [StageReport] = [], statePaths: [String] = []
        var lastPPL: Double? = nil
        for (i, entry) in recipe.stages.enumerated() {
            let label = "stage \(i + 1)/\(recipe.stages.count) (\(entry.name))"
            let place = "\(name), stage \(i + 1) (\(entry.name))"  // as recipe decoding errors name it
            say("\(label): start, \(model.parameterCount) parameters")
            let t0 = Date()
            let before = (params: model.parameterCount, bytes: model.storageBytes)
            var diagnostics: JSONValue = .object([:])
            var ppl: Double? = nil
            var cacheUse: StatsCache? = nil
            switch entry.stage {
            case let pass as any CompressionPass:
                // Everything the pass's input depends on: the base, the calibration data, the stages before it.
                let scope: JSONValue = .object([
                    "base": .string(baseHash), "calibration": jsonValue(recipe.calibration),
                    "stages_before": .array(recipe.stages.prefix(i).map { .object(["stage": .string($0.name), "settings": $0.settings]) }),
                ])
                cacheUse = StatsCache(directory: cacheDirectory, scope: scope, memo: analyses)
                let context = PassContext(calibration: calibration, seed: recipe.calibration.seed, cache: cacheUse) { [weak self] in self?.say("\(label): \($0)") }
                do {
                    (model, diagnostics) = try pass.run(on: model, context: context)
                } catch let err as RecipeError {
                    throw WorkbenchError("\(place): \(err.description)")
                } catch let err as ConfigError {
                    throw WorkbenchError("\(place): \(err.description)")
                }
            case let v as VTransPass:
                // Trained like a distill stage (state saved every save_every steps, resumed with --resume), then pruned.
                let statePath = statePrefix + ".stage\(i + 1).state.h5"
                let run: VTransRun
                do { run = try v.makeRun(model: model, trainTokens: try tokens(of: v.text)) } catch let err as RecipeError {
                    throw WorkbenchError("\(place): \(err.description)")
                }
                let distiller = run.distiller
                if resume && FileManager.default.fileExists(atPath: statePath) {
                    do { try distiller.loadState(from: statePath) } catch let err as ConfigError { throw WorkbenchError(err.description) }
                    say("\(label): resumed from \(statePath) at step \(distiller.step)")
                }
                let first = distiller.step
                say("\(label): \(v.variant.rawValue), target \(run.masks.settings.targetParameters) parameters, \(distiller.config.steps) steps")
                let seconds = try Workbench.trainLoop(distiller, saveEvery: v.saveEvery, statePath: statePath, logEvery: v.logEvery, progress: progress,
                                                      killAfterStep: killAfterStep, status: { run.status })
                if v.saveEvery > 0 || first > 0 { try distiller.saveState(to: statePath); statePaths.append(statePath) }
                do { (model, diagnostics) = try run.finish() } catch let err as RecipeError { throw WorkbenchError("\(place): \(err.description)") }
                if case .object(var o) = diagnostics {
                    o["resumed_from"] = first > 0 ? .int(first) : .null
                    o["train_seconds"] = .double(seconds)
                    o["log"] = jsonValue(distiller.log)
                    diagnostics = .object(o)
                }
            case let d as DistillStage:
                let statePath = statePrefix + ".stage\(i + 1).state.h5"
                let distiller: Distiller
                do {
                    distiller = try Distiller(teacher: base.model, student: model, config: d.config, trainTokens: try tokens(of: d.text))
                } catch let err as ConfigError { throw WorkbenchError("\(place): \(err.description)") }
                if resume && FileManager.default.fileExists(atPath: statePath) {
                    do { try distiller.loadState(from: statePath) } catch let err as ConfigError { throw WorkbenchError(err.description) }
                    say("\(label): resumed from \(statePath) at step \(distiller.step)")
                }
                let first = distiller.step
                let seconds = try Workbench.trainLoop(distiller, saveEvery: d.saveEvery, statePath: statePath, logEvery: d.logEvery, progress: progress,
                                                      killAfterStep: killAfterStep)
                // The state stays until the output is written: a kill before then resumes here, not at step 0.
                if d.saveEvery > 0 || first > 0 { try distiller.saveState(to: statePath); statePaths.append(statePath) }
                model = distiller.student
                let c = d.config, tokensPerStep = c.batch * c.window * c.accumulation
                diagnostics = .object([
                    "steps": .int(c.steps), "resumed_from": first > 0 ? .int(first) : .null, "tokens": .int(c.steps * tokensPerStep),
                    "tokens_per_second": .double(Double((c.steps - first) * tokensPerStep) / max(seconds, 1e-9)),
                    "first_loss": .double(distiller.log.first?.loss ?? .nan), "final_loss": .double(distiller.log.last?.loss ?? .nan),
                    "log": jsonValue(distiller.log),
                ])
            case is EvalStage:
                ppl = try Workbench.measurePPL(model, tokens: test, source: e.text, window: e.window, maxTokens: e.tokens, label: label, progress: progress)
                lastPPL = ppl
            default:
                preconditionFailure("stage kind '\(entry.name)' has no runner")
            }
            let report = StageReport(
                index: i + 1, stage: entry.name, settings: entry.settings,
                parametersBefore: before.params, parametersAfter: model.parameterCount,
                bytesBefore: before.bytes, bytesAfter: model.storageBytes, seconds: Date().timeIntervalSince(t0),
                ppl: ppl, retention: ppl.flatMap { p in basePPL.map { $0 / p } },
                cacheHits: cacheUse?.hits, cacheMisses: cacheUse?.misses, diagnostics: diagnostics)
            reports.append(report)
            for w in cacheUse?.warnings ?? [] { say("warning: \(w)") }
            say(String(format: "%@: done in %@, %d -> %d parameters", label, formatDuration(report.seconds), before.params, model.parameterCount)
                + (ppl.map { String(format: ", ppl %.4f", $0) } ?? ""))
        }
        return Result(model: model, reports: reports, basePPL: basePPL, lastPPL: lastPPL,
                      calibrationTokens: calibration.count * recipe.calibration.window,
                      evalTokens: evaluating ? min(e.tokens ?? test.count, test.count) : nil, statePaths: statePaths)
    }
}

extension Session {
    /// Writes a run's model (atomically) with the recipe and every stage report appended to the base's history,
    /// and returns the run report.
    public func write(_ r: Result, recipe: Recipe, recipePath: String, output: String, started: Date) throws -> ApplyReport {
        var history = base.history
        history.append(.object([
            "kind": .string("apply"), "recipe_path": .string(recipePath), "recipe": recipe.json, "base": .string(basePath),
            "base_hash": .string(baseHash), "stages": jsonValue(r.reports),
        ]))
        try Checkpoint(model: r.model, tokenizer: base.tokenizer, history: history).write(to: output)
        return ApplyReport(
            recipe: recipePath, name: recipe.name, base: basePath, output: output,
            parametersBefore: base.model.parameterCount, parametersAfter: r.model.parameterCount,
            bytesBefore: base.model.storageBytes, bytesAfter: r.model.storageBytes,
            pplBefore: r.basePPL, pplAfter: r.lastPPL, retention: r.basePPL.flatMap { b in r.lastPPL.map { b / $0 } },
            evalTokens: r.evalTokens, calibrationTokens: r.calibrationTokens,
            seconds: Date().timeIntervalSince(started), peakResidentBytes: peakResidentBytes(), blasCore: BLAS.coreName,
            stages: r.reports)
    }
}

extension Workbench {
    /// Checks, before any work, that `output` can be written as a checkpoint and is none of `inputs`.
    static func checkOutput(_ output: String, inputs: [(role: String, path: String)], force: Bool) throws {
        do {
            try SafeFiles.checkOutput(output, role: "output checkpoint")
            try SafeFiles.checkDistinct(output: output, inputs: inputs, force: force)
        } catch let e as FileError { throw WorkbenchError(e.description) }
    }

    /// Runs a recipe's stages on its base checkpoint and writes the result (atomically) with the recipe and
    /// every stage report appended to its history.
    public static func apply(_ o: ApplyOptions) throws -> ApplyReport {
        let started = Date()
        let recipe: Recipe
        do { recipe = try Recipe.read(o.recipe, registry: .standard()) } catch let e as RecipeError { throw WorkbenchError(e.description) }
        guard let basePath = o.checkpoint ?? recipe.base else {
            throw WorkbenchError("\(o.recipe): no base checkpoint: give CHECKPOINT on the command line or 'base' in the recipe")
        }
        guard let output = o.output ?? recipe.output else {
            throw WorkbenchError("\(o.recipe): no output path: give -o OUT.h5 or 'output' in the recipe")
        }
        // Before any stage runs: the output can be written, and it is not the base.
        try checkOutput(output, inputs: [("base checkpoint", basePath), ("recipe", o.recipe)], force: o.force)
        let session = try Session(checkpoint: basePath, cacheDirectory: o.cacheDirectory, progress: o.progress)
        let r = try session.run(recipe, label: o.recipe, statePrefix: output, resume: o.resume, killAfterStep: o.killAfterStep)
        let report = try session.write(r, recipe: recipe, recipePath: o.recipe, output: output, started: started)
        for p in r.statePaths { try? FileManager.default.removeItem(atPath: p) }
        return report
    }
}
