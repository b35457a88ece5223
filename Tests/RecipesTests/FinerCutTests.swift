import Foundation
import Model
import Passes
import Recipes
import TensorCore
import XCTest

final class FinerCutTests: XCTestCase {
    /// A copy of `m` whose sublayers `zeroed` add nothing (o_proj / down_proj set to zero).
    func zeroing(_ m: DecoderModel, _ zeroed: Set<Int>) throws -> DecoderModel {
        let z = try DecoderModel(config: m.config, tensors: Dictionary(uniqueKeysWithValues: m.namedTensors.map { ($0.name, $0.tensor.copy()) }))
        for s in zeroed { if s % 2 == 0 { z.layers[s / 2].attention!.o.denseView!.zero() } else { z.layers[s / 2].mlp!.down.denseView!.zero() } }
        return z
    }

    /// Mean JS divergence over the windows' positions, by full forwards and the Double reference op.
    func bruteForceJS(_ original: DecoderModel, _ variant: DecoderModel, _ windows: [[Int32]]) -> Double {
        let V = original.config.vocabSize
        var sum = 0.0, n = 0
        for ids in windows {
            let T = ids.count
            let p = TransformerDecoder(model: original, window: T).logits(ids), q = TransformerDecoder(model: variant, window: T).logits(ids)
            logSoftmaxForward(out: p.data, logits: p.data, rows: T, columns: V)
            var d = [Double](repeating: 0, count: T)
            d.withUnsafeMutableBufferPointer { jensenShannonForwardReference(out: $0.baseAddress!, logProbs: p.data, logits: q.data, rows: T, columns: V) }
            sum += d.reduce(0, +); n += T
        }
        return sum / Double(n)
    }

    func testGreedyStepsMatchBruteForceAndAreReproducible() throws {
        let m = Tiny.model(), windows = Tiny.windows()
        let order = try FinerCutPass.order(model: m, windows: windows, metric: .js, mode: .greedy, candidates: .all, count: 3)
        XCTAssertEqual(order.count, 3)
        // Each step: recompute every candidate's distance by full forwards of zeroed models.
        var removed = Set<Int>()
        for step in order {
            let left = (0..<8).filter { !removed.contains($0) }
            let d = try left.map { bruteForceJS(m, try zeroing(m, removed.union([$0])), windows) }
            let best = left[d.indices.min { d[$0] < d[$1] }!]
            XCTAssertEqual(step.sublayer, best, "greedy choice after removing \(removed.sorted())")
            assertClose([step.distance], [d[left.firstIndex(of: best)!]], rel: 1e-4, "distance of step \(removed.count + 1)")
            removed.insert(best)
        }
        // Reproducible, and extending a cached prefix gives the same order as computing it afresh.
        let again = try FinerCutPass.order(model: m, windows: windows, metric: .js, mode: .greedy, candidates: .all, count: 3)
        XCTAssertEqual(again, order)
        let extended = try FinerCutPass.order(model: m, windows: windows, metric: .js, mode: .greedy, candidates: .all, count: 3,
                                          prefix: Array(order.prefix(1)))
        XCTAssertEqual(extended, order)
    }

    func testOneShotAngularRanksEveryCandidateByItsOwnRemoval() throws {
        let m = Tiny.model(), windows = Tiny.windows(2)
        let ranking = try FinerCutPass.order(model: m, windows: windows, metric: .angular, mode: .oneShot, candidates: .attention, count: 1)
        XCTAssertEqual(ranking.map(\.sublayer).sorted(), [0, 2, 4, 6])
        XCTAssertEqual(ranking.map(\.distance), ranking.map(\.distance).sorted())
        for r in ranking {
            let z = try zeroing(m, [r.sublayer])
            var sum = 0.0, n = 0
            for ids in windows {
                let a = TransformerDecoder(model: m, window: ids.count).logits(ids).array, b = TransformerDecoder(model: z, window: ids.count).logits(ids).array
                let V = m.config.vocabSize
                for t in 0..<ids.count {
                    let x = a[(t * V)..<((t + 1) * V)].map(Double.init), y = b[(t * V)..<((t + 1) * V)].map(Double.init)
                    sum += acos(min(1, cosine(x, y))) / .pi
                    n += 1
                }
            }
            assertClose([r.distance], [sum / Double(n)], rel: 1e-4, "angular distance of sublayer \(r.sublayer)")
        }
    }

