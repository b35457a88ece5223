import Diagnostics
import Foundation
import JSONKeys
import SafeFiles
import Model
import TensorCore
import Training

/// A compression recipe: a JSON file naming a base checkpoint, calibration data, ordered stages and an
/// output path. Decoding is strict: every object rejects keys it does not know, and every error names the
/// recipe file, the stage and the key. See recipes/README.md for the format.
public struct Recipe {
    /// The `format` this version reads.
    public static let format = 1

    public struct Calibration: Codable, Equatable, Sendable {
        /// Text file the calibration windows are drawn from (tokenized with the base checkpoint's tokenizer).
        public var text = "data/wiki.train.txt"
        public var samples = 32
        public var window = 256
        public var seed: UInt64 = 0
        public init() {}
    }

    public struct Evaluation: Codable, Equatable, Sendable {
        public var text = "data/wiki.test.txt"
        public var window = 2048
        /// Score only the first N tokens (nil: the whole text).
        public var tokens: Int? = nil
        /// The perplexity protocol: "pinned" (nil, the default) or "llamacpp" (`PerplexityProtocol.Kind`).
        public var `protocol`: String? = nil
        /// Whether eval stages measure the divergence from the base (nil: yes), and the top-k of the base reference
        /// (nil: the evaluator's default, `BaseReference.defaultTopK`). Unset keys stay out of cache keys.
        public var kld: Bool? = nil
        /// The base reference's kind: "hidden" (nil, the default: the base's hidden states, exact) or "topk".
        public var reference: String? = nil
        public var topK: Int? = nil
        public static let protocols = ["pinned", "llamacpp"]
        public init() {}
    }


    /// The file it was read from, and its JSON as read (kept verbatim in the output's history).
    public var path: String
    public var json: JSONValue
    public var name: String?
    public var description: String?
    public var base: String?
    public var output: String?
    public var calibration: Calibration
    public var evaluation: Evaluation
    /// Precision of the model's matrix products in every stage ("precision": "fp32" or "bf16"; nil: unset, fp32).
    /// The base's own figures (its PPL and reference) are always float32 (`MatrixProduct`).
    public var precision: Precision?
    /// Stages in order, each with its name and its settings' JSON (every key but "stage").
    public var stages: [(name: String, settings: JSONValue, stage: any RecipeStage)]
    /// The linear-weight representations the stages were checked against (the base's).
    public private(set) var baseKinds: Set<WeightKind>

    /// Reads and decodes a recipe file.
    public static func read(_ path: String, registry: StageRegistry,
                            baseKinds: Set<WeightKind> = [.dense]) throws -> Recipe {
        let data: Data
        data = try SafeFiles.read(path, role: "recipe (JSON)", limit: 1 << 24)
        return try Recipe(json: strictJSON(data, path: path), path: path, registry: registry, baseKinds: baseKinds)
    }

