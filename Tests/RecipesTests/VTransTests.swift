import Foundation
import Model
import Passes
import Recipes
import TensorCore
import Training
import XCTest

/// VTrans: the physically pruned, heterogeneous model against the gated model (removed units' gates at 0, kept
/// gates folded), its parameter count against the accounting, the trained pass meeting its target, and bad
/// settings refused before anything runs.
final class VTransTests: XCTestCase {
    var rng = SplitMix64(seed: 17)

    func config(tied: Bool) -> ModelConfig {
        var c = Tiny.config
        c.tieWordEmbeddings = tied
        return c
    }

    /// Gates with every unit at a value in [0.5, 1.5].
    func randomGates(_ c: ModelConfig) -> Gates {
        let g = Gates(config: c)
        func t(_ n: Int) -> Tensor { Tensor(shape: [n], values: (0..<n).map { _ in 0.5 + rng.nextFloat() }) }
        g.heads = c.blocks.map { t($0.numAttentionHeads) }
        g.neurons = c.blocks.map { t($0.intermediateSize) }
        g.channels = t(c.hiddenSize)
        g.sublayers = t(2 * c.blocks.count)
        return g
    }

    func subset(_ n: Int, keep: Int) -> [Int] {
        var idx = Array(0..<n)
        for i in stride(from: n - 1, to: 0, by: -1) { idx.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
        return Array(idx.prefix(keep)).sorted()
    }

    /// A selection of the Tiny model (4 layers, 6 heads in 2 KV groups, 48 neurons, 32 channels): layer 2
    /// dropped, layer 1 without heads, layer 3 without neurons, differing heads and widths elsewhere.
    func selection(_ c: ModelConfig, emptySublayers: Bool = true) -> DecoderModel.UnitSelection {
        let per = 3
        func heads(_ k: Int) -> [Int] { (0..<2).flatMap { g in subset(per, keep: k).map { g * per + $0 } } }
        return DecoderModel.UnitSelection(
            channels: subset(32, keep: 21), layers: [0, 1, 3],
            heads: [heads(2), emptySublayers ? [] : heads(1), heads(3), heads(1)],
            neurons: [subset(48, keep: 30), subset(48, keep: 7), subset(48, keep: 40), emptySublayers ? [] : subset(48, keep: 5)])
    }

    /// The gated model's gates for a selection: removed units at 0, kept units at `g`'s values.
    func gated(_ g: Gates, _ sel: DecoderModel.UnitSelection, _ c: ModelConfig) -> Gates {
        let z = Gates(config: c)
        z.channels = Tensor(shape: [c.hiddenSize], values: (0..<c.hiddenSize).map { sel.channels.contains($0) ? g.channels![$0] : 0 })
        z.heads = (0..<c.blocks.count).map { l in
            Tensor(shape: [c.blocks[l].numAttentionHeads], values: (0..<c.blocks[l].numAttentionHeads).map { sel.heads[l].contains($0) ? g.heads[l]![$0] : 0 })
        }
        z.neurons = (0..<c.blocks.count).map { l in
            Tensor(shape: [c.blocks[l].intermediateSize], values: (0..<c.blocks[l].intermediateSize).map { sel.neurons[l].contains($0) ? g.neurons[l]![$0] : 0 })
        }
        z.sublayers = Tensor(shape: [2 * c.blocks.count], values: (0..<(2 * c.blocks.count)).map { sel.layers.contains($0 / 2) ? g.sublayers![$0] : 0 })
        return z
    }

    func maxDifference(_ a: Tensor, _ b: Tensor) -> Float { (0..<a.count).reduce(Float(0)) { max($0, abs(a[$1] - b[$1])) } }

    func testPrunedModelEqualsTheGatedModel() throws {
        for tied in [false, true] {
            let c = config(tied: tied), m = DecoderModel.random(config: c, seed: 3)
            let g = randomGates(c), sel = selection(c)
            let pruned = try m.pruningUnits(sel, folding: g)
            let pc = pruned.config
            XCTAssertFalse(pc.isHomogeneous)
            XCTAssertEqual(pc.hiddenSize, 21)
            XCTAssertEqual(pc.blocks.map(\.attention), [true, false, true])
            XCTAssertEqual(pc.blocks.map(\.mlp), [true, true, false])
            XCTAssertEqual(pc.blocks.filter(\.attention).map(\.numAttentionHeads), [4, 2])
            let ids = Tiny.windows(1, length: 20)[0]
            let d = TransformerDecoder(model: m, window: 20)
            d.gates = gated(g, sel, c)
            let reference = d.logits(ids), got = TransformerDecoder(model: pruned, window: 20).logits(ids)
            let scale = (0..<reference.count).reduce(Float(0)) { max($0, abs(reference[$1])) }
            XCTAssertLessThan(maxDifference(reference, got), 1e-5 * max(scale, 1), "tied \(tied)")  // float rounding only
            // The reference forward (plain loops, Double accumulation) agrees too.
            let ref2 = pruned.referenceLogits(ids)
            XCTAssertLessThan(maxDifference(ref2, got), 1e-4 * max(scale, 1))
            // And the gates do act: without them the original differs.
            XCTAssertGreaterThan(maxDifference(TransformerDecoder(model: m, window: 20).logits(ids), got), 1e-2)
            // Parameters: the tensors held, the config's count.
            XCTAssertEqual(pruned.parameterCount, pruned.namedTensors.reduce(0) { $0 + $1.tensor.count } - (tied ? 0 : 0))
            XCTAssertEqual(pruned.parameterCount, DecoderModel.parameterCount(pc))
        }
    }

    /// Without empty sublayers, the size model at the integer unit counts is the pruned model's parameter count.
    func testParameterCountEqualsTheAccounting() throws {
        for tied in [false, true] {
            let c = config(tied: tied), m = DecoderModel.random(config: c, seed: 4)
            let sel = selection(c, emptySublayers: false)
            let pruned = try m.pruningUnits(sel, folding: randomGates(c))
            let size = try VIBSizeModel(config: c)
            let kept = (0..<4).map { sel.layers.contains($0) ? 1.0 : 0 }
            let n = size.count(channels: Double(sel.channels.count), heads: sel.heads.map { Double($0.count) },
                               neurons: sel.neurons.map { Double($0.count) }, layers: kept).value
            XCTAssertEqual(Double(pruned.parameterCount), n)
            XCTAssertEqual(pruned.parameterCount, pruned.namedTensors.reduce(0) { $0 + $1.tensor.count })
        }
    }

    func testGQAViolationsAndBadSelectionsAreRefused() throws {
        let c = config(tied: false), m = DecoderModel.random(config: c, seed: 3)
        var sel = selection(c)
        sel.heads[0] = [0, 1, 2, 3]  // 3 heads in group 0, 1 in group 1
        XCTAssertThrowsError(try m.pruningUnits(sel)) { XCTAssertTrue("\($0)".contains("KV group 0 keeps 3 query heads, the others 2"), "\($0)") }
        sel = selection(c)
        sel.heads[0] = [0, 1, 2]
        XCTAssertThrowsError(try m.pruningUnits(sel)) { XCTAssertTrue("\($0)".contains("not a multiple of its 2 KV groups"), "\($0)") }
        sel = selection(c)
        sel.neurons[1] = []
        XCTAssertThrowsError(try m.pruningUnits(sel)) { XCTAssertTrue("\($0)".contains("layer 1 keeps neither heads nor neurons"), "\($0)") }
        sel = selection(c)
        sel.channels = [3, 2]
        XCTAssertThrowsError(try m.pruningUnits(sel)) { XCTAssertTrue("\($0)".contains("hidden channels: indices must be ascending"), "\($0)") }
    }

    func stage(_ json: String) throws -> VTransPass {
        try StageRegistry.passes().make("vtrans", config: try Tiny.stage(json)) as! VTransPass
    }

    func testBadSettingsNameTheStageAndKey() throws {
        let cases: [(String, String)] = [
            (#"{"steps": 3}"#, "'params', 'fraction': give exactly one target"),
            (#"{"steps": 3, "params": 1000, "fraction": 0.5}"#, "'params', 'fraction': give exactly one target"),
            (#"{"steps": 3, "fraction": 1.0}"#, "'fraction': 1.0 is out of range (0, 1)"),
            (#"{"steps": 3, "fraction": 0.5, "axes": ["heads", "embedding"]}"#, #"'axes': "embedding" is not one of hidden, heads, mlp, layers"#),
            (#"{"steps": 3, "fraction": 0.5, "axes": ["heads", "heads"]}"#, "'axes': expected a non-empty list without repeats"),
            (#"{"steps": 3, "fraction": 0.5, "variant": "fastest"}"#, "'variant'"),
            (#"{"steps": 3, "fraction": 0.5, "mask_rate": 0.1}"#, "unknown key 'mask_rate'"),
        ]
        for (json, fragment) in cases {
            XCTAssertThrowsError(try stage(json), json) { e in
                XCTAssertTrue("\(e)".contains("test, stage 1") && "\(e)".contains(fragment), "\(json): \(e)")
            }
        }
        // Targets checked against the model: below the smallest reachable model, and not below the full size.
        let c = config(tied: false)
        let full = DecoderModel.parameterCount(c)
        let onlyMLP = try stage(#"{"steps": 3, "params": 5000, "axes": ["mlp"]}"#)
        XCTAssertThrowsError(try onlyMLP.resolveTarget(c)) { e in
            XCTAssertTrue("\(e)".contains("test, stage 1") && "\(e)".contains("'params': target 5000 parameters is below") && "\(e)".contains("the smallest model the masks along [\"mlp\"] can give"), "\(e)")
        }
        XCTAssertThrowsError(try stage(#"{"steps": 3, "params": \#(full)}"#).resolveTarget(c)) { e in
            XCTAssertTrue("\(e)".contains("is not below the model's \(full)"), "\(e)")
        }
        // The smallest model along mlp only: every attention sublayer full, every MLP removed.
        let floor = try onlyMLP.smallestParameters(c)
        let C = c.hiddenSize, D = c.headDim
        XCTAssertEqual(floor, 2 * c.vocabSize * C + C + 4 * C * (1 + 2 * D * 6 + 2 * 2 * D))
        XCTAssertEqual(try stage(#"{"steps": 3, "params": \#(floor), "axes": ["mlp"]}"#).resolveTarget(c), floor)
    }

    func tokens() -> [Int32] { Tiny.windows(1, length: 4000, seed: 9)[0] }

    /// Each variant trains and prunes the Tiny model to 55 % of its parameters: the result is within one
    /// hidden channel's worth of parameters below the target, is heterogeneous, and equals the trained student
    /// gated by its masks at evaluation (z = μ, removed units at 0). Faster leaves the weights as they were.
    func testVariantsMeetTheTargetAndEqualTheGatedStudent() throws {
        let m = DecoderModel.random(config: Tiny.config, seed: 7), c = m.config
        for variant in ["vtrans", "fast", "faster"] {
            let pass = try stage(#"{"variant": "\#(variant)", "fraction": 0.55, "steps": 24, "batch": 2, "window": 12, "mask_lr": 0.1, "lr": 1e-3}"#)
            let run = try pass.makeRun(model: m, trainTokens: tokens())
            XCTAssertEqual(run.distiller.config.steps, 24)
            var lines: [String] = []
            run.train { lines.append($0) }
            XCTAssertTrue(lines.last?.contains("target") == true, "\(lines)")
            let (pruned, diag) = try run.finish()
            let target = run.masks.settings.targetParameters
            XCTAssertEqual(target, Int(Double(DecoderModel.parameterCount(c)) * 0.55))
            let n = pruned.parameterCount
            let pc = pruned.config
            let channelCost = DecoderModel.parameterCount({ var x = pc; x.hiddenSize += 1; return x }())  - n
            XCTAssertLessThanOrEqual(n, target, variant)
            XCTAssertLessThan(target - n, channelCost, "\(variant): \(n) of \(target)")
            XCTAssertEqual(diag.objectValue?["parameters"], .int(n))
            // The gated student at evaluation.
            let (sel, _) = try run.selection()
            let d = TransformerDecoder(model: run.distiller.student, window: 12)
            d.gates = gated(run.masks.gates, sel, c)
            let ids = Tiny.windows(1, length: 12, seed: 5)[0]
            let a = d.logits(ids), b = TransformerDecoder(model: pruned, window: 12).logits(ids)
            XCTAssertLessThan(maxDifference(a, b), 1e-4, variant)
            if variant == "faster" {
                XCTAssertEqual(run.distiller.student.namedTensors.map { $0.tensor.array }, m.namedTensors.map { $0.tensor.array })
            } else {
                XCTAssertNotEqual(run.distiller.student.namedTensors.map { $0.tensor.array }, m.namedTensors.map { $0.tensor.array })
            }
            if variant == "fast" { XCTAssertEqual(pass.trainingTokens(tokens()).count, 120) }  // 3 % of 4000
        }
    }

    /// The same seed gives the same pruned model.
    func testDeterministic() throws {
        let m = DecoderModel.random(config: Tiny.config, seed: 7)
        func once() throws -> DecoderModel {
            let run = try stage(#"{"fraction": 0.6, "steps": 6, "batch": 2, "window": 12, "mask_lr": 0.1}"#).makeRun(model: m, trainTokens: tokens())
            run.train()
            return try run.finish().model
        }
        let a = try once(), b = try once()
        XCTAssertEqual(a.config, b.config)
        XCTAssertEqual(a.namedTensors.map { $0.tensor.array }, b.namedTensors.map { $0.tensor.array })
    }

    /// A saved state resumes only under the same VIB settings: another mask_lr is refused.
    func testStateResumesOnlyWithTheSameMaskSettings() throws {
        let m = DecoderModel.random(config: Tiny.config, seed: 7)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vtrans-state-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let state = dir.appendingPathComponent("s.h5").path
        let a = try stage(#"{"fraction": 0.6, "steps": 4, "batch": 2, "window": 12, "mask_lr": 0.1}"#).makeRun(model: m, trainTokens: tokens())
        a.distiller.trainStep()
        try a.distiller.saveState(to: state)
        let same = try stage(#"{"fraction": 0.6, "steps": 4, "batch": 2, "window": 12, "mask_lr": 0.1}"#).makeRun(model: m, trainTokens: tokens())
        XCTAssertNoThrow(try same.distiller.loadState(from: state))
        XCTAssertEqual(same.masks.masks.map { $0.mu.array }, a.masks.masks.map { $0.mu.array })
        let other = try stage(#"{"fraction": 0.6, "steps": 4, "batch": 2, "window": 12, "mask_lr": 0.2}"#).makeRun(model: m, trainTokens: tokens())
        XCTAssertThrowsError(try other.distiller.loadState(from: state)) { XCTAssertTrue("\($0)".contains("trained parts had other settings"), "\($0)") }
    }
}
