import Foundation
import Model
import Recipes
import XCTest
@testable import Import
@testable import Passes
@testable import Training
@testable import Workbench

/// Every pass's report and every history entry is a Codable struct encoded by `JSONValue(encoding:)`; each
/// sample here encodes to the JSONValue the hand-built dictionary it replaced gave (keys, `.int` or `.double`,
/// absent or null), so reports, histories and cache keys read as before.
final class ReportEncodingTests: XCTestCase {
    func check<T: Encodable>(_ value: T, _ expected: JSONValue, file: StaticString = #filePath, line: UInt = #line) {
        let got: JSONValue
        do { got = try JSONValue(encoding: value) } catch { return XCTFail("\(error)", file: file, line: line) }
        XCTAssertEqual(got, expected, "\(T.self): \(got.text)", file: file, line: line)
        // Same keys, same kinds of number: the pretty form (which writes 4.0 and 4 apart) is identical too.
        XCTAssertEqual(got.prettyBytes, expected.prettyBytes, "\(T.self)", file: file, line: line)
    }

    func testOneShotPruningReport() {
        var r = OneShotPruningReport(pattern: "2:4", sparsity: 0.5, density: 1.0, seconds: 2.0, tensors: [
            .init(name: "model.layers.0.mlp.up_proj.weight", bytes: 96, density: 0.5, pattern: "2:4", obsLoss: 3.0),
            .init(name: "model.layers.0.mlp.down_proj.weight", bytes: 128),
        ])
        let tensors: JSONValue = .array([
            .object(["name": .string("model.layers.0.mlp.up_proj.weight"), "bytes": .int(96), "density": .double(0.5),
                     "pattern": .string("2:4"), "obs_loss": .double(3)]),
            .object(["name": .string("model.layers.0.mlp.down_proj.weight"), "bytes": .int(128)]),
        ])
        check(r, .object(["pattern": .string("2:4"), "sparsity": .double(0.5), "density": .double(1),
                          "seconds": .double(2), "tensors": tensors]))
        r.damp = 0.01; r.blockSize = 128; r.calibrationTokens = 48; r.hessianPrecision = "fp32"
        check(r, .object(["pattern": .string("2:4"), "sparsity": .double(0.5), "density": .double(1),
                          "seconds": .double(2), "tensors": tensors, "damp": .double(0.01), "block_size": .int(128),
                          "calibration_tokens": .int(48), "hessian_precision": .string("fp32")]))
    }

    func testFactorizationReports() {
        check(LowRankReport(weights: [.init(layer: 1, projection: "down_proj", rank: 4, parameters: 448,
                                            denseParameters: 3072, relativeError: 0.5)],
                            parameters: 448, denseParameters: 3072, relativeError: 1),
              .object(["weights": .array([.object(["layer": .int(1), "projection": .string("down_proj"),
                                                   "rank": .int(4), "parameters": .int(448),
                                                   "dense_parameters": .int(3072), "relative_error": .double(0.5)])]),
                       "parameters": .int(448), "dense_parameters": .int(3072), "relative_error": .double(1)]))
        let w = DSFormerReport.Weight(layer: 0, projection: "up_proj", rank: 3, nonzeros: 2, parameters: 100,
                                      denseParameters: 200, iterations: 2, relativeError: 0.25,
                                      startRelativeError: 0.5, svdRank: 1, svdRelativeError: 0.75)
        check(DSFormerReport(weights: [w], parameters: 100, denseParameters: 200, relativeError: 0.25,
                             startRelativeError: 0.5, svdRelativeError: 0.75),
              .object(["weights": .array([.object([
                  "layer": .int(0), "projection": .string("up_proj"), "rank": .int(3), "nonzeros": .int(2),
                  "parameters": .int(100), "dense_parameters": .int(200), "iterations": .int(2),
                  "relative_error": .double(0.25), "start_relative_error": .double(0.5), "svd_rank": .int(1),
                  "svd_relative_error": .double(0.75)])]),
                       "parameters": .int(100), "dense_parameters": .int(200), "relative_error": .double(0.25),
                       "start_relative_error": .double(0.5), "svd_relative_error": .double(0.75)]))
    }

    func testFinerCutReport() {
        let order = [FinerCutPass.Removal(sublayer: 3, layer: 1, kind: "mlp", distance: 0.125)]
        check(FinerCutReport(metric: "js", mode: "greedy", candidates: "all", candidateCount: 8, removedCount: 1,
                             removedAttention: 0, removedMlp: 1, layersDroppedEmpty: 0, order: order,
                             rankingComputed: 2, why: "w"),
              .object(["metric": .string("js"), "mode": .string("greedy"), "candidates": .string("all"),
                       "candidate_count": .int(8), "removed_count": .int(1), "removed_attention": .int(0),
                       "removed_mlp": .int(1), "layers_dropped_empty": .int(0),
                       "order": .array([.object(["sublayer": .int(3), "layer": .int(1), "kind": .string("mlp"),
                                                 "distance": .double(0.125)])]),
                       "ranking_computed": .int(2), "why": .string("w")]))
        // The order's cache key.
        check(FinerCutPass.OrderSettings(metric: "js", mode: "greedy", candidates: "all"),
              .object(["metric": .string("js"), "mode": .string("greedy"), "candidates": .string("all")]))
    }

