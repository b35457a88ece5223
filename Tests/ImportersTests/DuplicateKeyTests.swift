import Foundation
import JSONKeys
import Safetensors
import XCTest

/// A key repeated in one JSON object is an error wherever we read JSON (bug case 05).
final class DuplicateKeyTests: XCTestCase {
    func duplicate(_ text: String) -> DuplicateJSONKey? {
        do { try JSONKeys.checkUnique(Array(text.utf8)); return nil } catch { return error as? DuplicateJSONKey }
    }

    func testScanFindsRepeatsAtAnyDepthAndOnlyThere() {
        XCTAssertEqual(duplicate(#"{"a": 1, "b": {"c": [1, {"d": 2, "d": 3}]}}"#), DuplicateJSONKey(key: "d", path: "$.b.c[1]"))
        XCTAssertEqual(duplicate(#"{"a": 1, "\u0061": 2}"#), DuplicateJSONKey(key: "a", path: "$"))  // escapes resolved
        XCTAssertEqual(duplicate(#"{"x\"y": 1, "x\"y": 2}"#)?.key, "x\"y")
        XCTAssertNil(duplicate(#"{"a": {"a": 1}, "b": [{"a": 1}, {"a": 2}], "s": "\"a\": 1, \"a\": 2"}"#))
        XCTAssertNil(duplicate(#"[1, 2, "x"]"#))
        XCTAssertNil(duplicate(#"{"a": 1, "b" 2, "b": 3}"#))  // not JSON past "b": left to the parser
    }

    func testSafetensorsHeaderAndIndex() throws {
        let dir = try Fixtures.temporaryDirectory(self)
        // One tensor named twice (the first entry 1.0s, the second 2.0s): no entry may silently win.
        let header = #"{"model.norm.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "model.norm.weight": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}"#
        var bytes: [UInt8] = []
        withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { bytes += $0 }
        bytes += Array(header.utf8)
        for v: Float in [1, 1, 2, 2] { withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes += $0 } }
        let file = dir.appendingPathComponent("model.safetensors")
        try Data(bytes).write(to: file)
        XCTAssertThrowsError(try SafetensorsFile(path: file.path), containing: ["model.safetensors", "header", "key 'model.norm.weight' appears twice"])
        try FileManager.default.removeItem(at: file)
        let index = dir.appendingPathComponent("model.safetensors.index.json")
        try Data(#"{"weight_map": {"a": "s1.safetensors", "a": "s2.safetensors"}}"#.utf8).write(to: index)
        XCTAssertThrowsError(try SafetensorsDirectory(path: dir.path),
                             containing: ["model.safetensors.index.json", "key 'a' appears twice in the object at $.weight_map"])
    }
}
