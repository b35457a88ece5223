import Foundation
import Model
import Passes
import Recipes
import TensorCore
import Workbench
import XCTest

final class RecipeTests: XCTestCase {
    static let recipesDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("recipes")

    func testEveryRecipeInTheRepositoryDecodes() throws {
        let files = try FileManager.default.contentsOfDirectory(atPath: Self.recipesDirectory.path).filter { $0.hasSuffix(".json") }.sorted()
        XCTAssertGreaterThanOrEqual(files.count, 3)
        for f in files {
            let r = try Recipe.read(Self.recipesDirectory.appendingPathComponent(f).path, registry: .standard())
            XCTAssertFalse(r.stages.isEmpty, f)
            XCTAssertNotNil(r.base, f)
            XCTAssertNotNil(r.output, f)
            XCTAssertEqual(r.name.map { $0 + ".json" }, f, "a recipe's name is its file name")
        }
    }

    func decode(_ text: String) throws -> Recipe {
        try Recipe(json: try JSONValue.parse(text), path: "recipes/bad.json", registry: .standard())
    }

    func testRecipeFieldsAndDefaults() throws {
        let r = try decode(#"""
        {"format": 1, "base": "b.h5", "calibration": {"samples": 4, "window": 64, "seed": 9},
         "stages": [{"stage": "minitron", "layers": 20}, {"stage": "distill", "steps": 5, "lr": 1e-3, "intermediate": [[1, 2]]}, {"stage": "eval"}]}
        """#)
        XCTAssertEqual(r.calibration.samples, 4)
        XCTAssertEqual(r.calibration.window, 64)
        XCTAssertEqual(r.calibration.seed, 9)
        XCTAssertEqual(r.calibration.text, "data/wiki.train.txt")
        XCTAssertEqual(r.evaluation.window, 2048)
        XCTAssertEqual(r.stages.map(\.name), ["minitron", "distill", "eval"])
        guard let d = r.stages[1].stage as? DistillStage else { return XCTFail("stage 2 is not distill") }
        XCTAssertEqual(d.config.steps, 5)
        XCTAssertEqual(d.config.lr, 1e-3)
        XCTAssertEqual(d.config.intermediate, [.init(student: 1, teacher: 2)])
        XCTAssertEqual(r.stages[0].settings, .object(["layers": .int(20)]))
    }

    func testBadRecipesNameFileStageAndKey() throws {
        let ok = #""calibration": {"samples": 2}"#
        let cases: [(String, String)] = [
            (#"{"stages": [{"stage": "eval"}]}"#, "recipes/bad.json: 'format': required"),
            (#"{"format": 2, "stages": [{"stage": "eval"}]}"#, "'format': 2 is not supported"),
            (#"{"format": 1}"#, "'stages': required"),
            (#"{"format": 1, "stages": [{"stage": "eval"}], "outptu": "x"}"#, "recipes/bad.json: unknown key 'outptu'"),
            (#"{"format": 1, "stages": [{"stage": "minitron", "layers": 2}]}"#, "stage 1 (minitron): needs calibration data"),
            (#"{"format": 1, \#(ok), "stages": [{"stage": "eval"}, {"stage": "prune"}]}"#, "stage 2 (prune): unknown stage 'prune' (known: cptquant, distill, dsformer, eval, export, finercut, lowrank, magnitude, maskllm, minitron, sparsegpt, vtrans, wanda)"),
            // Impossible orders, refused at decoding by what each stage accepts and produces.
            (#"{"format": 1, \#(ok), "stages": [{"stage": "cptquant", "bits_per_weight": 4}, {"stage": "eval"}, {"stage": "distill", "steps": 2}]}"#,
             "recipes/bad.json, stage 3 (distill): cannot take quantized weights, which stage 2 (eval) leaves"),
            (#"{"format": 1, \#(ok), "stages": [{"stage": "cptquant", "bits_per_weight": 4}, {"stage": "minitron", "layers": 2}]}"#,
             "recipes/bad.json, stage 2 (minitron): cannot take quantized weights, which stage 1 (cptquant) leaves; 'minitron' accepts dense"),
            (#"{"format": 1, \#(ok), "stages": [{"stage": "cptquant", "bits_per_weight": 4}, {"stage": "cptquant", "bits_per_weight": 3}]}"#,
             "stage 2 (cptquant): cannot take quantized weights"),
            (#"{"format": 1, \#(ok), "stages": [{"stage": "finercut", "fraction": 0.2, "metrc": "js"}]}"#, "recipes/bad.json, stage 1 (finercut): unknown key 'metrc'"),
            (#"{"format": 1, \#(ok), "stages": [{"stage": "finercut", "fraction": 2}]}"#, "stage 1 (finercut): 'fraction': 2.0 is out of range"),
            (#"{"format": 1, \#(ok), "stages": [{"stage": "minitron", "hidden": -4}]}"#, "stage 1 (minitron): 'hidden': -4 is out of range"),
            (#"{"format": 1, "stages": [{"stage": "distill"}]}"#, "stage 1 (distill): 'steps': required"),
            (#"{"format": 1, "stages": [{"stage": "distill", "steps": 3, "decay": "exp"}]}"#, "stage 1 (distill): 'decay': 'exp' is not one of"),
            (#"{"format": 1, "stages": [{"stage": "distill", "steps": 3, "intermediate": [[1]]}]}"#, "'intermediate'[0]: expected [student layer, teacher layer]"),
            (#"{"format": 1, "stages": [{"stage": "eval", "window": 5}]}"#, "stage 1 (eval): unknown key 'window'"),
            (#"{"format": 1, "calibration": {"samples": 0}, "stages": [{"stage": "eval"}]}"#, "'calibration': 'samples': 0 is out of range"),
            (#"{"format": 1, "stages": [{"pass": "eval"}]}"#, "stage 1: 'stage': required"),
            (#"{"format": 1, "stages": []}"#, "'stages': required"),
        ]
        for (text, fragment) in cases {
            XCTAssertThrowsError(try decode(text), text) { XCTAssertTrue("\($0)".contains(fragment), "\(text)\n-> \($0)") }
        }
        XCTAssertThrowsError(try Recipe.read("/nonexistent/r.json", registry: .standard())) { XCTAssertTrue("\($0)".contains("/nonexistent/r.json")) }
    }

    func testCalibrationWindowsAreDeterministicSlicesOfTheText() throws {
        var c = Recipe.Calibration()
        c.samples = 5; c.window = 7; c.seed = 11
        let tokens = (0..<100).map(Int32.init)
        let a = try c.windows(from: tokens, source: "t"), b = try c.windows(from: tokens, source: "t")
        XCTAssertEqual(a, b)
        XCTAssertEqual(a.count, 5)
        for w in a { XCTAssertEqual(w, Array(w[0]..<(w[0] + 7))) }  // contiguous slices
        c.seed = 12
        XCTAssertNotEqual(try c.windows(from: tokens, source: "t"), a)
        XCTAssertThrowsError(try c.windows(from: Array(tokens.prefix(6)), source: "short.txt")) { XCTAssertTrue("\($0)".contains("short.txt")) }
    }

    func testStatsCacheKeysOnScopeNameAndSettings() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stats-\(UUID().uuidString)").path
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        let scope: JSONValue = .object(["base": .string("abc"), "calibration": .int(1)])
        let a = StatsCache(directory: dir, scope: scope)
        var computed = 0
        let v1 = try a.value("s", settings: .string("x")) { computed += 1; return [1.5, 2.5] }
        let v2 = try StatsCache(directory: dir, scope: scope).value("s", settings: .string("x")) { computed += 1; return [9.0] }
        XCTAssertEqual(v1, v2)
        XCTAssertEqual(computed, 1)
        _ = try StatsCache(directory: dir, scope: scope).value("s", settings: .string("y")) { computed += 1; return [0.0] }
        _ = try StatsCache(directory: dir, scope: .object(["base": .string("abd")])).value("s", settings: .string("x")) { computed += 1; return [0.0] }
        XCTAssertEqual(computed, 3, "other settings or another scope are misses")
        // A corrupt entry reads as a miss, and is replaced.
        for f in try FileManager.default.contentsOfDirectory(atPath: dir) { try Data("{".utf8).write(to: URL(fileURLWithPath: dir + "/" + f)) }
        XCTAssertNil(StatsCache(directory: dir, scope: scope).load("s", settings: .string("x"), as: [Double].self))
    }

    func testContentHashIdentifiesBytes() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hash-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        let a = dir.appendingPathComponent("a").path, b = dir.appendingPathComponent("b").path
        try Data((0..<1001).map { UInt8($0 % 251) }).write(to: URL(fileURLWithPath: a))
        try Data((0..<1001).map { UInt8($0 % 251) }).write(to: URL(fileURLWithPath: b))
        XCTAssertEqual(try fileContentHash(a), try fileContentHash(b))
        var bytes = (0..<1001).map { UInt8($0 % 251) }
        bytes[1000] ^= 1  // the tail byte (not a whole word) counts too
        try Data(bytes).write(to: URL(fileURLWithPath: b))
        XCTAssertNotEqual(try fileContentHash(a), try fileContentHash(b))
    }
}
