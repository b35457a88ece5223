import Foundation
import Safetensors
import XCTest

final class SafetensorsTests: XCTestCase {
    private func checkDirectory(_ name: String, shards: Int) throws {
        let dir = try SafetensorsDirectory(path: Fixtures.path("safetensors/\(name)"))
        let expected = try XCTUnwrap(Fixtures.json("safetensors/reference.json")[name] as? [String: [String: Any]])
        let reference = try Fixtures.floats("safetensors/reference.bin")
        XCTAssertEqual(dir.files.count, shards)
        XCTAssertEqual(dir.tensorNames, expected.keys.sorted())
        XCTAssertEqual(dir.config["model_type"] as? String, "llama")
        XCTAssertEqual(dir.config["hidden_size"] as? Int, 8)
        for (tensor, entry) in expected {
            let info = try dir.info(tensor)
            XCTAssertEqual(info.dtype.rawValue, entry["dtype"] as? String)
            XCTAssertEqual(info.shape, entry["shape"] as? [Int])
            let offset = try XCTUnwrap(entry["ref_offset"] as? Int), count = try XCTUnwrap(entry["count"] as? Int)
            let values = try dir.floats(tensor)
            XCTAssertEqual(values.count, count)
            for (i, v) in values.enumerated() {
                XCTAssertEqual(ulpDistance(v, reference[offset + i]), 0, "\(name)/\(tensor)[\(i)]: \(v) vs \(reference[offset + i])")
            }
        }
    }

    func testSingleF32() throws {
        try checkDirectory("single_f32", shards: 1)
        let file = try SafetensorsFile(path: Fixtures.path("safetensors/single_f32/model.safetensors"))
        XCTAssertEqual(file.metadata, ["format": "pt", "note": "fixture"])
        XCTAssertEqual(try file.info("scalar").shape, [])
        XCTAssertEqual(try file.floats("scalar"), [3.25])
    }

    func testBF16() throws { try checkDirectory("bf16", shards: 1) }

    func testF16IncludingSpecialValues() throws {
        try checkDirectory("f16", shards: 1)
        let values = try SafetensorsDirectory(path: Fixtures.path("safetensors/f16")).floats("model.norm.weight")
        XCTAssertEqual(values[2], 0x1p-24)
        XCTAssertEqual(values[4], 65504)
        XCTAssertEqual(values[5], .infinity)
        XCTAssertTrue(values[7].isNaN)
        XCTAssertEqual(values[1].sign, .minus)
    }

    func testSharded() throws { try checkDirectory("sharded", shards: 2) }
}

/// Hand-made broken safetensors files and directories.
final class SafetensorsErrorTests: XCTestCase {
    private var scratch: URL!

    override func setUpWithError() throws {
        scratch = try Fixtures.temporaryDirectory(self)
    }

    /// Writes a file with `header` as its JSON header followed by `dataBytes` zero bytes.
    private func file(_ header: String, dataBytes: Int = 16, name: String = "model.safetensors", in dir: URL? = nil) throws -> String {
        var bytes: [UInt8] = []
        let json = Array(header.utf8)
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { bytes += $0 }
        bytes += json + [UInt8](repeating: 0, count: dataBytes)
        let url = (dir ?? scratch).appendingPathComponent(name)
        try Data(bytes).write(to: url)
        return url.path
    }

    func testHeaderErrors() throws {
        XCTAssertThrowsError(try SafetensorsFile(path: file("{}").replacingOccurrences(of: "model", with: "absent")),
                             containing: ["absent.safetensors", "cannot open"])
        let tiny = scratch.appendingPathComponent("tiny.safetensors")
        try Data([1, 2, 3]).write(to: tiny)
        XCTAssertThrowsError(try SafetensorsFile(path: tiny.path), containing: ["tiny.safetensors", "truncated", "8-byte header length"])
        var huge = [UInt8](repeating: 0xFF, count: 8)
        huge += Array("{}".utf8)
        try Data(huge).write(to: tiny)
        XCTAssertThrowsError(try SafetensorsFile(path: tiny.path), containing: ["header length 18446744073709551615 exceeds"])
        XCTAssertThrowsError(try SafetensorsFile(path: file("[1, 2]")), containing: ["header is not a JSON object"])
        XCTAssertThrowsError(try SafetensorsFile(path: file("{\"__metadata__\": {\"a\": 1}}")), containing: ["__metadata__"])
    }

