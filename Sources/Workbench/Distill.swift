import Checkpoint
import Evaluation
import Diagnostics
import Foundation
import Model
import Recipes
import TensorCore
import Training

/// Inputs of `compress distill` beyond the loop's own settings.
public struct DistillOptions {
    public var teacher: String
    public var student: String
    public var output: String
    public var config = DistillConfig()
    /// Training and test text (tokenized with the teacher's tokenizer).
    public var trainText = "data/wiki.train.txt"
    public var testText = "data/wiki.test.txt"
    public var evalWindow = 2048
    /// Score only the first N test tokens (nil = the whole split); 0 skips evaluation.
    public var evalTokens: Int? = nil
    /// Also measure the student before training.
    public var evalBefore = true
    public var logEvery = 10
    /// Save the training state every N steps (0 = never).
    public var saveEvery = 50
    /// Training-state file (default: OUTPUT.state.h5).
    public var statePath: String? = nil
    public var resume = false
    /// Testing aid: SIGKILL this process right after step N (simulates a crash).
    public var killAfterStep: Int? = nil
    public var progress = true
    /// Allow the output to be the student or the teacher.
    public var force = false
    /// Train the student's factorized weights with DSFormer's Straight-Through Factorizer (a dense latent S̃,
    /// its top-s entries per column in the forward); without it they train on their fixed sparse support.
    public var stf = false

    public init(teacher: String, student: String, output: String) {
        self.teacher = teacher; self.student = student; self.output = output
    }
}

/// What `compress distill` reports.
public struct DistillReport: Codable {
    public var teacher: String
    public var student: String
    public var output: String
    public var steps: Int
    public var resumedFrom: Int?
    public var trainTokens: Int
    public var tokensPerStep: Int
    public var seconds: Double
    public var tokensPerSecond: Double
    public var firstLoss: Double
    public var finalLoss: Double
    public var teacherPpl: Double?
    public var studentPplBefore: Double?
    public var studentPpl: Double?
    /// teacher PPL / student PPL (1 = the student matches its teacher).
    public var retention: Double?
    public var retentionBefore: Double?
    public var evalTokens: Int?
    /// Whether the evaluations used the BOS protocol (the teacher's tokenizer adds BOS; `PerplexityProtocol`).
    public var evalBos: Bool?
    public var studentParameters: Int
    public var teacherParameters: Int
    public var peakResidentBytes: Int
    public var blasCore: String
    /// The matrix products' precision and what ran them (`MatrixProduct.kernels`).
    public var precision: String
    public var kernels: String
    public var config: DistillConfig
    public var log: [StepStats]
}

/// The history entry `compress distill` appends to the student's history in the checkpoint it writes.
public struct DistillHistoryEntry: Codable {
    /// "distill".
    public var kind: String
    /// The teacher's and the student's checkpoint paths.
    public var teacher: String
    public var student: String
    public var steps: Int
    /// Training tokens of all steps.
    public var tokens: Int
    /// Whether factorized weights trained through the Straight-Through Factorizer.
    public var stf: Bool
    /// The `DistillConfig` as `encodeJSON` writes it.
    public var config: JSONValue
    /// The last step's loss (null: no step ran).
    public var finalLoss: Nullable<Double>
}

/// The history entry of a checkpoint with decoder layers dropped (`dropLayers`).
public struct DropLayersHistoryEntry: Codable {
    /// "drop-layers".
    public var kind: String
    /// The checkpoint they were dropped from, and their indices there.
    public var source: String
    public var dropped: [Int]
}

