import Checkpoint
import Evaluation
import Foundation
import Model
import Passes
import Quantization
import Recipes
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

extension LlamaModel {
    /// Bytes of the weights as stored (Float32).
    var storageBytes: Int { namedTensors.reduce(0) { $0 + $1.tensor.bytes } }
}

extension Workbench {
    /// Runs a recipe's stages on its base checkpoint and writes the result (atomically) with the recipe and
    /// every stage report appended to its history.
    public static func apply(_ o: ApplyOptions) throws -> ApplyReport {
        let started = Date()
        let say: (String) -> Void = { if o.progress { progressLine($0) } }
        let recipe: Recipe
        do { recipe = try Recipe.read(o.recipe, registry: .standard()) } catch let e as RecipeError { throw WorkbenchError(e.description) }
        guard let basePath = o.checkpoint ?? recipe.base else {
            throw WorkbenchError("\(o.recipe): no base checkpoint: give CHECKPOINT on the command line or 'base' in the recipe")
        }
        guard let output = o.output ?? recipe.output else {
            throw WorkbenchError("\(o.recipe): no output path: give -o OUT.h5 or 'output' in the recipe")
        }
        let ckpt = try Checkpoint.read(basePath)
        let hasPass = recipe.stages.contains { if case .pass = $0.stage { return true }; return false }
        if hasPass && !ckpt.masks.isEmpty {
            throw WorkbenchError("\(basePath): holds sparsity masks; the recipe's passes change shapes and do not carry masks yet")
        }
        let tok = try tokenizer(ckpt.tokenizer, path: basePath)
        let baseHash: String
        do { baseHash = try fileContentHash(basePath) } catch let e as RecipeError { throw WorkbenchError(e.description) }

        // Calibration windows, drawn once for every pass that needs them.
        let needsCalibration = recipe.stages.contains { if case .pass(let p) = $0.stage { return type(of: p).needs.contains(.calibration) }; return false }
        var calibration: [[Int32]] = []
        if needsCalibration {
            let c = recipe.calibration
            do { calibration = try c.windows(from: tok.encode(try readText(c.text)), source: c.text) } catch let e as RecipeError {
                throw WorkbenchError(e.description)
            }
            say("calibration: \(c.samples) windows of \(c.window) tokens from \(c.text) (seed \(c.seed))")
        }

        // Base PPL, measured once per base checkpoint and eval settings (cached like calibration statistics).
        let evaluating = recipe.stages.contains { if case .eval = $0.stage { return true }; return false }
        let e = recipe.evaluation
        let test: [Int32] = evaluating ? tok.encode(try readText(e.text)) : []
        var basePPL: Double? = nil
        if evaluating {
            let scope: JSONValue = .object(["base": .string(baseHash), "eval": jsonValue(e)])
            let cache = o.cacheDirectory.map { StatsCache(directory: $0, scope: scope) }
            let compute = { try measurePPL(ckpt.model, tokens: test, window: e.window, maxTokens: e.tokens, label: "base", progress: o.progress) }
            basePPL = try cache.map { try $0.value("ppl", settings: .object([:]), compute: compute) } ?? compute()
            if cache?.hits.isEmpty == false { say(String(format: "eval base: ppl %.4f (cached)", basePPL!)) }
        }

        var model = ckpt.model
        // Stored (quantized) forms of tensors: from the base, or from a quantizing pass.
        var quantized = ckpt.quantized
        func refuseAfterQuantization(_ place: String) throws {
            guard quantized.isEmpty else {
                throw WorkbenchError("\(place): the model is quantized at this point (\(quantized.count) tensors stored in low-bit formats); passes and distillation cannot change quantized weights; put the quantization stage last (only eval stages may follow)")
            }
        }
        var reports: [StageReport] = []
        var lastPPL: Double? = nil
        for (i, entry) in recipe.stages.enumerated() {
            let label = "stage \(i + 1)/\(recipe.stages.count) (\(entry.name))"
            let place = "\(o.recipe), stage \(i + 1) (\(entry.name))"  // as recipe decoding errors name it
            say("\(label): start, \(model.parameterCount) parameters")
            let t0 = Date()
            let before = (params: model.parameterCount, bytes: storedBytes(model, quantized))
            var diagnostics: JSONValue = .object([:])
            var ppl: Double? = nil
            var cacheUse: StatsCache? = nil
            switch entry.stage {
            case .pass(let pass):
                // Everything the pass's input depends on: the base, the calibration data, the stages before it.
                let scope: JSONValue = .object([
                    "base": .string(baseHash), "calibration": jsonValue(recipe.calibration),
                    "stages_before": .array(recipe.stages.prefix(i).map { .object(["stage": .string($0.name), "settings": $0.settings]) }),
                ])
                cacheUse = o.cacheDirectory.map { StatsCache(directory: $0, scope: scope) }
                let context = PassContext(calibration: calibration, seed: recipe.calibration.seed, cache: cacheUse) { say("\(label): \($0)") }
                try refuseAfterQuantization(place)
                do {
                    if let q = pass as? any QuantizingPass {
                        let r = try q.quantize(on: model, context: context)
                        (model, diagnostics, quantized) = (r.model, r.diagnostics, r.quantized)
                    } else {
                        (model, diagnostics) = try pass.run(on: model, context: context)
                    }
                } catch let err as RecipeError {
                    throw WorkbenchError("\(place): \(err.description)")
                } catch let err as ConfigError {
                    throw WorkbenchError("\(place): \(err.description)")
                }
            case .distill(let d):
                try refuseAfterQuantization(place)
                let statePath = output + ".stage\(i + 1).state.h5"
                let distiller: Distiller
                do {
                    distiller = try Distiller(teacher: ckpt.model, student: model, config: d.config, trainTokens: tok.encode(try readText(d.text)))
                } catch let err as ConfigError { throw WorkbenchError("\(place): \(err.description)") }
                if o.resume && FileManager.default.fileExists(atPath: statePath) {
                    do { try distiller.loadState(from: statePath) } catch let err as ConfigError { throw WorkbenchError(err.description) }
                    say("\(label): resumed from \(statePath) at step \(distiller.step)")
                }
                let first = distiller.step
                let seconds = try trainLoop(distiller, saveEvery: d.saveEvery, statePath: statePath, logEvery: d.logEvery, progress: o.progress,
                                            killAfterStep: o.killAfterStep)
                if FileManager.default.fileExists(atPath: statePath) { try? FileManager.default.removeItem(atPath: statePath) }
                model = distiller.student
                let c = d.config, tokensPerStep = c.batch * c.window * c.accumulation
                diagnostics = .object([
                    "steps": .int(c.steps), "resumed_from": first > 0 ? .int(first) : .null, "tokens": .int(c.steps * tokensPerStep),
                    "tokens_per_second": .double(Double((c.steps - first) * tokensPerStep) / max(seconds, 1e-9)),
                    "first_loss": .double(distiller.log.first?.loss ?? .nan), "final_loss": .double(distiller.log.last?.loss ?? .nan),
                    "log": jsonValue(distiller.log),
                ])
            case .eval:
                ppl = try measurePPL(model, tokens: test, window: e.window, maxTokens: e.tokens, label: label, progress: o.progress)
                lastPPL = ppl
            }
            let report = StageReport(
                index: i + 1, stage: entry.name, settings: entry.settings,
                parametersBefore: before.params, parametersAfter: model.parameterCount,
                bytesBefore: before.bytes, bytesAfter: storedBytes(model, quantized), seconds: Date().timeIntervalSince(t0),
                ppl: ppl, retention: ppl.flatMap { p in basePPL.map { $0 / p } },
                cacheHits: cacheUse?.hits, cacheMisses: cacheUse?.misses, diagnostics: diagnostics)
            reports.append(report)
            say(String(format: "%@: done in %@, %d -> %d parameters", label, formatDuration(report.seconds), before.params, model.parameterCount)
                + (ppl.map { String(format: ", ppl %.4f", $0) } ?? ""))
        }

        var history = ckpt.history
        history.append(.object([
            "kind": .string("apply"), "recipe_path": .string(o.recipe), "recipe": recipe.json, "base": .string(basePath),
            "base_hash": .string(baseHash), "stages": jsonValue(reports),
        ]))
        try Checkpoint(model: model, tokenizer: ckpt.tokenizer, history: history, quantized: quantized).write(to: output)
        return ApplyReport(
            recipe: o.recipe, name: recipe.name, base: basePath, output: output,
            parametersBefore: ckpt.model.parameterCount, parametersAfter: model.parameterCount,
            bytesBefore: storedBytes(ckpt.model, ckpt.quantized), bytesAfter: storedBytes(model, quantized),
            pplBefore: basePPL, pplAfter: lastPPL, retention: basePPL.flatMap { b in lastPPL.map { b / $0 } },
            evalTokens: evaluating ? min(e.tokens ?? test.count, test.count) : nil,
            calibrationTokens: calibration.count * recipe.calibration.window,
            seconds: Date().timeIntervalSince(started), peakResidentBytes: peakResidentBytes(), blasCore: BLAS.coreName,
            stages: reports)
    }
}

/// Bytes of the model's tensors as stored: quantized ones at their packed size, the rest as float32.
func storedBytes(_ model: LlamaModel, _ quantized: [String: QuantizedTensor]) -> Int {
    model.namedTensors.reduce(0) { $0 + (quantized[$1.name]?.bytes ?? $1.tensor.bytes) }
}