    func testTensorEntryErrors() throws {
        XCTAssertThrowsError(try SafetensorsFile(path: file(#"{"w": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}"#)),
                             containing: ["model.safetensors", "tensor 'w'", "unknown dtype 'F4'", "convertible to Float: F32, F16, BF16"])
        XCTAssertThrowsError(try SafetensorsFile(path: file(#"{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}"#)),
                             containing: ["tensor 'w'", "needs 8 bytes, data_offsets span 4"])
        XCTAssertThrowsError(try SafetensorsFile(path: file(#"{"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}"#)),
                             containing: ["tensor 'w'", "non-negative"])
        XCTAssertThrowsError(try SafetensorsFile(path: file(#"{"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}"#)),
                             containing: ["tensor 'w'", "data_offsets"])
        XCTAssertThrowsError(try SafetensorsFile(path: file(#"{"w": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}"#)),
                             containing: ["truncated: tensor 'w' data_offsets end at 32, but the data section has 16 bytes"])
        XCTAssertThrowsError(try SafetensorsFile(path: file(#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F16", "shape": [2], "data_offsets": [4, 8]}}"#)),
                             containing: ["tensors 'a'", "'b'", "overlap"])
    }

    func testUnsupportedDtypeOnRead() throws {
        let f = try SafetensorsFile(path: file(#"{"ids": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}}"#))
        XCTAssertEqual(try f.info("ids").dtype, .i64)
        XCTAssertThrowsError(try f.floats("ids"), containing: ["model.safetensors", "tensor 'ids'", "dtype I64", "supported: F32, F16, BF16"])
        XCTAssertThrowsError(try f.floats("nope"), containing: ["no tensor named 'nope'"])
    }

    func testDirectoryErrors() throws {
        XCTAssertThrowsError(try SafetensorsDirectory(path: scratch.path), containing: ["expected model.safetensors or model.safetensors.index.json"])
        _ = try file(#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}"#, name: "shard1.safetensors")
        let index = scratch.appendingPathComponent("model.safetensors.index.json")
        try Data(#"{"weight_map": {"a": "shard1.safetensors", "b": "shard1.safetensors"}}"#.utf8).write(to: index)
        XCTAssertThrowsError(try SafetensorsDirectory(path: scratch.path),
                             containing: ["shard1.safetensors", "tensor 'b' is listed in model.safetensors.index.json but missing from this shard"])
        try Data(#"{"weight_map": {"a": "../shard1.safetensors"}}"#.utf8).write(to: index)
        XCTAssertThrowsError(try SafetensorsDirectory(path: scratch.path), containing: ["not a plain file name"])
        try Data(#"{"weight_map": {"a": "shard2.safetensors"}}"#.utf8).write(to: index)
        XCTAssertThrowsError(try SafetensorsDirectory(path: scratch.path), containing: ["shard2.safetensors", "cannot open"])
        try Data(#"{"weight_map": {"a": "shard1.safetensors"}}"#.utf8).write(to: index)
        try Data("{not json".utf8).write(to: scratch.appendingPathComponent("config.json"))
        XCTAssertThrowsError(try SafetensorsDirectory(path: scratch.path), containing: ["config.json", "expected a JSON object"])
        try Data("{}".utf8).write(to: scratch.appendingPathComponent("config.json"))
        let dir = try SafetensorsDirectory(path: scratch.path)
        XCTAssertEqual(dir.tensorNames, ["a"])
        XCTAssertEqual(try dir.floats("a"), [0, 0])
        XCTAssertThrowsError(try dir.floats("b"), containing: ["no tensor named 'b' in the directory"])
    }
}
