import Foundation
import Model
import Recipes
import XCTest
@testable import Checkpoint
@testable import Workbench

/// Models are values: no stage changes its input or the teacher.
extension CLITests {
    /// A recipe whose only stage is `distill` (KL and CE): the teacher is the base, which training must not
    /// touch. Step 1 starts from student = teacher, so its KL is 0; after the first update the student has
    /// moved and the teacher has not, so KL > 0. The base, in the session and on disk, is unchanged.
    func testDistillOnlyRecipeLeavesTheTeacherUnchanged() throws {
        let (dir, text) = try makeRecipeDirectory()
        let stages = #"{"stage": "distill", "steps": 4, "batch": 2, "window": 16, "lr": 1e-2, "warmup": 0, "kl_weight": 1, "ce_weight": 1, "log_every": 1, "save_every": 0, "text": "\#(text)"}"#
        let path = try recipe(dir, "d.json", text, stages: stages)
        let base = fixture("tiny-llama.h5")
        let hashBefore = try fileContentHash(base)
        let session = try Session(checkpoint: base, cacheDirectory: nil, progress: false)
        let before = session.base.model.namedTensors.map { $0.tensor.array }
        let recipe = try Recipe.read(path, registry: .standard())
        let r = try session.run(recipe, label: path, statePrefix: dir.appendingPathComponent("out.h5").path)
        let log = try XCTUnwrap(r.reports[0].diagnostics.objectValue?["log"]?.arrayValue?.compactMap { $0.objectValue?["kl"]?.doubleValue })
        XCTAssertEqual(log.count, 4)
        XCTAssertEqual(log[0], 0, accuracy: 1e-12, "step 1: the student is still the teacher")
        XCTAssertTrue(log.dropFirst().allSatisfy { $0 > 1e-6 }, "KL after the first update: \(log)")
        XCTAssertEqual(session.base.model.namedTensors.map { $0.tensor.array }, before, "the teacher (the base) is unchanged")
        XCTAssertNotEqual(r.model.namedTensors.map { $0.tensor.array }, before, "the student trained")
        XCTAssertEqual(try fileContentHash(base), hashBefore)
    }
}
