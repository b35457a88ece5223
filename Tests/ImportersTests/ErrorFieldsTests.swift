import Diagnostics
import Foundation
import GGUF
import Safetensors
import XCTest

/// The readers' errors state the file, tensor or key, and what was expected and found, as fields
/// (`ErrorContext`), besides the message they render.
final class ErrorFieldsTests: XCTestCase {
    var scratch: URL!

    override func setUpWithError() throws {
        scratch = try Fixtures.temporaryDirectory(self)
    }

    private func write(_ bytes: [UInt8], _ name: String) throws -> String {
        let path = scratch.appendingPathComponent(name).path
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    func testTruncatedGGUFStatesFileExpectedAndFound() throws {
        let path = try write([0x47, 0x47, 0x55], "short.gguf")
        XCTAssertThrowsError(try GGUFFile(path: path)) { error in
            XCTAssertTrue(error is GGUFError)
            XCTAssertTrue("\(error)".hasPrefix(path + ": truncated"), "\(error)")
            XCTAssertEqual(error.errorContext, ErrorContext(file: path, expected: "4 bytes", found: "3 bytes"))
        }
    }

    func testGGUFMetadataOfAnotherTypeStatesKeyExpectedAndFound() throws {
        let path = Fixtures.path("llama_tiny.gguf")
        let file = try GGUFFile(path: path)
        XCTAssertThrowsError(try file.int("general.architecture")) { error in
            XCTAssertEqual("\(error)", "\(path): metadata 'general.architecture': expected integer, found string")
            XCTAssertEqual(error.errorContext,
                           ErrorContext(file: path, key: "general.architecture", expected: "integer", found: "string"))
        }
    }

    /// A safetensors file whose tensor's data_offsets span fewer bytes than its shape needs.
    func testSafetensorsTensorStatesTensorExpectedAndFound() throws {
        let header = Array(#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#.utf8)
        var bytes = withUnsafeBytes(of: UInt64(header.count).littleEndian) { Array($0) } + header
        bytes += [UInt8](repeating: 0, count: 4)
        let path = try write(bytes, "w.safetensors")
        XCTAssertThrowsError(try SafetensorsFile(path: path)) { error in
            XCTAssertEqual("\(error)", "\(path): tensor 'w': shape [2] of F32 needs 8 bytes, data_offsets span 4")
            XCTAssertEqual(error.errorContext,
                           ErrorContext(file: path, tensor: "w", expected: "8 bytes", found: "4 bytes"))
        }
        let short = try write([1, 2, 3], "short.safetensors")
        XCTAssertThrowsError(try SafetensorsFile(path: short)) { error in
            XCTAssertEqual(error.errorContext, ErrorContext(file: short, expected: "8 bytes", found: "3 bytes"))
        }
    }
}
