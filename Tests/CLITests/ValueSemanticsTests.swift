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

    /// A session reads the base once and keeps the passes' analyses: a second target on the same base reuses
    /// the FinerCut order from memory (no disk cache here), and the base PPL is measured once.
    func testSessionReusesItsAnalysisAcrossTargets() throws {
        let (dir, text) = try makeRecipeDirectory()
        let session = try Session(checkpoint: fixture("tiny-llama.h5"), cacheDirectory: nil, progress: false)
        func run(_ remove: Int) throws -> Session.Result {
            let path = try recipe(dir, "r\(remove).json", text, stages: #"{"stage": "finercut", "remove": \#(remove)}, {"stage": "eval"}"#)
            return try session.run(try Recipe.read(path, registry: .standard()), label: path, statePrefix: dir.appendingPathComponent("o").path)
        }
        let one = try run(1), two = try run(2)
        XCTAssertEqual(one.reports[0].cacheMisses, ["finercut-order"])
        XCTAssertEqual(two.reports[0].cacheHits, ["finercut-order"], "the second target extends the order computed by the first")
        XCTAssertEqual(one.basePPL, two.basePPL)
        XCTAssertGreaterThan(session.analyses.count, 0)
        XCTAssertLessThan(two.model.parameterCount, one.model.parameterCount)
        // The order of the two-step run starts with the one-step run's removal.
        let order = { (r: Session.Result) in r.reports[0].diagnostics.objectValue?["order"]?.arrayValue?.compactMap { $0.objectValue?["sublayer"]?.intValue } ?? [] }
        XCTAssertEqual(order(one).count, 1)
        XCTAssertEqual(order(two).count, 2)
        XCTAssertEqual(Array(order(two).prefix(1)), order(one))
    }
}
