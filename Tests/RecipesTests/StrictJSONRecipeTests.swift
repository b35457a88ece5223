import Foundation
import JSONKeys
import Model
import Recipes
import Training
import XCTest

/// Every JSON we read goes through one strict step (`JSONKeys.strictText`): bytes that are not UTF-8 are refused
/// with their offset, and a number past a 64-bit float's range with its key path, instead of Foundation's
/// misleading "expected Dictionary … found an array" somewhere above it (issue "Reliability, second round", 4 and 5).
final class StrictJSONRecipeTests: XCTestCase {
    func write(_ bytes: [UInt8]) throws -> String {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("recipe-strict-\(UUID().uuidString).json")
        addTeardownBlock { try? FileManager.default.removeItem(at: file) }
        try Data(bytes).write(to: file)
        return file.path
    }

    func assertRefused(_ text: [UInt8], _ fragments: [String], line: UInt = #line) throws {
        let path = try write(text)
        XCTAssertThrowsError(try Recipe.read(path, registry: .passes()), line: line) { error in
            for f in [path] + fragments { XCTAssertTrue("\(error)".contains(f), "missing '\(f)' in: \(error)", line: line) }
        }
    }

    func testOverflowingNumberNamesTheKeyPathAnywhere() throws {
        try assertRefused(Array(#"{"format": 1, "stages": [{"stage": "distill", "steps": 2, "lr": 1e400}]}"#.utf8),
                          ["$.stages[0].lr: number 1e400 overflows a 64-bit float"])
        try assertRefused(Array(#"{"format": 1, "calibration": {"seed": -2E+999}, "stages": []}"#.utf8),
                          ["$.calibration.seed: number -2E+999 overflows"])
        // Underflow to zero is a finite number (as in Python's json): left to the range checks.
        XCTAssertNoThrow(try JSONKeys.validate(Array(#"{"x": 1e-400}"#.utf8)))
    }

    /// 513 nested arrays overflowed the stack of the recursive decoder (found by fuzz-recipe; the input is kept in
    /// Fuzz/corpus/recipe): nesting beyond 128 levels is refused, naming where.
    func testDeepNestingIsRefusedNotAStackOverflow() throws {
        try assertRefused(Array(repeating: UInt8(ascii: "["), count: 5000) + Array(repeating: UInt8(ascii: "]"), count: 5000),
                          ["nested deeper than 128 arrays and objects"])
        let deep = #"{"format": 1, "stages": [{"stage": "eval", "x": "# + String(repeating: "[", count: 127)
        try assertRefused(Array(deep.utf8), [#"$.stages[0].x[0]"#, "nested deeper than 128"])
        XCTAssertNoThrow(try JSONKeys.validate(Array((String(repeating: "[", count: 128) + String(repeating: "]", count: 128)).utf8)))
    }

    func testInvalidUTF8NamesTheByteOffset() throws {
        var bytes = Array(#"{"format": 1, "name": "ab"#.utf8)
        let offset = bytes.count
        bytes += [0xC3, 0x28] + Array(#"", "stages": [{"stage": "eval"}]}"#.utf8)  // 0xC3 needs a continuation byte
        try assertRefused(bytes, ["not valid UTF-8 at byte offset \(offset) (byte 0xC3)"])
    }

    func testUTF8ValidatorRefusesOverlongSurrogateAndOutOfRange() {
        let cases: [([UInt8], Int)] = [([0x61, 0xC0, 0xAF], 1), ([0xED, 0xA0, 0x80], 0), ([0x20, 0xF4, 0x90, 0x80, 0x80], 1), ([0xE2, 0x82], 0)]
        for (bytes, offset) in cases {
            XCTAssertThrowsError(try JSONKeys.utf8Text(bytes)) { XCTAssertEqual(($0 as? InvalidUTF8)?.offset, offset) }
        }
        XCTAssertEqual(try JSONKeys.utf8Text(Array("é▁😀".utf8)), "é▁😀")
    }

    /// `distill --groups` is read like a recipe: a misspelled key was dropped by the Codable decoder.
    func testGroupsRefuseUnknownKeysAndOverflow() throws {
        XCTAssertEqual(try ParameterGroup.strictList(#"[{"match": "*.q_proj.*", "lr": 0.001}, {"match": "x", "frozen": true}]"#, source: "--groups"),
                       [ParameterGroup(match: "*.q_proj.*", lr: 0.001), ParameterGroup(match: "x", frozen: true)])
        for (text, fragments) in [
            (#"[{"match": "*", "lrr": 0.1}]"#, ["--groups, group 1", "unknown key 'lrr'", "lr", "weight_decay"]),
            (#"[{"match": "*", "lr": 1e400}]"#, ["--groups", "$[0].lr: number 1e400 overflows"]),
            (#"[{"lr": 0.1}]"#, ["--groups, group 1", "'match': required"]),
            (#"{"match": "*"}"#, ["--groups: expected a JSON array"]),
        ] {
            XCTAssertThrowsError(try ParameterGroup.strictList(text, source: "--groups")) { error in
                for f in fragments { XCTAssertTrue("\(error)".contains(f), "missing '\(f)' in: \(error)") }
            }
        }
    }
}
