import GGUF
import XCTest

final class GGUFMetadataTests: XCTestCase {
    func testHeaderAndLayout() throws {
        let file = try GGUFFile(path: Fixtures.path("quants.gguf"))
        XCTAssertEqual(file.version, 3)
        XCTAssertEqual(file.alignment, 64)
        XCTAssertEqual(file.dataOffset % 64, 0)
        XCTAssertEqual(file.tensors.count, 13)
        XCTAssertEqual(file.tensor(named: "t_q8_0_3d")?.shape, [32, 3, 3])
        XCTAssertEqual(file.tensor(named: "t_q8_0_3d")?.rowMajorShape, [3, 3, 32])
        XCTAssertEqual(try GGUFFile(path: Fixtures.path("llama_tiny.gguf")).alignment, 32)
    }

    func testEveryScalarValueType() throws {
        let m = try GGUFFile(path: Fixtures.path("quants.gguf")).metadata
        XCTAssertEqual(m["test.uint8"], .uint8(200))
        XCTAssertEqual(m["test.int8"], .int8(-100))
        XCTAssertEqual(m["test.uint16"], .uint16(60000))
        XCTAssertEqual(m["test.int16"], .int16(-30000))
        XCTAssertEqual(m["test.uint32"], .uint32(4_000_000_000))
        XCTAssertEqual(m["test.int32"], .int32(-2_000_000_000))
        XCTAssertEqual(m["test.uint64"], .uint64(1 << 63 + 5))
        XCTAssertEqual(m["test.int64"], .int64(-(1 << 62) - 7))
        XCTAssertEqual(m["test.float32"], .float32(1.5))
        XCTAssertEqual(m["test.float64"], .float64(3.141592653589793))
        XCTAssertEqual(m["test.bool"], .bool(true))
        XCTAssertEqual(m["test.string"], .string("héllo ✓"))
        XCTAssertEqual(m["general.architecture"], .string("fixture"))
        XCTAssertEqual(m["general.alignment"], .uint32(64))
    }

    func testArraysIncludingNested() throws {
        let m = try GGUFFile(path: Fixtures.path("quants.gguf")).metadata
        XCTAssertEqual(m["test.array_u8"], .array([.uint8(1), .uint8(2), .uint8(255)]))
        XCTAssertEqual(m["test.array_i64"], .array([.int64(-1), .int64(1 << 40)]))
        XCTAssertEqual(m["test.array_f64"], .array([.float64(0.25), .float64(-1e300)]))
        XCTAssertEqual(m["test.array_str"], .array([.string("a"), .string("bc"), .string("")]))
        XCTAssertEqual(m["test.array_f32"], .array([.float32(0.5), .float32(-2)]))
        XCTAssertEqual(m["test.array_bool"], .array([.bool(true), .bool(false), .bool(true)]))
        XCTAssertEqual(m["test.nested_i32"], .array([.array([.int32(1), .int32(2)]), .array([.int32(3)]),
                                                     .array([.int32(4), .int32(5), .int32(6)])]))
        XCTAssertEqual(m["test.nested_str"], .array([.array([.string("x")]), .array([.string("y"), .string("z")])]))
    }

    func testAccessorsAndTypeErrors() throws {
        let file = try GGUFFile(path: Fixtures.path("quants.gguf"))
        XCTAssertEqual(try file.string("test.string"), "héllo ✓")
        XCTAssertEqual(try file.int("test.uint32"), 4_000_000_000)
        XCTAssertEqual(try file.int("test.int8"), -100)
        XCTAssertEqual(try file.double("test.float64"), 3.141592653589793)
        XCTAssertEqual(try file.float("test.uint16"), 60000)
        XCTAssertEqual(try file.bool("test.bool"), true)
        XCTAssertEqual(try file.strings("test.array_str"), ["a", "bc", ""])
        XCTAssertNil(try file.ifPresent("test.absent", file.int))
        XCTAssertEqual(try file.ifPresent("test.int16", file.int), -30000)
        XCTAssertThrowsError(try file.int("test.string"), containing: ["quants.gguf", "test.string", "expected integer", "found string"])
        XCTAssertThrowsError(try file.string("test.absent"), containing: ["test.absent", "missing"])
        XCTAssertThrowsError(try file.strings("test.array_u8"), containing: ["test.array_u8", "array of strings", "array of uint8"])
        XCTAssertThrowsError(try file.ifPresent("test.bool", file.double), containing: ["test.bool", "expected number", "found bool"])
        XCTAssertThrowsError(try file.int("test.uint64"), containing: ["test.uint64"])  // 2^63 + 5 does not fit Int
    }
}
