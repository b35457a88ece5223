import Foundation
import Model
import TensorCore
import XCTest
@testable import Training

/// The whole model's loss and every parameter gradient, and a few AdamW steps, against PyTorch
/// (tools/make_grad_fixture.py; transformers' LlamaForCausalLM in float32, as llm.c checks against GPT-2).
final class PyTorchParityTests: XCTestCase {
    func testCrossEntropyLossAndGradientsMatchPyTorch() throws {
        let j = try Fixtures.json("tiny-llama-tied.grad.json")
        let ref = try Fixtures.gradients("tiny-llama-tied.grad.json")
        let model = try Fixtures.model("tiny-llama-tied")
        let B = j["B"] as! Int, W = j["W"] as! Int
        let trainer = Trainer(model: model, batch: B, window: W)
        let loss = LogitLoss(vocab: model.config.vocabSize)
        let dHidden = Tensor(shape: [B * W, model.config.hiddenSize])
        trainer.zeroGradients()
        trainer.forward(Fixtures.ids(j["batch"]))
        let v = loss.compute(student: trainer, teacher: nil, weights: LogitLossWeights(kl: 0, ce: 1), scale: 1, dHidden: dHidden)
        trainer.backward(dHidden: dHidden.data)
        XCTAssertEqual(v.ce, j["loss_f64"] as! Double, accuracy: 2e-6)  // observed 1.2e-7
        var worst = 0.0
        for (name, g) in trainer.grads.named {
            let err = relativeError(g.array, try XCTUnwrap(ref[name], name))
            XCTAssertLessThan(err, 1e-4, name)
            worst = max(worst, err)
        }
        XCTAssertEqual(ref.count, trainer.grads.named.count)
        XCTAssertLessThan(worst, 1e-4)  // observed 2.1e-6 (PyTorch's own float32 vs float64: 2.1e-6)
    }

    func distillConfig(_ j: [String: Any]) -> DistillConfig {
        var c = DistillConfig()
        c.batch = j["B"] as! Int; c.window = j["W"] as! Int
        c.temperature = j["tau"] as! Double; c.klWeight = j["w_kl"] as! Double; c.ceWeight = j["w_ce"] as! Double
        c.intermediateWeight = j["w_int"] as! Double
        let inter = j["intermediate"] as! [String: Any]
        c.intermediate = (inter["pairs"] as! [[Int]]).map { DistillConfig.LayerPair(student: $0[0], teacher: $0[1]) }
        c.intermediateLoss = DistillConfig.FeatureLoss(rawValue: inter["kind"] as! String)!
        c.alwaysMap = true
        return c
    }

    func testDistillationLossAndGradientsMatchPyTorch() throws {
        let j = try Fixtures.json("tiny-llama.distill.json")
        let ref = try Fixtures.gradients("tiny-llama.distill.json")
        let d = try Distiller(teacher: try Fixtures.model("tiny-llama-tied"), student: try Fixtures.model("tiny-llama"),
                              config: distillConfig(j), trainTokens: (0..<64).map { Int32($0) })
        d.studentTrainer.zeroGradients()
        let v = d.accumulate(Fixtures.ids(j["batch"]), scale: 1)
        XCTAssertEqual(v.kl, j["loss_kl_f64"] as! Double, accuracy: 2e-6)  // observed 2.2e-7
        XCTAssertEqual(v.ce, j["loss_ce_f64"] as! Double, accuracy: 2e-6)  // observed 1.2e-7
        XCTAssertEqual(v.inter, j["loss_int_f64"] as! Double, accuracy: 2e-6)  // observed 1.6e-9
        var worst = 0.0
        var tensors = d.studentTrainer.grads.named
        tensors.append(("map.0", try XCTUnwrap(d.mapGrads[0])))
        XCTAssertEqual(ref.count, tensors.count)
        for (name, g) in tensors {
            let err = relativeError(g.array, try XCTUnwrap(ref[name], name))
            XCTAssertLessThan(err, 1e-4, name)
            worst = max(worst, err)
        }
        XCTAssertLessThan(worst, 1e-4)  // observed 1.3e-6 (PyTorch's own float32 vs float64: 1.0e-6)
    }

    func testAdamWStepsMatchPyTorch() throws {
        let j = try Fixtures.json("tiny-llama.distill.json"), a = j["adamw"] as! [String: Any]
        var c = distillConfig(j)
        c.steps = a["total_steps"] as! Int; c.warmup = a["warmup"] as! Int; c.decay = .cosine
        c.lr = a["lr"] as! Double; c.minLRRatio = (a["min_lr"] as! Double) / c.lr
        c.weightDecay = a["weight_decay"] as! Double; c.clip = a["clip_grad_norm"] as! Double
        let betas = a["betas"] as! [Double]
        c.beta1 = betas[0]; c.beta2 = betas[1]; c.eps = a["eps"] as! Double
        let d = try Distiller(teacher: try Fixtures.model("tiny-llama-tied"), student: try Fixtures.model("tiny-llama"),
                              config: c, trainTokens: (0..<64).map { Int32($0) })
        for step in a["steps"] as! [[String: Any]] {
            let s = d.trainStep(batches: [Fixtures.ids(step["batch"])])
            let name = "step \(step["step"]!)"
            XCTAssertEqual(s.lr, step["lr"] as! Double, accuracy: 1e-12, name)
            XCTAssertEqual(s.loss, step["loss_f64"] as! Double, accuracy: 1e-5, name)  // observed ≤ 9.5e-7
            XCTAssertEqual(s.gradNorm, step["grad_norm_f64"] as! Double, accuracy: 1e-4, name)  // observed ≤ 6.8e-6
        }
        let v = d.evaluateLoss(Fixtures.ids(j["batch"]))
        let final = c.klWeight * v.kl + c.ceWeight * v.ce + c.intermediateWeight * v.intermediate
        XCTAssertEqual(final, a["final_loss_f64"] as! Double, accuracy: 1e-5)  // observed 3.7e-9
    }
}
