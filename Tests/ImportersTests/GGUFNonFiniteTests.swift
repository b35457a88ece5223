import Foundation
import GGUF
import XCTest

/// A NaN or an infinity in any float metadata the config reads is refused, naming the file and the key
/// (it used to reach the config's JSON encoder and fail there, naming neither).
final class GGUFNonFiniteTests: XCTestCase {
    /// llama_tiny.gguf's metadata (no tensors) with `key` set to `value`, written to a temporary file.
    func variant(_ key: String, _ value: GGUFValue) throws -> String {
        let source = try GGUFFile(path: Fixtures.path("llama_tiny.gguf"))
        var w = GGUFWriter()
        for (k, v) in source.metadata.sorted(by: { $0.key < $1.key }) where k != key && k != "general.alignment" { w.add(k, v) }
        w.add(key, value)
        let path = try Fixtures.temporaryDirectory(self).appendingPathComponent("bad.gguf").path
        try Data(try w.encoded()).write(to: URL(fileURLWithPath: path))
        return path
    }

    func testNonFiniteFloatMetadataNamesFileAndKey() throws {
        let cases: [(String, GGUFValue, String)] = [
            ("llama.attention.layer_norm_rms_epsilon", .float32(.nan), "expected a finite number, found nan"),
            ("llama.rope.freq_base", .float32(.infinity), "expected a finite number, found inf"),
            ("llama.rope.freq_base", .float64(-.infinity), "expected a finite number, found -inf"),
            ("llama.rope.scaling.factor", .float32(.nan), "expected a finite number, found nan"),
            ("llama.rope.freq_base", .float64(1e300), "1e+300 is beyond float32's range"),
        ]
        for (key, value, expected) in cases {
            let path = try variant(key, value)
            XCTAssertThrowsError(try GGUFConfig(gguf: GGUFFile(path: path), supported: ["llama"]),
                                 containing: [path, "metadata '\(key)'", expected])
        }
        // The same file with finite values reads.
        XCTAssertNoThrow(try GGUFConfig(gguf: GGUFFile(path: try variant("llama.rope.freq_base", .float32(500))), supported: ["llama"]))
    }

    func testNonFiniteFloatAccessorsAreRefused() throws {
        let file = try GGUFFile(path: try variant("test.x", .float64(.nan)))
        XCTAssertThrowsError(try file.double("test.x"), containing: ["bad.gguf", "test.x", "finite"])
        XCTAssertThrowsError(try file.float("test.x"), containing: ["bad.gguf", "test.x", "finite"])
    }
}
