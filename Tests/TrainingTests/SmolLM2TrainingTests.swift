import Foundation
import Import
import Model
import XCTest
@testable import Training

/// The training machinery on the real model (SmolLM2-135M: tied 49152-token head, 9 query / 3 KV heads).
/// Needs SMOLLM2_GGUF (tools/test.sh sets it after fetching the wheel).
final class SmolLM2TrainingTests: XCTestCase {
    func testDistillingALayerDroppedStudentLowersItsKL() throws {
        guard let gguf = ProcessInfo.processInfo.environment["SMOLLM2_GGUF"] else {
            throw XCTSkip("SMOLLM2_GGUF not set (tools/test.sh fetches the model)")
        }
        let teacher = try Importer.load(gguf).model
        let teacherUp = teacher.layers[0].mlp!.up.dequantized().array
        let student = try teacher.removingLayers([5, 12, 13, 14, 17, 18])
        XCTAssertEqual(student.layers.count, 24)
        let passage = try JSONSerialization.jsonObject(with: Data(contentsOf: Fixtures.directory.appendingPathComponent("smollm2-reference.json"))) as! [String: Any]
        let ids = (passage["ids"] as! [Int]).map(Int32.init)
        let W = 48
        var c = DistillConfig()
        c.steps = 4; c.batch = 1; c.window = W; c.lr = 3e-4; c.warmup = 0; c.decay = .constant
        let d = try Distiller(teacher: teacher, student: student, config: c, trainTokens: ids)
        let batch = Array(ids.prefix(W))
        let before = d.evaluateLoss(batch).kl
        for _ in 0..<4 { d.trainStep(batches: [batch]) }
        let after = d.evaluateLoss(batch).kl
        XCTAssertLessThan(after, 0.7 * before, "KL \(before) -> \(after)")  // observed 1.129 -> 0.409
        XCTAssertEqual(teacher.layers[0].mlp!.up.dequantized().array, teacherUp)  // the teacher is only read
        XCTAssertEqual(student.layers[0].mlp!.up.dequantized().array, teacherUp)  // the student given is a value
        XCTAssertNotEqual(d.student.layers[0].mlp!.up.dequantized().array, teacherUp)  // the trained copy moved
    }
}
