import Checkpoint
import Foundation
import Model
import TensorCore
import XCTest
@testable import Training

/// Behaviour of the training machinery on the tiny fixture models: schedule, accumulation, masks, frozen
/// weights, parameter groups, and bit-identical resume.
final class TrainingTests: XCTestCase {
    func testScheduleWarmsUpThenDecays() {
        let cos = LRSchedule(warmup: 4, total: 14, decay: .cosine, minRatio: 0.1)
        XCTAssertEqual((0..<4).map { cos.factor(step: $0) }, [0.25, 0.5, 0.75, 1])
        XCTAssertEqual(cos.factor(step: 4), 1, accuracy: 1e-15)
        XCTAssertEqual(cos.factor(step: 9), 0.1 + 0.45 * (1 + Foundation.cos(Double.pi / 2)), accuracy: 1e-15)
        XCTAssertEqual(cos.factor(step: 14), 0.1, accuracy: 1e-15)
        let lin = LRSchedule(warmup: 0, total: 10, decay: .linear, minRatio: 0)
        XCTAssertEqual(lin.factor(step: 5), 0.5, accuracy: 1e-15)
        XCTAssertEqual(LRSchedule(warmup: 2, total: 10, decay: .constant, minRatio: 0).factor(step: 7), 1)
    }

    /// Gradients of two accumulated micro-batches (each scaled by 1/2) equal those of one batch holding both.
    func testGradientAccumulationEqualsTheCombinedBatch() throws {
        let model = try Fixtures.model("tiny-llama")
        var rng = SplitMix64(seed: 3)
        let W = 12, ids = (0..<(2 * W)).map { _ in Int32(rng.next() % 256) }
        let weights = LogitLossWeights(kl: 0, ce: 1)
        let big = Trainer(model: model, batch: 2, window: W), small = Trainer(model: model, batch: 1, window: W)
        let dBig = Tensor(shape: [2 * W, 64]), dSmall = Tensor(shape: [W, 64]), loss = LogitLoss(vocab: 256)
        big.zeroGradients()
        big.forward(ids)
        _ = loss.compute(student: big, teacher: nil, weights: weights, scale: 1, dHidden: dBig)
        big.backward(dHidden: dBig.data)
        small.zeroGradients()
        for half in 0..<2 {
            small.forward(Array(ids[(half * W)..<((half + 1) * W)]))
            _ = loss.compute(student: small, teacher: nil, weights: weights, scale: 0.5, dHidden: dSmall)
            small.backward(dHidden: dSmall.data)
        }
        for ((name, a), (_, b)) in zip(small.grads.named, big.grads.named) {
            XCTAssertLessThan(relativeError(a.array, b.array), 1e-5, name)  // observed ≤ 4.9e-7 (summation order only)
        }
    }

    /// A sparse weight computes what the dense weight with the dropped elements zeroed computes; its gradient
    /// is that weight's gradient masked, so training keeps the pattern.
    func testSparseWeightEqualsZeroedWeightAndMasksItsGradient() throws {
        let id = WeightID.linear(LinearID(layer: 1, kind: .up))
        let model = try Fixtures.model("tiny-llama")
        let w = try XCTUnwrap(model.linear(LinearID(layer: 1, kind: .up))?.denseView)
        var rng = SplitMix64(seed: 5)
        let mask = try SparsityMask(pattern: .unstructured, rows: w.shape[0], cols: w.shape[1]) { _ in rng.next() % 2 == 0 }
        let sparse = try model.replacing(id, with: .sparse(SparseWeight(masking: w, mask: mask)))
        let plain = try model.replacing(id, with: .dense(sparse.linear(LinearID(layer: 1, kind: .up))!.dequantized()))
        let W = 10, ids = (0..<W).map { _ in Int32(rng.next() % 256) }
        let weights = LogitLossWeights(kl: 0, ce: 1), loss = LogitLoss(vocab: 256)
        let masked = Trainer(model: sparse, batch: 1, window: W), reference = Trainer(model: plain, batch: 1, window: W)
        let d1 = Tensor(shape: [W, 64]), d2 = Tensor(shape: [W, 64])
        for (t, d) in [(masked, d1), (reference, d2)] {
            t.zeroGradients()
            t.forward(ids)
            _ = loss.compute(student: t, teacher: nil, weights: weights, scale: 1, dHidden: d)
            t.backward(dHidden: d.data)
        }
        XCTAssertEqual(masked.hidden.array, reference.hidden.array)
        let gDense = try XCTUnwrap(reference.grads.slots[id]?.first), gSparse = try XCTUnwrap(masked.grads.slots[id]?.first)
        XCTAssertEqual(gSparse.array, (0..<w.count).map { mask[$0] ? gDense[$0] : 0 })
        XCTAssertTrue((0..<w.count).contains { !mask[$0] && gDense[$0] != 0 }, "the dense gradient is not already zero where the mask drops")
    }

