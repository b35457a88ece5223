import Foundation
import Model
import Quantization
import Recipes
import TensorCore
import XCTest
@testable import Passes

/// `maskllm`'s preflight against a model: the checks the recipe-level kind check cannot make (one weight of a
/// target kind quantized while the others are dense, M against each targeted input size, 'exclude_layers').
final class MaskLLMPassTests: XCTestCase {
    func pass(_ json: String) throws -> MaskLLMPass {
        try StageRegistry.passes().make("maskllm", config: try Tiny.stage(json)) as! MaskLLMPass
    }

    func assertRefused(_ json: String, _ model: DecoderModel, _ fragment: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try pass(json).preflight(model), json, file: file, line: line) { e in
            let text = "\(e)"
            XCTAssertTrue(text.contains("test, stage 1: ") && text.contains(fragment), text, file: file, line: line)
        }
    }

    /// The optimiser defaults are the reference scripts' (ε 1e-5, weight decay 0.1 on the logits, β 0.9/0.95,
    /// clipping at 1, lr 5e-4 decaying to 10 %, λ 1e-5, τ 4 → 0.05, κ 1e2 → 5e2, α 3), and each can be set.
    func testDefaultsAreTheReferenceScripts() throws {
        let d = try pass(#"{"steps": 2}"#)
        XCTAssertEqual(d.distill.eps, 1e-5); XCTAssertEqual(d.settings.logitWeightDecay, 0.1)
        XCTAssertEqual(d.distill.beta1, 0.9); XCTAssertEqual(d.distill.beta2, 0.95); XCTAssertEqual(d.distill.clip, 1)
        XCTAssertEqual(d.distill.lr, 5e-4); XCTAssertEqual(d.distill.minLRRatio, 0.1); XCTAssertEqual(d.settings.weightReg, 1e-5)
        XCTAssertEqual(d.settings.temperatureStart, 4); XCTAssertEqual(d.settings.temperatureEnd, 0.05)
        XCTAssertEqual(d.settings.scaleStart, 100); XCTAssertEqual(d.settings.scaleEnd, 500); XCTAssertEqual(d.settings.priorStrength, 3)
        let o = try pass(#"{"steps": 2, "eps": 1e-8, "logit_weight_decay": 0}"#)
        XCTAssertEqual(o.distill.eps, 1e-8); XCTAssertEqual(o.settings.logitWeightDecay, 0)
        XCTAssertThrowsError(try pass(#"{"steps": 2, "logit_weight_decay": 2}"#)) { XCTAssertTrue("\($0)".contains("'logit_weight_decay'"), "\($0)") }
        XCTAssertThrowsError(try pass(#"{"steps": 2, "eps": 0}"#)) { XCTAssertTrue("\($0)".contains("'eps'"), "\($0)") }
    }

    func testPreflightChecksEveryTargetOfTheModel() throws {
        let m = Tiny.model()
        XCTAssertNoThrow(try pass(#"{"steps": 2}"#).preflight(m))
        XCTAssertNoThrow(try pass(#"{"steps": 2, "pattern": "4:8", "exclude_layers": [1]}"#).preflight(m))
        // One weight quantized: refused when targeted, accepted when its layer or kind is left out.
        let id = LinearID(layer: 1, kind: .up)
        let up = m.linear(id)!.denseView!
        let q = try QuantizedTensor(weights: up.array, shape: up.shape, format: try QuantFormat(bits: 4, groupSize: 16, symmetric: true))
        let mixed = try m.replacing(.linear(id), with: .quantized(QuantizedWeight(q)))
        assertRefused(#"{"steps": 2}"#, mixed, "'targets': layer 1 up_proj is quantized")
        XCTAssertNoThrow(try pass(#"{"steps": 2, "exclude_layers": [1]}"#).preflight(mixed))
        XCTAssertNoThrow(try pass(#"{"steps": 2, "targets": ["q_proj", "down_proj"]}"#).preflight(mixed))
        let C = Tiny.config.hiddenSize
        assertRefused(#"{"steps": 2, "pattern": "2:7"}"#, m, "'pattern': M = 7 does not divide the input size \(C) of layer 0 q_proj")
        assertRefused(#"{"steps": 2, "exclude_layers": [0, 1, 2, 3]}"#, m, "'targets': no weight of the model matches outside 'exclude_layers'")
        assertRefused(#"{"steps": 2, "exclude_layers": [\#(m.layers.count)]}"#, m, "'exclude_layers': layer \(m.layers.count) outside 0..<\(m.layers.count)")
    }
}
