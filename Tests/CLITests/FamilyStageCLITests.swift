import Foundation
import XCTest
@testable import Checkpoint

/// Every recipe stage through `compress apply` on the tiny Qwen2 (q/k/v biases, untied head), Qwen3 (per-head
/// q/k RMSNorm, head_dim 16 ≠ hidden / heads, tied head) and Gemma 3 ((1 + w) norms, post-sublayer norms, q/k
/// norms, one KV head, sliding-window and full layers, embedding × √hidden, tied head) fixtures made by
/// transformers: each stage, followed by an eval, must run, report a finite perplexity, and write a checkpoint of
/// the same family whose biases, q/k norms and post-norms are where the spec says and whose layers keep their
/// types; structural stages must shrink the model.
extension CLITests {
    static let familyStages: [(name: String, json: String, shrinks: Bool)] = [
        ("minitron width", #"{"stage": "minitron", "hidden": 24, "mlp": 48, "round_to": 8}"#, true),
        ("minitron heads", #"{"stage": "minitron", "heads": 2, "round_to": 1}"#, true),
        ("minitron depth", #"{"stage": "minitron", "layers": 1}"#, true),
        ("finercut", #"{"stage": "finercut", "remove": 1}"#, true),
        ("vtrans", #"{"stage": "vtrans", "variant": "fast", "params": 26000, "steps": 2, "batch": 2, "window": 16, "save_every": 0}"#, true),
        ("vtrans faster", #"{"stage": "vtrans", "variant": "faster", "params": 26000, "steps": 2, "batch": 2, "window": 16, "save_every": 0}"#, true),
        ("magnitude", #"{"stage": "magnitude", "pattern": "2:4"}"#, false),
        ("wanda", #"{"stage": "wanda", "sparsity": 0.5}"#, false),
        ("sparsegpt", #"{"stage": "sparsegpt", "pattern": "2:4"}"#, false),
        ("maskllm", #"{"stage": "maskllm", "pattern": "2:4", "prior": "magnitude", "steps": 2, "batch": 2, "window": 16, "save_every": 0}"#, false),
        ("gptq", #"{"stage": "cptquant", "estimator": "none", "allocation": "uniform", "bits_per_weight": 4.5, "group_size": 16, "method": "gptq"}"#, false),
        ("cptquant pmpq", #"{"stage": "cptquant", "estimator": "pmpq", "bits_per_weight": 4, "group_size": 16}"#, false),
        ("cptquant tdmpq", #"{"stage": "cptquant", "estimator": "tdmpq", "bits_per_weight": 4, "group_size": 16}"#, false),
        ("cptquant cmpq", #"{"stage": "cptquant", "estimator": "cmpq", "bits_per_weight": 4, "group_size": 16, "pool_tokens": 4, "cca_dims": 2}"#, false),
        ("cptquant measured", #"{"stage": "cptquant", "estimator": "pmpq", "damage": "measured", "bits_per_weight": 7, "group_size": 16, "widths": [4, 8], "damage_windows": 2, "damage_tokens": 16}"#, false),
        ("dsformer", #"{"stage": "dsformer", "targets": ["mlp"], "parameter_ratio": 0.6, "iterations": 2}"#, true),
        ("lowrank", #"{"stage": "lowrank", "rank": 4}"#, true),
        ("distill", #"{"stage": "distill", "steps": 2, "batch": 2, "window": 16, "save_every": 0}"#, false),
    ]

    /// Stage settings sized for a family's fixture where the shared ones are not: tiny-gemma3 has 3 layers and
    /// 42,496 parameters (the Qwen fixtures 2 layers and about 34,000), so VTrans's budget is 75 % of it, depth
    /// pruning keeps 2 layers, FinerCut removes 2 sublayers. The rest fit every fixture: hidden 32 → 24, MLP 64 → 48,
    /// heads 4 → 2 (within 2 KV groups for Qwen, 1 for Gemma), groups of 16 divide 32 and 64.
    static let familyOverrides: [String: [String: String]] = [
        "gemma3": [
            "minitron depth": #"{"stage": "minitron", "layers": 2}"#,
            "finercut": #"{"stage": "finercut", "remove": 2}"#,
            "vtrans": #"{"stage": "vtrans", "variant": "fast", "params": 32000, "steps": 2, "batch": 2, "window": 16, "save_every": 0}"#,
            "vtrans faster": #"{"stage": "vtrans", "variant": "faster", "params": 32000, "steps": 2, "batch": 2, "window": 16, "save_every": 0}"#,
        ],
    ]

    func testEveryStageOnQwen2AndQwen3() throws {
        try runEveryStage(families: ["qwen2", "qwen3"])
    }

    func testEveryStageOnGemma3() throws {
        try runEveryStage(families: ["gemma3"])
    }

    /// The layers of the base a stage kept, from its report (depth pruning, FinerCut, VTrans); nil: all of them.
    static func keptLayers(_ stage: [String: Any], baseLayers: Int) -> [Int]? {
        let diag = stage["diagnostics"] as? [String: Any]
        if let removed = (diag?["depth"] as? [String: Any])?["removed_layers"] as? [Int] {
            return (0..<baseLayers).filter { !removed.contains($0) }
        }
        if let order = diag?["order"] as? [[String: Any]] {
            let gone = Set(order.compactMap { $0["sublayer"] as? Int })
            return (0..<baseLayers).filter { !(gone.contains(2 * $0) && gone.contains(2 * $0 + 1)) }
        }
        return diag?["layers_kept"] as? [Int]
    }

    func runEveryStage(families: [String]) throws {
        let (dir, text) = try makeRecipeDirectory()
        for family in families {
            let base = fixture("tiny-\(family).h5")
            let baseModel = try Checkpoint.read(base).model
            let baseParams = baseModel.parameterCount
            for (i, shared) in Self.familyStages.enumerated() {
                var stage = shared
                if let json = Self.familyOverrides[family]?[stage.name] { stage.json = json }
                let out = dir.appendingPathComponent("\(family)-\(i).h5").path
                let recipe = dir.appendingPathComponent("\(family)-\(i).json").path
                try """
                {"format": 1, "base": "\(base)",
                 "calibration": {"text": "\(text)", "samples": 3, "window": 16, "seed": 1},
                 "eval": {"text": "\(text)", "window": 32},
                 "stages": [\(stage.json.replacingOccurrences(of: #""stage": "distill""#, with: #""stage": "distill", "text": "\#(text)""#)
                    .replacingOccurrences(of: #""stage": "maskllm""#, with: #""stage": "maskllm", "text": "\#(text)""#)
                    .replacingOccurrences(of: #""stage": "vtrans""#, with: #""stage": "vtrans", "text": "\#(text)""#)), {"stage": "eval"}],
                 "output": "\(out)"}
                """.write(toFile: recipe, atomically: true, encoding: .utf8)
                let r = try launch(["apply", recipe, "--no-cache", "--json"])
                XCTAssertEqual(r.status, 0, "\(family) \(stage.name): \(r.stderr.suffix(1500))")
                guard r.status == 0 else { continue }
                let report = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
                let stages = report?["stages"] as? [[String: Any]]
                let ppl = stages?.last?["ppl"] as? Double
                XCTAssertNotNil(ppl, "\(family) \(stage.name): \(r.stdout.prefix(600))")
                XCTAssertTrue(ppl.map { $0.isFinite && $0 > 1 } ?? false, "\(family) \(stage.name): ppl \(String(describing: ppl))")
                let m = try Checkpoint.read(out).model
                let what = "\(family) \(stage.name)"
                XCTAssertEqual(m.config.family, family, stage.name)
                XCTAssertEqual(m.config.normKind, baseModel.config.normKind, what)
                XCTAssertEqual(m.config.postNorms, baseModel.config.postNorms, what)
                if stage.shrinks { XCTAssertLessThan(m.parameterCount, baseParams, what) }
                let C = m.config.hiddenSize
                for layer in m.layers {
                    if let a = layer.attention {
                        XCTAssertEqual(Set(a.biases.keys), family == "qwen2" ? [.q, .k, .v] : [], what)
                        XCTAssertEqual(a.qNorm != nil && a.kNorm != nil, family != "qwen2", what)
                        XCTAssertEqual(a.qNorm?.count ?? m.config.headDim, m.config.headDim)
                        XCTAssertEqual(a.postNorm?.count, family == "gemma3" ? C : nil, "\(what): attention post-norm")
                    }
                    if let f = layer.mlp {
                        XCTAssertEqual(f.postNorm?.count, family == "gemma3" ? C : nil, "\(what): MLP post-norm")
                    }
                }
                // Kept layers keep their type (full or sliding window), in order.
                let baseTypes = baseModel.config.blocks.map(\.layerType)
                let kept = stages?.first.flatMap { Self.keptLayers($0, baseLayers: baseTypes.count) } ?? Array(baseTypes.indices)
                XCTAssertEqual(m.config.blocks.map(\.layerType), kept.map { baseTypes[$0] }, "\(what): layer types")
                if family == "gemma3" { XCTAssertEqual(Set(baseTypes), [.full, .sliding]) }
            }
        }
    }

    /// FinerCut or VTrans followed by an export, on a family whose server formats hold one size per layer: refused
    /// when the recipe is checked, before any stage runs, naming the recipe, the stage, the family and the reason.
    func testHeterogeneousExportOfQwenIsRefusedWhenTheRecipeIsChecked() throws {
        let (dir, text) = try makeRecipeDirectory()
        for (family, first) in [("qwen2", #"{"stage": "finercut", "remove": 1}"#),
                                ("qwen3", #"{"stage": "vtrans", "params": 26000, "steps": 1, "text": "\#(text)"}"#)] {
            let recipe = dir.appendingPathComponent("het-\(family).json").path, gguf = dir.appendingPathComponent("het-\(family).gguf").path
            try """
            {"format": 1, "base": "\(fixture("tiny-\(family).h5"))",
             "calibration": {"text": "\(text)", "samples": 3, "window": 16, "seed": 1},
             "stages": [\(first), {"stage": "export", "format": "gguf", "output": "\(gguf)"}],
             "output": "\(dir.appendingPathComponent("het-\(family).h5").path)"}
            """.write(toFile: recipe, atomically: true, encoding: .utf8)
            let r = try launch(["apply", recipe, "--json"])
            XCTAssertEqual(r.status, 1, r.stderr)
            for part in ["het-\(family).json", "stage 2 (export)", "heterogeneous \(family) model", "no \(family) server format holds",
                         "minitron"] {
                XCTAssertTrue(r.stdout.contains(part), "missing '\(part)' in \(r.stdout)")
            }
            XCTAssertFalse(r.stderr.contains("stage 1/2"), "refused before any stage ran: \(r.stderr)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: gguf))
        }
    }
}
