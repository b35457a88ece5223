import GGUF
import XCTest

/// Every dequantizer against gguf-py's `gguf.quants.dequantize` on the same bytes (see tools/make_gguf_fixtures.py).
final class GGUFDequantizeTests: XCTestCase {
    func testEveryTypeMatchesReferenceBitExactly() throws {
        let file = try GGUFFile(path: Fixtures.path("quants.gguf"))
        let manifest = try Fixtures.json("quants.json")
        let reference = try Fixtures.floats("quants.ref.bin")
        let entries = try XCTUnwrap(manifest["tensors"] as? [[String: Any]])
        var covered = Set<GGMLType>()
        for entry in entries {
            let name = try XCTUnwrap(entry["name"] as? String)
            let info = try XCTUnwrap(file.tensor(named: name))
            XCTAssertEqual(info.type.name, entry["type"] as? String, name)
            XCTAssertEqual(info.shape, entry["shape"] as? [Int], name)
            let offset = try XCTUnwrap(entry["ref_offset"] as? Int), count = try XCTUnwrap(entry["count"] as? Int)
            let values = try file.dequantize(info)
            XCTAssertEqual(values.count, count, name)
            var worst: UInt32 = 0
            for (i, v) in values.enumerated() { worst = max(worst, ulpDistance(v, reference[offset + i])) }
            XCTAssertEqual(worst, 0, "\(name): max ulp error \(worst)")
            covered.insert(info.type)
        }
        XCTAssertEqual(covered, Set(GGMLType.dequantizable), "fixture should cover every supported type")
        XCTAssertEqual(GGMLType.dequantizable.map(\.name),
                       ["F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "BF16"])
    }

    func testBlockSizesAndIdsMatchGGML() throws {
        let manifest = try Fixtures.json("quants.json")
        let sizes = try XCTUnwrap(manifest["quant_sizes"] as? [String: [Int]])
        let ids = try XCTUnwrap(manifest["type_ids"] as? [String: Int])
        for type in GGMLType.allCases {
            XCTAssertEqual(sizes[type.name], [type.blockElements, type.blockBytes], type.name)
            XCTAssertEqual(ids[type.name], Int(type.rawValue), type.name)
        }
        // Hand-checked against ggml's block structs.
        XCTAssertEqual(GGMLType.q4_1.blockBytes, 20)
        XCTAssertEqual(GGMLType.q8_0.blockBytes, 34)
        XCTAssertEqual(GGMLType.q4_K.blockBytes, 144)
        XCTAssertEqual(GGMLType.q5_K.blockBytes, 176)
        XCTAssertEqual(GGMLType.q6_K.blockBytes, 210)
    }

    func testUnsupportedTypeNamesTensorTypeAndSupportedList() throws {
        let file = try GGUFFile(path: Fixtures.path("quants.gguf"))
        let info = try XCTUnwrap(file.tensor(named: "t_unsupported_q2_k"))
        XCTAssertEqual(info.type, .q2_K)
        XCTAssertThrowsError(try file.dequantize(info),
                             containing: ["quants.gguf", "t_unsupported_q2_k", "Q2_K", "id 10", "supported:", "Q4_K", "BF16"])
    }

    func testForeignTensorInfoIsRejected() throws {
        let a = try GGUFFile(path: Fixtures.path("quants.gguf"))
        let b = try GGUFFile(path: Fixtures.path("llama_tiny.gguf"))
        let foreign = try XCTUnwrap(b.tensor(named: "token_embd.weight"))
        XCTAssertThrowsError(try a.dequantize(foreign), containing: ["token_embd.weight", "not a tensor of this file"])
    }
}
