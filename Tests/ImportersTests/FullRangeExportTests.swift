@testable import GGUF
import Quantization
import TensorCore
import XCTest

/// Issue 19: full-range symmetric codes are llama.cpp's Q4_0 (4 bits, group 32) and Q8_0 (8 bits, group 32)
/// without conversion: code c and signed scale s, laid out as ggml blocks (Q4_0 `{f16 d; u8 qs[16]}`, byte j =
/// element j | element j + 16 << 4; Q8_0 `{f16 d; i8 qs[32]}`, q = c − 128), dequantize through the GGUF
/// kernels (checked bit-exactly against gguf-py in GGUFDequantizeTests) to exactly our weights.
final class FullRangeExportTests: XCTestCase {
    func testSymmetricCodesAreQ4_0AndQ8_0Blocks() throws {
        var rng = SplitMix64(seed: 19)
        let (rows, cols) = (5, 96)
        var w = (0..<(rows * cols)).map { _ in (rng.nextFloat() * 2 - 1) * 0.1 }
        w[7] = 0.5; w[40] = -0.6
        for (bits, type) in [(4, GGMLType.q4_0), (8, .q8_0)] {
            let q = try QuantizedTensor(weights: w, shape: [rows, cols], format: try QuantFormat(bits: bits, groupSize: 32, symmetric: true))
            let codes = unpackCodes(q.codes, bits: bits, count: w.count)
            var blocks: [UInt8] = []
            for g in 0..<(w.count / 32) {
                withUnsafeBytes(of: q.scales[g].bitPattern.littleEndian) { blocks += $0 }
                let c = codes[(g * 32)..<((g + 1) * 32)].map { $0 }
                if bits == 4 {
                    blocks += (0..<16).map { j in c[j] | c[j + 16] << 4 }
                } else {
                    blocks += c.map { UInt8(bitPattern: Int8(Int($0) - 128)) }
                }
            }
            let layout = try XCTUnwrap(BlockLayout.table[type])
            XCTAssertEqual(blocks.count, w.count / 32 * layout.bytes)
            var out = [Float](repeating: .nan, count: w.count)
            blocks.withUnsafeBytes { src in out.withUnsafeMutableBufferPointer { layout.dequantize!(src.baseAddress!, $0.baseAddress!, w.count / 32) } }
            XCTAssertEqual(out, q.dequantized(), "\(type.name)")
            XCTAssertTrue(codes.contains(0), "the negative end is used")
        }
    }
}
