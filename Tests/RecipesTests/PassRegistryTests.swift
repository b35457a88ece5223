import Model
import Recipes
import XCTest

/// A pass that scales nothing and reports its setting, for the registry's tests.
struct EchoPass: CompressionPass {
    static let name = "echo"
    static let accepts: Set<WeightKind> = [.dense]
    var needs: PassNeeds { [.calibration] }
    let level: Int
    init(config: StrictObject) throws { level = try config.int("level", default: 1, in: 1...3) }
    func run(on model: DecoderModel, context: PassContext) throws -> (model: DecoderModel, diagnostics: JSONValue) {
        (model, .object(["level": .int(level), "windows": .int(context.calibration.count)]))
    }
}

final class PassRegistryTests: XCTestCase {
    func testRegistryRejectsDuplicatesAndUnknownNames() throws {
        var r = StageRegistry()
        try r.register(EchoPass.self)
        XCTAssertThrowsError(try r.register(EchoPass.self)) { XCTAssertTrue("\($0)".contains("registered twice"), "\($0)") }
        let stage = try StrictObject(try JSONValue.parse(#"{"level": 2}"#), at: "r.json, stage 1 (echo)")
        let pass = try r.make("echo", config: stage)
        XCTAssertEqual((pass as? EchoPass)?.level, 2)
        XCTAssertTrue(pass.needs.contains(.calibration))
        let other = try StrictObject(try JSONValue.parse("{}"), at: "r.json, stage 2 (nope)")
        XCTAssertThrowsError(try r.make("nope", config: other)) { XCTAssertTrue("\($0)".contains("unknown stage 'nope' (known: echo)"), "\($0)") }
    }

    func testStageSettingsAreStrict() throws {
        var r = StageRegistry()
        try r.register(EchoPass.self)
        for (text, fragment) in [(#"{"level": 4}"#, "out of range 1...3"), (#"{"levle": 2}"#, "unknown key 'levle'")] {
            let stage = try StrictObject(try JSONValue.parse(text), at: "recipes/x.json, stage 3 (echo)")
            XCTAssertThrowsError(try r.make("echo", config: stage)) { e in
                XCTAssertTrue("\(e)".contains(fragment) && "\(e)".contains("recipes/x.json, stage 3 (echo)"), "\(e)")
            }
        }
    }
}