extension Workbench {
    /// Distills `options.student` from `options.teacher` and writes the trained student atomically.
    public static func distill(_ o: DistillOptions) throws -> DistillReport {
        try checkOutput(o.output, inputs: [("student", o.student), ("teacher", o.teacher)], force: o.force)
        let teacherCkpt = try Checkpoint.read(o.teacher)
        let studentCkpt = try Checkpoint.read(o.student)
        guard teacherCkpt.tokenizer == nil || studentCkpt.tokenizer == nil
            || teacherCkpt.tokenizer == studentCkpt.tokenizer else {
            throw WorkbenchError("\(o.student): its tokenizer differs from the teacher's (\(o.teacher)); " +
                                 "distillation needs one vocabulary")
        }
        let tok = try tokenizer(teacherCkpt.tokenizer ?? studentCkpt.tokenizer, path: o.teacher)
        let evaluating = o.evalTokens != 0
        let scoring = evaluating ? try perplexityProtocol(teacherCkpt.tokenizer ?? studentCkpt.tokenizer,
                                                          path: o.teacher) : .noBOS
        let train = tok.encode(try readText(o.trainText))
        try requireTokens(train, from: o.trainText, needed: o.config.window + 1,
                          for: "one training window of \(o.config.window) + 1")
        let statePath = o.statePath ?? o.output + ".state.h5"
        // The same stage `compress apply` runs for a recipe's distill stage, prepared and driven the same way.
        let stage = DistillStage(config: o.config, text: o.trainText, saveEvery: o.saveEvery, logEvery: o.logEvery,
                                 stf: o.stf)
        let prepared: TrainingRun
        do {
            prepared = try stage.prepare(model: studentCkpt.model, teacher: teacherCkpt.model, trainTokens: train,
                                         context: PassContext())
        } catch { throw error.adding(place: "distill") }
        guard let distiller = prepared.distiller else { preconditionFailure("a distill stage always trains") }

        let test: [Int32] = evaluating ? tok.encode(try readText(o.testText)) : []
        func ppl(_ model: DecoderModel, _ label: String, _ naming: String) throws -> Double {
            try measurePPL(model, tokens: test, source: o.testText, window: o.evalWindow, protocol: scoring,
                           maxTokens: o.evalTokens,
                           label: label, naming: naming, progress: o.progress)
        }
        // Before-training PPL of the student: measured on a fresh start (a resumed run has trained weights).
        let fresh = !(o.resume && FileManager.default.fileExists(atPath: statePath))
        if o.resume && !FileManager.default.fileExists(atPath: statePath) {
            throw WorkbenchError("no training state to resume from", ErrorContext(file: statePath))
        }
        let before = evaluating && o.evalBefore && fresh
            ? try ppl(studentCkpt.model, "student before", "student \(o.student) before training") : nil

        let c = o.config, tokensPerStep = c.batch * c.window * c.accumulation
        let trainedRun = try Workbench.train(distiller, statePath: statePath, saveEvery: o.saveEvery,
                                             logEvery: o.logEvery, resume: o.resume ? .required : .no,
                                             progress: o.progress, label: nil,
                                             killAfterStep: o.killAfterStep)
        let resumedFrom = trainedRun.resumedFrom, seconds = trainedRun.seconds
        let firstStep = resumedFrom ?? 0

        // STF: S = P_s(S̃) of the final latent, s nonzeros per column again.
        let trained: DecoderModel
        do { trained = try prepared.finish().model } catch { throw error.adding(place: "distill") }
        // Write the student with its lineage, then drop the state file (the run is complete).
        var history = studentCkpt.history
        history.append(try JSONValue(encoding: DistillHistoryEntry(
            kind: "distill", teacher: o.teacher, student: o.student, steps: c.steps, tokens: c.steps * tokensPerStep,
            stf: o.stf, config: (try? JSONValue.parse(try encodeJSON(c))) ?? .null,
            finalLoss: Nullable(distiller.log.last?.loss))))
        try Checkpoint(model: trained, tokenizer: studentCkpt.tokenizer, history: history)
            .write(to: o.output)
        // The state goes only once the output reads back whole and finite.
        try verifyWritten(o.output, keeping: [statePath].filter { FileManager.default.fileExists(atPath: $0) })
        if FileManager.default.fileExists(atPath: statePath) { try? FileManager.default.removeItem(atPath: statePath) }

        let teacherPPL = evaluating ? try ppl(teacherCkpt.model, "teacher", "teacher \(o.teacher)") : nil
        let studentPPL = evaluating ? try ppl(trained, "student after", "trained student \(o.output), written") : nil
        return DistillReport(
            teacher: o.teacher, student: o.student, output: o.output, steps: c.steps, resumedFrom: resumedFrom,
            trainTokens: train.count, tokensPerStep: tokensPerStep, seconds: seconds,
            tokensPerSecond: Double((c.steps - firstStep) * tokensPerStep) / max(seconds, 1e-9),
            firstLoss: distiller.log.first?.loss ?? .nan, finalLoss: distiller.log.last?.loss ?? .nan,
            teacherPpl: teacherPPL, studentPplBefore: before, studentPpl: studentPPL,
            retention: teacherPPL.flatMap { t in studentPPL.map { t / $0 } },
            retentionBefore: teacherPPL.flatMap { t in before.map { t / $0 } },
            evalTokens: evaluating ? min(o.evalTokens ?? test.count, test.count) : nil,
            evalBos: evaluating ? scoring.bos != nil : nil,
            studentParameters: trained.parameterCount, teacherParameters: teacherCkpt.model.parameterCount,
            peakResidentBytes: peakResidentBytes(), blasCore: BLAS.coreName,
            precision: MatrixProduct.precision.rawValue, kernels: MatrixProduct.kernels, config: c, log: distiller.log)
    }

