import XCTest
import TensorCore
@testable import Workbench

/// `compress bench`'s profile: the attention products' flops are counted exactly (one 128-row block per head and
/// layer at W = 128: QKᵀ and PV each 2·128·128·D flops) and their time is part of all the products' time.
final class BenchProfileTests: XCTestCase {
    func testAttentionFlopsAreCountedExactly() throws {
        let c = Workbench.smolLM2Config(layers: 2)
        let r = try Workbench.bench(config: c, window: 128, windows: 2)
        let D = c.headDim, H = c.blocks[0].numAttentionHeads
        let expected = Double(2 * 2 * (2 * 128 * 128 * D) * H * 2)  // windows × layers × (QKᵀ + PV) × heads
        XCTAssertEqual(r.attentionGflops * 1e9, expected, accuracy: 1)
        XCTAssertGreaterThan(r.sgemmGflops, r.attentionGflops)
        XCTAssertGreaterThan(r.attentionShare, 0)
        XCTAssertLessThan(r.attentionShare, r.sgemmShare)
        XCTAssertLessThanOrEqual(r.sgemmShare, 1.05)
    }
}