    func tinyConfig(steps: Int) -> DistillConfig {
        var c = DistillConfig()
        c.steps = steps; c.batch = 2; c.window = 16; c.lr = 2e-3; c.warmup = 2; c.weightDecay = 0.1; c.ceWeight = 0.3
        c.intermediate = [.init(student: 1, teacher: 2)]; c.balance = true; c.alwaysMap = true; c.seed = 11
        return c
    }

    var stream: [Int32] {
        var rng = SplitMix64(seed: 9)
        return (0..<400).map { _ in Int32(rng.next() % 256) }
    }

    /// Frozen groups keep their weights; a group's own rate and decay are applied.
    func testParameterGroups() throws {
        var c = tinyConfig(steps: 3)
        c.groups = [ParameterGroup(match: "model.embed_tokens.*", frozen: true),
                    ParameterGroup(match: "model.layers.0.*", lr: 5e-4, weightDecay: 0)]
        let student = try Fixtures.model("tiny-llama")
        let before = student.embedTokens.dequantized().array, beforeQ = student.layers[1].attention!.q.dequantized().array
        let d = try Distiller(teacher: try Fixtures.model("tiny-llama-tied"), student: student, config: c, trainTokens: stream)
        XCTAssertFalse(d.optimizer.parameters.contains { $0.name == "model.embed_tokens.weight" })
        let p0 = d.optimizer.parameters.first { $0.name == "model.layers.0.self_attn.q_proj.weight" }!
        XCTAssertEqual(p0.lr, 5e-4)
        XCTAssertEqual(p0.weightDecay, 0)
        XCTAssertEqual(d.optimizer.parameters.first { $0.name == "model.norm.weight" }!.weightDecay, 0)
        XCTAssertEqual(d.optimizer.parameters.first { $0.name == "lm_head.weight" }!.weightDecay, 0.1)
        for _ in 0..<3 { d.trainStep() }
        XCTAssertEqual(d.student.embedTokens.dequantized().array, before)
        XCTAssertNotEqual(d.student.layers[1].attention!.q.dequantized().array, beforeQ)
        XCTAssertEqual(student.layers[1].attention!.q.dequantized().array, beforeQ, "the student given is a value: training works on a copy")
        XCTAssertNil(d.studentTrainer.grads.slots[.embedTokens], "a frozen weight has no gradient buffer")
    }

    /// Distillation lowers the loss it optimises on the tiny pair.
    func testDistillationReducesTheLoss() throws {
        let d = try Distiller(teacher: try Fixtures.model("tiny-llama-tied"), student: try Fixtures.model("tiny-llama"),
                              config: tinyConfig(steps: 30), trainTokens: stream)
        let ids = d.batchIds(step: 0, micro: 0)
        let before = d.evaluateLoss(ids)
        for _ in 0..<30 { d.trainStep() }
        let after = d.evaluateLoss(ids)
        XCTAssertLessThan(after.kl, 0.8 * before.kl)  // observed 0.91 -> 0.67
    }