    /// A checkpoint with the given decoder layers removed (their weights dropped, the rest renumbered).
    public static func dropLayers(checkpoint path: String, drop: [Int], output: String,
                                  force: Bool = false) throws -> (before: Int, after: Int, layers: Int) {
        try checkOutput(output, inputs: [("input checkpoint", path)], force: force)
        let ckpt = try Checkpoint.read(path)
        let m = ckpt.model
        guard Set(drop).count == drop.count else { throw WorkbenchError("--drop: a layer is listed twice") }
        let model: DecoderModel
        do { model = try m.removingLayers(Set(drop)) } catch { throw error.adding(place: "--drop") }
        var history = ckpt.history
        let entry = DropLayersHistoryEntry(kind: "drop-layers", source: path, dropped: drop)
        history.append(try JSONValue(encoding: entry))
        try Checkpoint(model: model, tokenizer: ckpt.tokenizer, history: history).write(to: output)
        return (m.parameterCount, model.parameterCount, model.layers.count)
    }
}

extension Workbench {
    /// Perplexity of `model` and its divergence from the base of `reference` (made with these tokens and settings),
    /// with progress lines labelled `label`; errors name the model by `naming` (a non-finite figure is an error, never
    /// a result).
    static func measureDivergence(_ model: DecoderModel, reference: BaseReference, base: DecoderModel, tokens: [Int32],
                                  source: String,
                                  label: String, naming: String, progress: Bool) throws -> (Double, DivergenceReport) {
        let start = Date()
        var shown = start
        do {
            let (d, r) = try Divergence.compare(model: model, reference: reference, base: base,
                                                tokens: tokens) { done, total in
                guard progress, Date().timeIntervalSince(shown) > 5 || done == total else { return }
                shown = Date()
                let el = Date().timeIntervalSince(start)
                progressLine(String(format: "eval %@: window %d/%d  ETA %.0fs", label, done, total,
                                    el / Double(done) * Double(total - done)))
            }
            return (r.ppl, d)
        } catch { throw error.adding(ErrorContext(file: source), place: source, note: naming) }
    }

    /// Perplexity of `model` on `tokens` (the ids of the text file `source`, named in errors) under `protocol` (the
    /// checkpoint's: `perplexityProtocol(_:path:)`), with progress lines labelled `label`; errors name the model by
    /// `naming` (a non-finite perplexity is an error, never a result).
    static func measurePPL(_ model: DecoderModel, tokens: [Int32], source: String, window: Int,
                           protocol p: PerplexityProtocol,
                           maxTokens: Int?, label: String, naming: String, progress: Bool) throws -> Double {
        let start = Date()
        var shown = start
        let r: PerplexityResult
        do {
            r = try Perplexity.evaluate(model: model, tokens: tokens, window: window, protocol: p,
                                        maxTokens: maxTokens) { done, total in
                guard progress, Date().timeIntervalSince(shown) > 5 || done == total else { return }
                shown = Date()
                let el = Date().timeIntervalSince(start)
                progressLine(String(format: "eval %@: window %d/%d  ETA %.0fs", label, done, total,
                                    el / Double(done) * Double(total - done)))
            }
        } catch { throw error.adding(ErrorContext(file: source), place: source, note: naming) }
        if progress {
            progressLine(String(format: "eval %@: ppl %.4f (%d tokens%@)", label, r.ppl, r.tokens,
                                r.bos ? ", each window BOS + W-1" : ""))
        }
        return r.ppl
    }