    func testMinitronReport() {
        let target = MinitronPass.Target(hidden: 24, mlp: 48, heads: 4, layers: 2, parameters: 1000)
        var r = MinitronReport(target: target, before: .init(hidden: 32, mlp: 64, heads: 4, layers: 3))
        let base: [String: JSONValue] = [
            "target": .object(["hidden": .int(24), "mlp": .int(48), "heads": .int(4), "layers": .int(2),
                               "parameters": .int(1000)]),
            "before": .object(["hidden": .int(32), "mlp": .int(64), "heads": .int(4), "layers": .int(3)]),
        ]
        check(r, .object(base))
        r.parameterBudget = 1000; r.budgetAxes = ["hidden", "mlp"]
        r.depth = .init(metric: "ppl", removedLayers: [2], why: "d", pplWithoutBlock: [5, 6.5, 4], basePpl: 3,
                        oneMinusCosine: [0.25, 0.5, 0.125])
        r.width = .init(aggregation: .init(sequence: "mean", batch: "l2"), headScores: [[1, 2.5]],
                        keptHeads: [.init(layer: 0, heads: [0, 1])], removedChannels: [7],
                        channelScoreCutoff: 2, neuronsKeptPerLayer: 48, neuronScoreCutoffPerLayer: [0.5], why: "w",
                        postNormKeptEnergy: [0.75])
        var full = base
        full["parameter_budget"] = .int(1000)
        full["budget_axes"] = .array([.string("hidden"), .string("mlp")])
        full["depth"] = .object([
            "metric": .string("ppl"), "removed_layers": .array([.int(2)]), "why": .string("d"),
            "ppl_without_block": .array([.double(5), .double(6.5), .double(4)]), "base_ppl": .double(3),
            "one_minus_cosine": .array([.double(0.25), .double(0.5), .double(0.125)]),
        ])
        full["width"] = .object([
            "aggregation": .object(["sequence": .string("mean"), "batch": .string("l2")]),
            "head_scores": .array([.array([.double(1), .double(2.5)])]),
            "kept_heads": .array([.object(["layer": .int(0), "heads": .array([.int(0), .int(1)])])]),
            "removed_channels": .array([.int(7)]), "channel_score_cutoff": .double(2),
            "neurons_kept_per_layer": .int(48), "neuron_score_cutoff_per_layer": .array([.double(0.5)]),
            "why": .string("w"), "post_norm_kept_energy": .array([.double(0.75)]),
        ])
        check(r, .object(full))
    }

    func testMaskLLMReport() {
        let prior: JSONValue = .object(["pattern": .string("2:4"), "seconds": .double(1)])
        check(MaskLLMReport(pattern: "2:4", prior: "magnitude", priorSeconds: 1, weights: 7, steps: 0,
                            priorDiagnostics: prior),
              .object(["pattern": .string("2:4"), "prior": .string("magnitude"), "prior_seconds": .double(1),
                       "weights": .int(7), "steps": .int(0), "prior_diagnostics": prior]))
        for changed in [nil, 0.25] as [Double?] {
            check(MaskLLMReport(pattern: "2:4", prior: "none", priorSeconds: 0, weights: 7, logits: 42,
                                groupsChangedFromPrior: Nullable(changed), trainWeights: false, loss: "kl",
                                priorDiagnostics: .null),
                  .object(["pattern": .string("2:4"), "prior": .string("none"), "prior_seconds": .double(0),
                           "weights": .int(7), "logits": .int(42),
                           "groups_changed_from_prior": changed.map { .double($0) } ?? .null,
                           "train_weights": .bool(false), "loss": .string("kl"), "prior_diagnostics": .null]))
        }
    }

    func testVTransReport() {
        let r = VTransReport(
            variant: "fast", targetParameters: 26000, parameters: 25000, expectedParametersAtEnd: 26000,
            lambda: [0.5, 0.1], logAlphaCutoff: -1, trainTokensUsed: 64, hidden: 32, layersKept: [0, 2],
            perLayer: [.init(layer: 0, heads: 2, kvHeads: 2, mlp: 16), .init(layer: 2, heads: 1, kvHeads: 2, mlp: 8)],
            keptHeads: [[0, 1], [3]], firstLoss: 2, finalLoss: 1.5, finalKl: .nan)
        let v = try? JSONValue(encoding: r)
        XCTAssertTrue(v?.objectValue?["final_kl"]?.doubleValue?.isNaN ?? false)
        var o = v?.objectValue ?? [:]
        o["final_kl"] = .double(0)
        XCTAssertEqual(JSONValue.object(o), .object([
            "variant": .string("fast"), "target_parameters": .int(26000), "parameters": .int(25000),
            "expected_parameters_at_end": .double(26000),
            "lambda": .array([.double(Double(Float(0.5))), .double(Double(Float(0.1)))]),
            "log_alpha_cutoff": .double(-1), "train_tokens_used": .int(64), "hidden": .int(32),
            "layers_kept": .array([.int(0), .int(2)]),
            "per_layer": .array([
                .object(["layer": .int(0), "heads": .int(2), "kv_heads": .int(2), "mlp": .int(16)]),
                .object(["layer": .int(2), "heads": .int(1), "kv_heads": .int(2), "mlp": .int(8)]),
            ]),
            "kept_heads": .array([.array([.int(0), .int(1)]), .array([.int(3)])]),
            "first_loss": .double(2), "final_loss": .double(1.5), "final_kl": .double(0),
        ]))
    }

