import Foundation
import Import
import Model
import Quantization
import XCTest

/// The quantizer on the real model. SmolLM2-135M's weights come from a Q4_1 GGUF (4-bit codes, groups of 32,
/// float16 scale and minimum): that one scheme reproduces them exactly, every other loses something.
/// This is why the CPTQuant results compare in group-64 formats. Needs SMOLLM2_GGUF (tools/test.sh).
final class SmolLM2QuantizationTests: XCTestCase {
    func testOnlyTheSourceSchemeIsLosslessOnSmolLM2() throws {
        guard let gguf = ProcessInfo.processInfo.environment["SMOLLM2_GGUF"] else {
            throw XCTSkip("SMOLLM2_GGUF not set (tools/test.sh fetches the model)")
        }
        let model = try Importer.load(gguf).model
        let layer = model.layers[7]
        for w in [layer.attention!.q.denseView!, layer.mlp!.down.denseView!] {
            func relativeError(_ f: QuantFormat) throws -> Double {
                let back = try QuantizedTensor(weights: w.array, shape: w.shape, format: f).dequantized()
                var e = 0.0, n = 0.0
                for i in 0..<w.count { e += pow(Double(w[i] - back[i]), 2); n += pow(Double(w[i]), 2) }
                return e / n
            }
            let source = try relativeError(try QuantFormat(bits: 4, groupSize: 32, symmetric: false))
            let g64 = try relativeError(try QuantFormat(bits: 4, groupSize: 64, symmetric: false))
            let sym = try relativeError(try QuantFormat(bits: 4, groupSize: 32, symmetric: true))
            XCTAssertEqual(source, 0, "q4_g32_asym reproduces Q4_1 weights bit for bit")  // observed 0
            XCTAssertGreaterThan(g64, 1e-3)  // observed 0.0063-0.0066
            XCTAssertGreaterThan(sym, 1e-3)  // observed 0.0100-0.0106 with 15 levels; full-range codes: layer 7 as a whole 0.0073
        }
    }
}
