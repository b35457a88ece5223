import Diagnostics
import Foundation
import Model
import Passes
import Recipes
import XCTest

/// Recipe errors state the file, the stage, the key path, and what was expected and found, as fields; their message
/// is the one the strict reader has always given.
final class RecipeErrorFieldsTests: XCTestCase {
    func decode(_ text: String) throws -> Recipe {
        try Recipe(json: try JSONValue.parse(text), path: "recipes/bad.json", registry: .passes())
    }

    func error(_ text: String, file: StaticString = #filePath, line: UInt = #line) -> (any Error)? {
        do { _ = try decode(text) } catch { return error }
        XCTFail("decoded", file: file, line: line)
        return nil
    }

    func testUnknownKeyOfAStage() throws {
        let e = try XCTUnwrap(error(#"{"format": 1, "stages": [{"stage": "eval"}, {"stage": "eval", "bitz": 4}]}"#))
        XCTAssertEqual("\(e)", "recipes/bad.json, stage 2 (eval): unknown key 'bitz' (known: stage)")
        XCTAssertEqual(e.errorContext, ErrorContext(file: "recipes/bad.json", stage: 2, stageName: "eval", key: "bitz",
                                                    expected: "one of stage", found: "'bitz'"))
    }

    func testWrongTypeAndRangeOfANestedKey() throws {
        let type = try XCTUnwrap(error(#"{"format": 1, "eval": {"window": "x"}, "stages": [{"stage": "eval"}]}"#))
        XCTAssertEqual("\(type)", #"recipes/bad.json: 'eval': 'window': expected an integer, found "x""#)
        XCTAssertEqual(type.errorContext, ErrorContext(file: "recipes/bad.json", key: "eval.window",
                                                       expected: "an integer", found: #""x""#))
        let samples = #"{"format": 1, "calibration": {"samples": 0}, "stages": [{"stage": "eval"}]}"#
        let range = try XCTUnwrap(error(samples))
        XCTAssertEqual(range.errorContext, ErrorContext(file: "recipes/bad.json", key: "calibration.samples",
                                                        expected: "1...100000", found: "0"))
    }

    /// A stage's own check (here minitron's: no target) gains the file and stage as fields, its text unchanged.
    func testAStagesOwnErrorGainsItsStage() throws {
        let e = try XCTUnwrap(error(#"{"format": 1, "stages": [{"stage": "eval"}, {"stage": "minitron"}]}"#))
        XCTAssertTrue("\(e)".hasPrefix("recipes/bad.json, stage 2 (minitron): no target"), "\(e)")
        XCTAssertEqual(e.errorContext, ErrorContext(file: "recipes/bad.json", stage: 2, stageName: "minitron"))
        let order = try XCTUnwrap(error(#"{"format": 1, "eval": {"protocol": "x"}, "stages": [{"stage": "eval"}]}"#))
        XCTAssertEqual(order.errorContext, ErrorContext(file: "recipes/bad.json", key: "eval.protocol",
                                                        expected: "one of pinned, llamacpp", found: "'x'"))
    }

    func testUnknownStageAndFormat() throws {
        let stage = try XCTUnwrap(error(#"{"format": 1, "stages": [{"stage": "gptq"}]}"#))
        XCTAssertEqual(stage.errorContext.stage, 1)
        XCTAssertEqual(stage.errorContext.key, "stage")
        XCTAssertEqual(stage.errorContext.found, "'gptq'")
        let format = try XCTUnwrap(error(#"{"format": 7, "stages": [{"stage": "eval"}]}"#))
        XCTAssertEqual("\(format)", "recipes/bad.json: 'format': 7 is not supported (this version reads format 1)")
        XCTAssertEqual(format.errorContext,
                       ErrorContext(file: "recipes/bad.json", key: "format", expected: "1", found: "7"))
    }
}