    func testCPTQuantReportUnitNullsItsMeasuredDamageAndLeavesOtherOptionalsOut() {
        let unit = CPTQuantReport.Unit(name: "layer 0 mlp", layer: 0, sensitivity: 1, bits: 4, format: "q4_g32",
                                       bytes: 100, weights: 200, bitsPerWeight: 4, relativeError: 0.5,
                                       measuredDamage: Nullable(nil))
        check(unit, .object(["name": .string("layer 0 mlp"), "layer": .int(0), "sensitivity": .double(1),
                             "bits": .int(4), "format": .string("q4_g32"), "bytes": .int(100), "weights": .int(200),
                             "bits_per_weight": .double(4), "relative_error": .double(0.5),
                             "measured_damage": .null]))
    }

    func testTrainingAndHistoryEntries() {
        let step = StepStats(step: 1, loss: 2, kl: 2, ce: 0, intermediate: 0, lr: 1e-5, gradNorm: 1.5)
        let log: JSONValue = .array([.object(["step": .int(1), "loss": .double(2), "kl": .double(2),
                                              "ce": .double(0), "intermediate": .double(0), "lr": .double(1e-5),
                                              "grad_norm": .double(1.5)])])
        check(TrainingReport(steps: 2, resumedFrom: Nullable(nil), tokens: 64, trainSeconds: 0.5,
                             tokensPerSecond: 128, firstLoss: Nullable(2), finalLoss: Nullable(nil), log: [step]),
              .object(["steps": .int(2), "resumed_from": .null, "tokens": .int(64), "train_seconds": .double(0.5),
                       "tokens_per_second": .double(128), "first_loss": .double(2), "final_loss": .null,
                       "log": log]))
        check(DistillHistoryEntry(kind: "distill", teacher: "t.h5", student: "s.h5", steps: 2, tokens: 64, stf: false,
                                  config: .object(["lr": .double(1e-4)]), finalLoss: Nullable(1.5)),
              .object(["kind": .string("distill"), "teacher": .string("t.h5"), "student": .string("s.h5"),
                       "steps": .int(2), "tokens": .int(64), "stf": .bool(false),
                       "config": .object(["lr": .double(1e-4)]), "final_loss": .double(1.5)]))
        check(DropLayersHistoryEntry(kind: "drop-layers", source: "a.h5", dropped: [0, 3]),
              .object(["kind": .string("drop-layers"), "source": .string("a.h5"),
                       "dropped": .array([.int(0), .int(3)])]))
        let recipe: JSONValue = .object(["format": .int(1)])
        check(ApplyHistoryEntry(kind: "apply", recipePath: "r.json", recipe: recipe, base: "b.h5", baseHash: "h",
                                stages: []),
              .object(["kind": .string("apply"), "recipe_path": .string("r.json"), "recipe": recipe,
                       "base": .string("b.h5"), "base_hash": .string("h"), "stages": .array([])]))
        check(InspectReport.Tokenizer(model: "gpt2", pre: "gpt2", vocabulary: 256, merges: 3,
                                      bosTokenId: Nullable(1), eosTokenId: Nullable(nil), addBosToken: true,
                                      normalizer: Nullable(nil)),
              .object(["model": .string("gpt2"), "pre": .string("gpt2"), "vocabulary": .int(256),
                       "merges": .int(3), "bos_token_id": .int(1), "eos_token_id": .null,
                       "add_bos_token": .bool(true), "normalizer": .null]))
    }

    func testImportHistoryEntry() {
        var gguf = ImportHistoryEntry(kind: "import", source: "m.gguf", sourceFormat: "gguf", date: "d")
        gguf.ggufVersion = 3; gguf.ggufArchitecture = "llama"; gguf.tensorTypes = ["Q4_K": 2, "F32": 1]
        gguf.note = "n"
        check(gguf, .object(["kind": .string("import"), "source": .string("m.gguf"), "source_format": .string("gguf"),
                             "date": .string("d"), "gguf_version": .int(3), "gguf_architecture": .string("llama"),
                             "tensor_types": .object(["Q4_K": .int(2), "F32": .int(1)]), "note": .string("n")]))
        var hf = ImportHistoryEntry(kind: "import", source: "dir", sourceFormat: "safetensors", date: "d")
        hf.files = 3; hf.dtypes = ["BF16": 4]; hf.warnings = ["w"]
        check(hf, .object(["kind": .string("import"), "source": .string("dir"), "source_format": .string("safetensors"),
                           "date": .string("d"), "files": .int(3), "dtypes": .object(["BF16": .int(4)]),
                           "warnings": .array([.string("w")])]))
    }
}