    /// Save at step 4, restore into fresh models, continue to step 8: bit-identical to an uninterrupted run.
    func testResumeEndsWithTheSameWeights() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("resume-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let state = dir.appendingPathComponent("state.h5").path
        let teacher = try Fixtures.model("tiny-llama-tied")
        let full = try Distiller(teacher: teacher, student: try Fixtures.model("tiny-llama"), config: tinyConfig(steps: 8), trainTokens: stream)
        for _ in 0..<8 { full.trainStep() }

        let first = try Distiller(teacher: teacher, student: try Fixtures.model("tiny-llama"), config: tinyConfig(steps: 8), trainTokens: stream)
        for _ in 0..<4 { first.trainStep() }
        try first.saveState(to: state)
        let second = try Distiller(teacher: teacher, student: try Fixtures.model("tiny-llama"), config: tinyConfig(steps: 8), trainTokens: stream)
        try second.loadState(from: state)
        XCTAssertEqual(second.step, 4)
        while second.step < 8 { second.trainStep() }
        for ((name, a), (_, b)) in zip(full.student.namedTensors, second.student.namedTensors) {
            XCTAssertEqual(a.array, b.array, name)
        }
        XCTAssertEqual(full.maps[0]!.array, second.maps[0]!.array)
        XCTAssertEqual(full.log, second.log)

        var other = tinyConfig(steps: 8)
        other.lr = 1e-3
        let mismatched = try Distiller(teacher: teacher, student: try Fixtures.model("tiny-llama"), config: other, trainTokens: stream)
        XCTAssertThrowsError(try mismatched.loadState(from: state)) { e in
            XCTAssertTrue("\(e)".contains("lr"), "\(e)")
        }

        // A float32 state does not resume under bf16 products (the check reads the setting only; nothing runs).
        let bf16 = try Distiller(teacher: teacher, student: try Fixtures.model("tiny-llama"), config: tinyConfig(steps: 8), trainTokens: stream)
        MatrixProduct.precision = .bf16
        defer { MatrixProduct.precision = .fp32 }
        XCTAssertThrowsError(try bf16.loadState(from: state)) { e in
            XCTAssertTrue("\(e)".contains("trained with fp32 matrix products and this run uses bf16"), "\(e)")
            XCTAssertTrue("\(e)".contains(state), "\(e)")
        }
        XCTAssertEqual(bf16.step, 0)
    }

    func testBadSettingsAreRejected() throws {
        let teacher = try Fixtures.model("tiny-llama-tied"), student = try Fixtures.model("tiny-llama")
        func rejects(_ edit: (inout DistillConfig) -> Void, _ fragment: String) {
            var c = tinyConfig(steps: 2)
            edit(&c)
            XCTAssertThrowsError(try Distiller(teacher: teacher, student: student, config: c, trainTokens: stream)) { e in
                XCTAssertTrue("\(e)".contains(fragment), "\(e)")
            }
        }
        rejects({ $0.steps = 0 }, "steps")
        rejects({ $0.temperature = 0 }, "temperature")
        rejects({ $0.intermediate = [.init(student: 5, teacher: 0)] }, "student layer 5")
        rejects({ $0.klWeight = 0; $0.ceWeight = 0 }, "weight")
        rejects({ $0.window = 1000 }, "fewer than one window")
        rejects({ $0.groups = [ParameterGroup(match: "*", frozen: true)] }, "frozen")
    }