    /// Removed sublayers are absent from the model (not computed) and it equals the original with them zeroed.
    func testSkippedSublayersEqualZeroedOnes() throws {
        let m = Tiny.model(), windows = Tiny.windows()
        let pass = try FinerCutPass(config: try Tiny.stage(#"{"fraction": 0.375}"#))
        let weightsBefore = m.namedTensors.map { $0.tensor.array }
        let (pruned, diag) = try pass.run(on: m, context: PassContext(calibration: windows))
        XCTAssertEqual(m.namedTensors.map { $0.tensor.array }, weightsBefore, "the input model is left untouched")
        let order = try XCTUnwrap(diag.objectValue?["order"]?.arrayValue?.compactMap { $0.objectValue?["sublayer"]?.intValue })
        XCTAssertEqual(order.count, 3)  // 0.375 of 8 candidates
        let removed = Set(order)
        let present = pruned.config.blocks.flatMap { [$0.attention, $0.mlp] }
        XCTAssertEqual(present.filter { !$0 }.count + 2 * (4 - pruned.layers.count), 3, "the config records the removed sublayers")
        XCTAssertEqual(pruned.parameterCount, m.parameterCount - m.namedTensors.filter { name, _ in
            guard name.hasPrefix("model.layers.") else { return false }
            let p = name.split(separator: "."), l = Int(p[2])!
            let attn = p[3] == "self_attn" || p[3] == "input_layernorm"
            return removed.contains(2 * l + (attn ? 0 : 1))
        }.reduce(0) { $0 + $1.tensor.count })
        let z = try zeroing(m, removed)
        for ids in windows {
            XCTAssertEqual(TransformerDecoder(model: pruned, window: ids.count).logits(ids).array,
                           TransformerDecoder(model: z, window: ids.count).logits(ids).array, "skipped vs zeroed (bit-identical)")
        }
        // The checkpoint config round-trips the per-layer record.
        XCTAssertEqual(try ModelConfig(json: pruned.config.json), pruned.config)
    }

    func testCacheServesAnotherTargetWithoutRecomputing() throws {
        let m = Tiny.model(), windows = Tiny.windows(2)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("finercut-cache-\(UUID().uuidString)").path
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        func run(_ k: Int) throws -> (DecoderModel, StatsCache) {
            let cache = StatsCache(directory: dir, scope: .string("tiny"))
            let pass = try FinerCutPass(config: try Tiny.stage(#"{"remove": \#(k)}"#))
            return (try pass.run(on: m, context: PassContext(calibration: windows, cache: cache)).model, cache)
        }
        let (_, first) = try run(3)
        XCTAssertEqual(first.misses, ["finercut-order"])
        let (two, second) = try run(2)
        XCTAssertEqual(second.hits, ["finercut-order"])
        XCTAssertTrue(second.misses.isEmpty)
        let fresh = try FinerCutPass(config: try Tiny.stage(#"{"remove": 2}"#)).run(on: m, context: PassContext(calibration: windows)).model
        XCTAssertEqual(two.config, fresh.config)
        // Another scope (another base or calibration) does not see the entry.
        XCTAssertNil(StatsCache(directory: dir, scope: .string("other")).load("finercut-order", settings: .object([
            "metric": .string("js"), "mode": .string("greedy"), "candidates": .string("all")]), as: [FinerCutPass.Removal].self))
    }

    func testBadFinerCutSettings() throws {
        for (json, fragment) in [(#"{}"#, "exactly one of 'remove'"), (#"{"remove": 2, "fraction": 0.1}"#, "exactly one of 'remove'"),
                                 (#"{"fraction": 1.5}"#, "out of range"), (#"{"remove": 2, "metric": "kl"}"#, "'kl' is not one of js, angular"),
                                 (#"{"remove": 2, "mode": "beam"}"#, "'mode'"), (#"{"remove": 8}"#, "cannot remove 8 of 8")] {
            do {
                _ = try FinerCutPass(config: try Tiny.stage(json)).run(on: Tiny.model(), context: PassContext(calibration: Tiny.windows(1)))
                XCTFail("\(json): no error")
            } catch {
                XCTAssertTrue("\(error)".contains(fragment), "\(json): \(error)")
            }
        }
    }
}