    /// Runs `distiller` to its configured step count with progress lines (step, loss terms, lr, |g|, tok/s,
    /// ETA), saving its state every `saveEvery` steps; returns the wall time of the steps run. A step whose loss or
    /// gradient norm is not finite, or trained tensors that are not sound (`Distiller.unsoundValue`) at a save or
    /// at the end, stop the run with an error naming the step and the training state that is kept, if any.
    static func trainLoop(_ distiller: Distiller, saveEvery: Int, statePath: String, logEvery: Int, progress: Bool,
                          killAfterStep: Int? = nil) throws -> Double {
        let c = distiller.config
        let start = Date(), firstStep = distiller.step
        func stop(_ step: Int, _ what: String) -> WorkbenchError {
            stopped(at: step, what, statePath: statePath, saveEvery: saveEvery)
        }
        while distiller.step < c.steps {
            let s = distiller.trainStep()
            guard s.loss.isFinite, s.gradNorm.isFinite else {
                throw stop(s.step, "the loss is \(s.loss) and the gradient norm \(s.gradNorm) (expected finite values)")
            }
            if saveEvery > 0 && s.step % saveEvery == 0 && s.step < c.steps {
                if let bad = distiller.unsoundValue() { throw stop(s.step, bad) }
                do { try distiller.saveState(to: statePath) } catch { throw error.adding(place: "distill") }
            }
            if progress && (s.step % max(logEvery, 1) == 0 || s.step == c.steps || s.step == firstStep + 1) {
                progressLine(stepLine(s, config: c, done: s.step - firstStep, elapsed: Date().timeIntervalSince(start)))
            }
            if let k = killAfterStep, s.step == k { kill(getpid(), SIGKILL) }
        }
        if let bad = distiller.unsoundValue() { throw stop(distiller.step, bad) }
        return Date().timeIntervalSince(start)
    }

    /// The error that stops training at `step`, naming the training state that is kept (only one that exists).
    static func stopped(at step: Int, _ what: String, statePath: String, saveEvery: Int) -> WorkbenchError {
        let never = saveEvery > 0 ? "the first save would have come at step \(saveEvery)" : "--save-every 0"
        let kept = FileManager.default.fileExists(atPath: statePath)
            ? "the last saved training state \(statePath) is kept (--resume continues from it)"
            : "no training state was saved (\(never))"
        return WorkbenchError("distill: step \(step): \(what); training stopped, nothing written, \(kept) — lower the "
            + "learning rate or check the inputs")
    }

    /// The progress line of step `s`: loss terms, lr, |g|, tokens per second and ETA.
    static func stepLine(_ s: StepStats, config c: DistillConfig, done: Int, elapsed: Double) -> String {
        let tps = Double(done * c.batch * c.window * c.accumulation) / elapsed
        let eta = elapsed / Double(done) * Double(c.steps - s.step)
        var parts = String(format: "step %d/%d  loss %.4f", s.step, c.steps, s.loss)
        if c.klWeight > 0 { parts += String(format: "  kl %.4f", s.kl) }
        if c.ceWeight > 0 { parts += String(format: "  ce %.4f", s.ce) }
        if !c.intermediate.isEmpty { parts += String(format: "  int %.4f", s.intermediate) }
        for (name, value) in (s.extras ?? [:]).sorted(by: { $0.key < $1.key }) {
            parts += String(format: "  %@ %.4g", name, value)
        }
        return parts + String(format: "  lr %.2e  |g| %.3f  %.0f tok/s  ETA %@", s.lr, s.gradNorm, tps,
                              formatDuration(eta))
    }

    /// Re-opens the checkpoint just written at `path` and checks every tensor (quantized ones dequantized, one at a
    /// time) finite; throws naming the first that is not, and `keeping` (training states kept because of it).
    static func verifyWritten(_ path: String, keeping: [String]) throws {
        let kept = keeping.isEmpty ? "" : "; kept: " + keeping.joined(separator: ", ")
        let ckpt: Checkpoint
        do { ckpt = try Checkpoint.read(path) } catch {
            throw WorkbenchError("the checkpoint just written does not read back (\(error))\(kept)",
                ErrorContext(file: path))
        }
        let m = ckpt.model
        for w in m.weights {
            let t: Tensor
            switch w.weight {
            case .vector(let v): t = v
            case .matrix(let l): t = l.denseView ?? l.dequantized()
            }
            if let (i, x) = firstUnsoundValue(t) {
                throw WorkbenchError("the checkpoint just written holds \(x) in '\(m.config.name(w.id))' "
                    + "at index \(i) (expected finite values)\(kept)", ErrorContext(file: path))
            }
        }
    }
}

/// "1h02m", "3m05s", "42s".
public func formatDuration(_ s: Double) -> String {
    guard s.isFinite else { return "?" }
    let t = Int(s.rounded())
    if t >= 3600 { return String(format: "%dh%02dm", t / 3600, (t % 3600) / 60) }
    if t >= 60 { return String(format: "%dm%02ds", t / 60, t % 60) }
    return "\(t)s"
}
