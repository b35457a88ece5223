import Quantization
import TensorCore
import XCTest

final class QuantizerTests: XCTestCase {
    func testPackUnpackRoundTripsEveryWidthAndOddSizes() {
        var rng = SplitMix64(seed: 5)
        for bits in QuantFormat.supportedBits {
            for count in [1, 2, 3, 7, 8, 9, 31, 33, 100] {
                let codes = (0..<count).map { _ in UInt8(rng.next() % UInt64(1 << bits)) }
                let packed = packCodes(codes, bits: bits)
                XCTAssertEqual(packed.count, (count * bits + 7) / 8)
                XCTAssertEqual(unpackCodes(packed, bits: bits, count: count), codes, "\(bits) bits, \(count) codes")
            }
        }
        // Layout: little-endian bit stream.
        XCTAssertEqual(packCodes([1, 2, 3], bits: 3), [0b1101_0001, 0b0000_0000])
    }

    func testRoundToNearestErrorIsAtMostHalfAStep() throws {
        var rng = SplitMix64(seed: 9)
        let w = (0..<256).map { _ in (rng.nextFloat() * 2 - 1) * 0.3 }
        for bits in QuantFormat.supportedBits {
            for symmetric in [false, true] {
                let f = try QuantFormat(bits: bits, groupSize: 32, symmetric: symmetric)
                let q = try quantizeRTN(w, format: f)
                XCTAssertTrue(q.codes.allSatisfy { Int($0) <= f.maxCode })
                let back = dequantize(codes: q.codes, scales: q.scales, mins: q.mins, format: f)
                for i in w.indices {
                    let s = q.scales[i / 32]
                    XCTAssertLessThanOrEqual(abs(w[i] - back[i]), s / 2 * (1 + 1e-5) + 1e-7, "\(f) weight \(i)")
                }
            }
        }
    }

    func testBadFormats() {
        XCTAssertThrowsError(try QuantFormat(bits: 7, groupSize: 32, symmetric: false)) { XCTAssertTrue("\($0)".contains("bits 7 is not supported")) }
        XCTAssertThrowsError(try QuantFormat(bits: 4, groupSize: 0, symmetric: false)) { XCTAssertTrue("\($0)".contains("group size")) }
        XCTAssertThrowsError(try quantizeRTN([1, 2, 3], format: try QuantFormat(bits: 4, groupSize: 2, symmetric: true))) {
            XCTAssertTrue("\($0)".contains("not a whole number of groups of 2"))
        }
    }
}
