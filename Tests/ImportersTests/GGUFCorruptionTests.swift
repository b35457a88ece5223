import Foundation
import GGUF
import XCTest

/// Little-endian GGUF byte builder for hand-made (mostly broken) files.
struct GGUFBytes {
    var bytes: [UInt8] = []

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func string(_ s: String) { u64(UInt64(s.utf8.count)); bytes += s.utf8 }
    mutating func header(version: UInt32 = 3, tensors: UInt64, kvs: UInt64) {
        bytes += Array("GGUF".utf8); u32(version); u64(tensors); u64(kvs)
    }
    mutating func tensor(_ name: String, _ dims: [UInt64], type: UInt32 = 0, offset: UInt64 = 0) {
        string(name); u32(UInt32(dims.count)); dims.forEach { u64($0) }; u32(type); u64(offset)
    }
    mutating func pad(to alignment: Int = 32) {
        while bytes.count % alignment != 0 { bytes.append(0) }
    }
}

final class GGUFCorruptionTests: XCTestCase {
    private var scratch: URL!

    override func setUpWithError() throws {
        scratch = try Fixtures.temporaryDirectory(self)
    }

    private func write(_ bytes: [UInt8], _ name: String = "t.gguf") throws -> String {
        let url = scratch.appendingPathComponent(name)
        try Data(bytes).write(to: url)
        return url.path
    }

