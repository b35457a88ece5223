import Quantization
import XCTest

/// One weight beyond float16's range (bug case 12): a narrow width's float16 scale cannot hold its group,
/// 8 bits can; the narrow widths leave that unit's options and the allocation goes on.
final class RangeOutlierTests: XCTestCase {
    let shape = [4, 64]
    var weights: [Float] {
        var w = (0..<256).map { Float(($0 * 37) % 101 - 50) / 1000 }
        w[5 * 1 + 17] = 1.5e5
        return w
    }

    func testWhichWidthsCanStoreTheOutlier() throws {
        // Symmetric b bits: |scale| = max |w| / 2^(b-1); 1.5e5 / 2 overflows float16 (65504), 1.5e5 / 4 does not (nor does asymmetric 2 bits: range / 3).
        for (bits, symmetric) in [(2, true)] {
            let f = try QuantFormat(bits: bits, groupSize: 32, symmetric: symmetric)
            XCTAssertThrowsError(try QuantizedTensor(weights: weights, shape: shape, format: f)) {
                XCTAssertTrue($0 is UnrepresentableWeights, "\($0)")
                XCTAssertTrue("\($0)".contains("too large for a float16 scale"), "\($0)")
            }
        }
        for (bits, symmetric) in [(3, true), (8, true), (8, false)] {
            let q = try QuantizedTensor(weights: weights, shape: shape, format: try QuantFormat(bits: bits, groupSize: 32, symmetric: symmetric))
            XCTAssertEqual(q.dequantized()[22], 1.5e5, accuracy: 1.5e5 / 4)
        }
        XCTAssertThrowsError(try QuantizedTensor(weights: weights, shape: shape, format: .float16)) { XCTAssertTrue($0 is UnrepresentableWeights) }
    }

    func testUnstorableWidthsLeaveTheUnitsOptions() throws {
        let ladder = [2, 3, 4, 5, 6, 8]
        let normal = try AllocationUnit(name: "layer 1", candidates: ladder.map { ($0, (bytes: 10 * $0, damage: 1 / Double($0))) }, why: [])
        let outlier = try AllocationUnit(name: "layer 0", candidates: ladder.map { ($0, $0 == 8 ? (bytes: 80, damage: 0.1) : nil) },
                                         why: ["'w' at q2_g32_sym: too large"])
        XCTAssertEqual(outlier.options.map(\.bits), [8])
        // Uniform at 8.5 bits per weight picks 8 bits, which stores the outlier.
        XCTAssertEqual(try allocateUniform([outlier, normal], budgetBytes: 160).bits, [8, 8])
        XCTAssertThrowsError(try allocateUniform([outlier, normal], budgetBytes: 159))
        XCTAssertEqual(try allocateToBudget([outlier, normal], budgetBytes: 120).bits, [8, 4])
        // Clusters: the outlier's unit takes the next wider width it has.
        XCTAssertEqual(allocateByClusters([outlier, normal], sensitivities: [0, 1], ladder: [2, 8]).bits, [8, 8])
        XCTAssertThrowsError(try AllocationUnit(name: "layer 0", candidates: [(2, nil), (4, nil)], why: ["'w' at q2_g32_sym: too large"])) {
            for f in ["layer 0", "no width of [2, 4] can store", "'w' at q2_g32_sym: too large"] { XCTAssertTrue("\($0)".contains(f), "\($0)") }
        }
    }
}