    /// Gates trained through the Trainable protocol (weights frozen): the hooks run around every micro-batch,
    /// the L1 term enters the loss and pulls gates down, the weights stay, and a resumed run ends bit for bit
    /// where an uninterrupted one does (gates, their AdamW moments and the log restored from the state).
    func testGatesTrainThroughTheTrainableProtocolAndResume() throws {
        let teacher = try Fixtures.model("tiny-llama-tied")
        var c = tinyConfig(steps: 6)
        c.intermediate = []; c.balance = false; c.alwaysMap = false
        let student = try Fixtures.model("tiny-llama")
        func gates() -> Gates {
            let g = Gates(config: student.config)
            g.heads = student.config.blocks.map { Tensor(shape: [$0.numAttentionHeads], values: [Float](repeating: 1, count: $0.numAttentionHeads)) }
            g.neurons = student.config.blocks.map { Tensor(shape: [$0.intermediateSize], values: [Float](repeating: 1, count: $0.intermediateSize)) }
            return g
        }
        /// Counts the hooks' calls.
        final class Hooks: Trainable {
            let name = "hooks"
            var parameters: [Parameter] { [] }
            var forwards = 0, backwards = 0
            func willForward(step: Int, micro: Int) { forwards += 1 }
            func didBackward(step: Int, micro: Int) { backwards += 1 }
        }
        let hooks = Hooks(), g = gates()
        let full = try Distiller(teacher: teacher, student: student, config: c, trainTokens: stream,
                                 trainables: [GateTrainable(gates: g, lr: 1e-2, l1: 1e-3), hooks], trainWeights: false)
        XCTAssertEqual(full.optimizer.parameters.map(\.name), ["gates.heads.0", "gates.heads.1", "gates.neurons.0", "gates.neurons.1"])
        for _ in 0..<6 { full.trainStep() }
        XCTAssertEqual(hooks.forwards, 6); XCTAssertEqual(hooks.backwards, 6)
        XCTAssertEqual(full.student.namedTensors.map { $0.tensor.array }, student.namedTensors.map { $0.tensor.array }, "weights frozen")
        let moved = g.named.flatMap { $0.tensor.array }
        XCTAssertTrue(moved.contains { $0 != 1 }, "the gates trained")
        XCTAssertLessThan(moved.reduce(0, +) / Float(moved.count), 1, "L1 pulls the gates down on average")

        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("resume-gates-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let state = dir.appendingPathComponent("state.h5").path
        let g1 = gates()
        let first = try Distiller(teacher: teacher, student: student, config: c, trainTokens: stream,
                                  trainables: [GateTrainable(gates: g1, lr: 1e-2, l1: 1e-3)], trainWeights: false)
        for _ in 0..<3 { first.trainStep() }
        try first.saveState(to: state)
        let g2 = gates()
        let second = try Distiller(teacher: teacher, student: student, config: c, trainTokens: stream,
                                   trainables: [GateTrainable(gates: g2, lr: 1e-2, l1: 1e-3)], trainWeights: false)
        try second.loadState(from: state)
        while second.step < 6 { second.trainStep() }
        XCTAssertEqual(g2.named.map { $0.tensor.array }, g.named.map { $0.tensor.array })
        XCTAssertEqual(second.log, full.log)
    }

    /// A state with a non-finite AdamW moment, or a step outside the run, is refused on resume, naming the file.
    func testResumeRefusesNonFiniteMomentsAndImpossibleSteps() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("state-bad-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let teacher = try Fixtures.model("tiny-llama-tied")
        func distiller() throws -> Distiller {
            try Distiller(teacher: teacher, student: try Fixtures.model("tiny-llama"), config: tinyConfig(steps: 4), trainTokens: stream)
        }
        let good = dir.appendingPathComponent("good.h5").path
        let d = try distiller()
        d.trainStep(); d.trainStep()
        try d.saveState(to: good)
        let (meta, tensors) = try TensorArchive.read(good, format: Distiller.stateFormat, version: Distiller.stateVersion)
        let names = tensors.keys.sorted()
        // NaN in one moment.
        let nan = dir.appendingPathComponent("nan.h5").path
        let moment = try XCTUnwrap(names.first { $0.hasPrefix("adam_v:") })
        let bad = tensors[moment]!.copy()
        bad[0] = .nan
        try TensorArchive.write(to: nan, format: Distiller.stateFormat, version: Distiller.stateVersion, meta: meta,
                                tensors: names.map { ($0, $0 == moment ? bad : tensors[$0]!) })
        XCTAssertThrowsError(try distiller().loadState(from: nan)) { XCTAssertTrue("\($0)".contains(nan), "\($0)") }
        // Step −1 and a step beyond the run's 4.
        for step in [-1, 9] {
            let path = dir.appendingPathComponent("step\(step).h5").path
            let edited = meta.replacingOccurrences(of: "\"step\":2", with: "\"step\":\(step)")
            XCTAssertNotEqual(edited, meta, "the meta holds \"step\":2")
            try TensorArchive.write(to: path, format: Distiller.stateFormat, version: Distiller.stateVersion, meta: edited,
                                    tensors: names.map { ($0, tensors[$0]!) })
            XCTAssertThrowsError(try distiller().loadState(from: path), "step \(step)") { XCTAssertTrue("\($0)".contains(path), "\($0)") }
        }
        XCTAssertNoThrow(try distiller().loadState(from: good))
    }
}