    private func fixtureBytes() throws -> [UInt8] {
        [UInt8](try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("quants.gguf"))))
    }

    func testBadMagicAndVersions() throws {
        var bytes = try fixtureBytes()
        bytes[0] = 0x58
        XCTAssertThrowsError(try GGUFFile(path: write(bytes)), containing: ["t.gguf", "expected magic 'GGUF'", "58 47 55 46"])
        bytes = try fixtureBytes()
        bytes[4] = 1
        XCTAssertThrowsError(try GGUFFile(path: write(bytes)), containing: ["expected GGUF version 2 or 3, found 1"])
        bytes[4] = 2  // v2 has the same layout as v3
        let v2 = try GGUFFile(path: write(bytes))
        XCTAssertEqual(v2.version, 2)
        XCTAssertEqual(try v2.dequantize(XCTUnwrap(v2.tensor(named: "t_q4_1"))).count, 480)
        XCTAssertThrowsError(try GGUFFile(path: write([])), containing: ["truncated", "magic"])
        XCTAssertThrowsError(try GGUFFile(path: scratch.appendingPathComponent("missing.gguf").path),
                             containing: ["missing.gguf", "cannot open: No such file"])
    }

    func testEveryTruncationFailsCleanly() throws {
        let bytes = try fixtureBytes()
        let path = try write(bytes)
        let intact = try GGUFFile(path: path)
        // The writer pads after the last tensor; cutting that padding leaves a valid file.
        let dataEnd = intact.tensors.map { intact.dataOffset + $0.offset + $0.byteCount }.max() ?? 0
        XCTAssertLessThan(dataEnd, bytes.count)
        for length in 0..<dataEnd {
            try Data(bytes[0..<length]).write(to: URL(fileURLWithPath: path))
            XCTAssertThrowsError(try GGUFFile(path: path), "prefix \(length)") { error in
                XCTAssertTrue(error is GGUFError && "\(error)".hasPrefix(path), "\(error)")
            }
        }
        try Data(bytes[0..<dataEnd]).write(to: URL(fileURLWithPath: path))
        XCTAssertNoThrow(try GGUFFile(path: path))
        try Data(bytes[0..<(dataEnd - 5)]).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try GGUFFile(path: path), containing: [
            "truncated: tensor 't_unsupported_q2_k' data ends at byte \(dataEnd), but the file has \(dataEnd - 5) bytes",
        ])
        try Data(bytes[0..<760]).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try GGUFFile(path: path), containing: ["truncated", "metadata 'test.nested_i32'"])
    }

    func testAbsurdCountsAreRejectedWithoutAllocating() throws {
        var b = GGUFBytes()
        b.header(tensors: 1 << 60, kvs: 0)
        XCTAssertThrowsError(try GGUFFile(path: write(b.bytes)), containing: ["tensor count is 1152921504606846976"])
        b = GGUFBytes()
        b.header(tensors: 0, kvs: UInt64.max)
        XCTAssertThrowsError(try GGUFFile(path: write(b.bytes)), containing: ["metadata count is 18446744073709551615"])
        b = GGUFBytes()
        b.header(tensors: 0, kvs: 1); b.u64(1 << 62); b.bytes += [UInt8](repeating: 0, count: 16)
        XCTAssertThrowsError(try GGUFFile(path: write(b.bytes)), containing: ["length of key of metadata entry 0"])
        b = GGUFBytes()
        b.header(tensors: 0, kvs: 1); b.string("k"); b.u32(9); b.u32(10); b.u64(1 << 50)
        XCTAssertThrowsError(try GGUFFile(path: write(b.bytes)), containing: ["element count of metadata 'k'", "1125899906842624"])
        b = GGUFBytes()
        b.header(tensors: 0, kvs: 1); b.string("k"); b.u32(8); b.u64(100); b.bytes += Array("short".utf8)
        XCTAssertThrowsError(try GGUFFile(path: write(b.bytes)), containing: ["length of metadata 'k' is 100"])
    }

    func testMalformedMetadata() throws {
        var b = GGUFBytes()
        b.header(tensors: 0, kvs: 1); b.string("k"); b.u32(13); b.u32(0)
        XCTAssertThrowsError(try GGUFFile(path: write(b.bytes)), containing: ["metadata 'k'", "expected value type 0...12", "found 13"])
        b = GGUFBytes()
        b.header(tensors: 0, kvs: 1); b.string("k"); b.u32(7); b.u8(2)
        XCTAssertThrowsError(try GGUFFile(path: write(b.bytes)), containing: ["metadata 'k'", "expected bool 0 or 1, found 2"])
        b = GGUFBytes()
        b.header(tensors: 0, kvs: 1); b.string("deep"); b.u32(9)
        for _ in 0..<40 { b.u32(9); b.u64(1) }
        XCTAssertThrowsError(try GGUFFile(path: write(b.bytes)), containing: ["metadata 'deep'", "nested deeper than"])
        b = GGUFBytes()
        b.header(tensors: 0, kvs: 2); b.string("k"); b.u32(0); b.u8(1); b.string("k"); b.u32(0); b.u8(2)
        XCTAssertThrowsError(try GGUFFile(path: write(b.bytes)), containing: ["metadata key 'k' appears twice"])
        b = GGUFBytes()
        b.header(tensors: 0, kvs: 1); b.string("general.alignment"); b.u32(4); b.u32(24)
        XCTAssertThrowsError(try GGUFFile(path: write(b.bytes)), containing: ["general.alignment", "power of two", "24"])
    }

    func testMalformedTensorInfos() throws {
        func file(_ build: (inout GGUFBytes) -> Void, data: Int = 64) throws -> String {
            var b = GGUFBytes()
            b.header(tensors: 1, kvs: 0)
            build(&b)
            b.pad()
            b.bytes += [UInt8](repeating: 0, count: data)
            return try write(b.bytes)
        }
        XCTAssertThrowsError(try GGUFFile(path: file { $0.tensor("w", [4], type: 99) }),
                             containing: ["tensor 'w'", "unknown ggml type id 99", "known:", "Q4_K=12"])
        XCTAssertThrowsError(try GGUFFile(path: file { $0.tensor("w", [1, 1, 1, 1, 1]) }),
                             containing: ["tensor 'w'", "at most 4 dimensions, found 5"])
        XCTAssertThrowsError(try GGUFFile(path: file { $0.tensor("w", [1 << 30, 1 << 30]) }),
                             containing: ["tensor 'w'", "absurd element count"])
        XCTAssertThrowsError(try GGUFFile(path: file { $0.tensor("w", [4], offset: 8) }),
                             containing: ["tensor 'w'", "offset 8 is not a multiple of the alignment 32"])
        XCTAssertThrowsError(try GGUFFile(path: file { $0.tensor("w", [33], type: 2) }),
                             containing: ["tensor 'w'", "Q4_0 needs the first dimension to be a multiple of 32, found 33"])
        XCTAssertThrowsError(try GGUFFile(path: file { $0.tensor("w", [17]) }),
                             containing: ["truncated: tensor 'w' data ends at byte"])
        let ok = try GGUFFile(path: file { $0.tensor("w", [16]) })
        XCTAssertEqual(try ok.dequantize(XCTUnwrap(ok.tensor(named: "w"))), [Float](repeating: 0, count: 16))
        var b = GGUFBytes()
        b.header(tensors: 2, kvs: 0); b.tensor("w", [1]); b.tensor("w", [1], offset: 32); b.pad()
        b.bytes += [UInt8](repeating: 0, count: 64)
        XCTAssertThrowsError(try GGUFFile(path: write(b.bytes)), containing: ["tensor 'w' appears twice"])
    }
}
