import Model
import Recipes
import XCTest

final class StrictObjectTests: XCTestCase {
    func object(_ text: String) throws -> StrictObject { try StrictObject(try JSONValue.parse(text), at: "r.json, stage 1 (demo)") }

    func testValuesDefaultsAndRanges() throws {
        let o = try object(#"{"n": 3, "x": 0.5, "flag": true, "name": "cosine", "sub": {"k": 2}}"#)
        XCTAssertEqual(try o.int("n", in: 1...8), 3)
        XCTAssertEqual(try o.double("x", in: 0...1), 0.5)
        XCTAssertEqual(try o.bool("flag"), true)
        XCTAssertEqual(try o.string("name", oneOf: ["cosine", "mse"]), "cosine")
        XCTAssertEqual(try o.int("missing", default: 7), 7)
        let sub = try XCTUnwrap(try o.object("sub"))
        XCTAssertEqual(try sub.int("k"), 2)
        try sub.finish()
        try o.finish()
    }

    func testErrorsNameTheLocationAndKey() throws {
        func fails(_ text: String, _ read: (StrictObject) throws -> Void, _ fragments: [String]) throws {
            let o = try object(text)
            XCTAssertThrowsError(try { try read(o); try o.finish() }()) { e in
                for f in fragments + ["r.json, stage 1 (demo)"] { XCTAssertTrue("\(e)".contains(f), "'\(f)' not in: \(e)") }
            }
        }
        try fails(#"{"n": 9}"#, { _ = try $0.int("n", in: 1...8) }, ["'n'", "out of range 1...8"])
        try fails(#"{"n": "3"}"#, { _ = try $0.int("n") }, ["'n'", "expected an integer"])
        try fails(#"{"x": 1.5}"#, { _ = try $0.double("x", in: 0...1) }, ["'x'", "out of range"])
        try fails(#"{"m": "l3"}"#, { _ = try $0.string("m", oneOf: ["l1", "l2"]) }, ["'m'", "'l3' is not one of l1, l2"])
        try fails(#"{}"#, { _ = try $0.int("steps") }, ["'steps'", "required"])
        try fails(#"{"n": 1, "typo": 2}"#, { _ = try $0.int("n") }, ["unknown key 'typo'", "known: n"])
        try fails(#"{"sub": {"a": 1}}"#, { o in let s = try o.object("sub")!; try s.finish() }, ["'sub'", "unknown key 'a'"])
        XCTAssertThrowsError(try object("[1, 2]")) { XCTAssertTrue("\($0)".contains("expected a JSON object"), "\($0)") }
    }
}