    /// Decodes a recipe and checks its stage order against a base holding `baseKinds` (a dense base unless
    /// told; `check(baseKinds:)` re-checks against the real base once it is read).
    public init(json: JSONValue, path: String, registry: StageRegistry, baseKinds: Set<WeightKind> = [.dense]) throws {
        self.path = path
        self.json = json
        self.baseKinds = baseKinds
        let o = try StrictObject(json, at: path, context: ErrorContext(file: path))
        let format = try o.int("format")
        guard format == Self.format else {
            throw o.fail("format", "\(format) is not supported (this version reads format \(Self.format))",
                         expected: "\(Self.format)", found: "\(format)")
        }
        name = try o.optionalString("name")
        description = try o.optionalString("description")
        base = try o.optionalString("base")
        output = try o.optionalString("output")
        precision = try o.has("precision")
            ? Precision(rawValue: o.string("precision", oneOf: Precision.allCases.map(\.rawValue))) : nil

        calibration = Calibration()
        let hasCalibration = o.has("calibration")
        if let c = try o.object("calibration") {
            calibration.text = try c.string("text", default: calibration.text)
            calibration.samples = try c.int("samples", default: calibration.samples, in: 1...100_000)
            calibration.window = try c.int("window", default: calibration.window, in: 2...8192)
            calibration.seed = UInt64(try c.int("seed", default: 0, in: 0...Int.max))
            try c.finish()
        }
        evaluation = Evaluation()
        if let e = try o.object("eval") {
            evaluation.text = try e.string("text", default: evaluation.text)
            if e.has("protocol") {
                let p = try e.string("protocol")
                guard Evaluation.protocols.contains(p) else {
                    let known = Evaluation.protocols.joined(separator: ", ")
                    throw RecipeError(at: path, "'eval.protocol': expected one of \(known), found '\(p)'",
                                      ErrorContext(file: path, key: "eval.protocol", expected: "one of \(known)",
                                                   found: "'\(p)'"))
                }
                evaluation.protocol = p
            }
            // llama.cpp's context is 512 unless told.
            evaluation.window = try e.int("window",
                                          default: evaluation.protocol == "llamacpp" ? 512 : evaluation.window,
                                          in: 2...8192)
            if evaluation.protocol == "llamacpp" && evaluation.window < 4 {
                throw RecipeError(at: path,
                                  "'eval.window': llama.cpp's protocol needs at least 4, found \(evaluation.window)",
                                  ErrorContext(file: path, key: "eval.window", expected: "at least 4",
                                               found: "\(evaluation.window)"))
            }
            if e.has("kld") { evaluation.kld = try e.bool("kld") }
            if e.has("reference") { evaluation.reference = try e.string("reference", oneOf: ["hidden", "topk"]) }
            evaluation.topK = try e.optionalInt("top_k", in: 1...(1 << 20))
            if evaluation.topK != nil && evaluation.reference != "topk" {
                throw RecipeError("\(path): 'eval.top_k' is for \"reference\": \"topk\" (the default reference keeps " +
                                  "the base's hidden states)")
            }
            evaluation.tokens = try e.optionalInt("tokens", in: 2...Int.max)
            try e.finish()
        }

        guard let list = try o.array("stages"), !list.isEmpty else {
            throw o.fail("stages", "required (a non-empty array of stage objects)",
                         expected: "a non-empty array of stage objects", found: "nothing")
        }
        try o.finish()
        stages = []
        for (i, entry) in list.enumerated() {
            guard let kind = entry.objectValue?["stage"]?.stringValue else {
                let known = registry.names.joined(separator: ", ")
                throw RecipeError(at: "\(path), stage \(i + 1)", "'stage': required (a string: one of \(known))",
                                  ErrorContext(file: path, stage: i + 1, key: "stage", expected: "one of \(known)"))
            }
            let s = try StrictObject(entry, at: "\(path), stage \(i + 1) (\(kind))",
                                     context: ErrorContext(file: path, stage: i + 1, stageName: kind))
            s.skip("stage")
            var settings = entry.objectValue ?? [:]
            settings["stage"] = nil
            let stage: any RecipeStage
            do { stage = try registry.make(kind, config: s) } catch { throw error.adding(s.context) }
            if stage.needs.contains(.calibration) && !hasCalibration {
                throw RecipeError(
                    at: s.location, "needs calibration data; add a 'calibration' object (text, samples, window, seed)",
                    s.context)
            }
            if let last = stages.last, type(of: last.stage).isTerminal, !type(of: stage).isTerminal {
                throw RecipeError(
                    at: s.location, "comes after the '\(last.name)' stage \(i); '\(last.name)' writes the finished "
                        + "model, so it must come after every other stage (several may end a recipe)", s.context)
            }
            stages.append((kind, .object(settings), stage))
        }
        try check(baseKinds: baseKinds)
    }

    /// Follows the representations through the stages, refusing the first stage given one it does not
    /// accept; returns the representations of the result.
    @discardableResult
    public mutating func check(baseKinds: Set<WeightKind>) throws -> Set<WeightKind> {
        self.baseKinds = baseKinds
        var kinds = baseKinds
        for (i, entry) in stages.enumerated() {
            let t = type(of: entry.stage)
            let refused = kinds.subtracting(t.accepts)
            guard refused.isEmpty else {
                let before = i == 0 ? "the base checkpoint" : "stage \(i) (\(stages[i - 1].name))"
                let found = refused.sorted().map(\.rawValue).joined(separator: ", ")
                let accepted = t.accepts.sorted().map(\.rawValue).joined(separator: ", ")
                throw RecipeError(
                    at: "\(path), stage \(i + 1) (\(entry.name))",
                    "cannot take \(found) weights, which \(before) leaves; '\(entry.name)' accepts \(accepted) "
                        + "(reorder the stages: quantization comes last, only eval may follow it)",
                    ErrorContext(file: path, stage: i + 1, stageName: entry.name, expected: accepted, found: found))
            }
            if let need = entry.stage.requires, kinds.isDisjoint(with: need.anyOf) {
                let before = i == 0 ? "the base checkpoint" : "stage \(i) (\(stages[i - 1].name))"
                throw RecipeError(at: "\(path), stage \(i + 1) (\(entry.name))",
                                  "\(need.reason), but \(before) leaves none (\(need.hint))",
                                  ErrorContext(file: path, stage: i + 1, stageName: entry.name))
            }
            kinds = entry.stage.produces(from: kinds)
        }
        return kinds
    }
}

extension Recipe.Calibration {
    /// `samples` windows of `window` tokens from `tokens`, starting at positions drawn from `seed` (uniform
    /// over every start that fits; deterministic on every platform).
    public func windows(from tokens: [Int32], source: String) throws -> [[Int32]] {
        guard tokens.count >= window else {
            throw RecipeError("\(source): \(tokens.count) tokens, fewer than one calibration window of \(window)")
        }
        var rng = SplitMix64(seed: seed)
        let span = UInt64(tokens.count - window + 1)
        return (0..<samples).map { _ in
            let start = Int(rng.next() % span)
            return Array(tokens[start..<(start + window)])
        }
    }
}
