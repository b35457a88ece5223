import Foundation
import Model
import XCTest
@testable import Checkpoint

/// The tokenizer's `normalizer` in a checkpoint (issue "Reliability, second round", item 4): "NFC" is stored and read
/// back, a checkpoint written before the key existed reads as none, and a value we do not implement is refused naming
/// the key.
extension CheckpointTests {
    func testTokenizerNormalizerRoundTripsAndOlderFilesReadAsNone() throws {
        var c = sample()
        c.tokenizer?.normalizer = "NFC"
        try c.write(to: path("nfc.h5"))
        XCTAssertEqual(try Checkpoint.read(path("nfc.h5")).tokenizer?.normalizer, "NFC")
        XCTAssertEqual(try Checkpoint.read(path("nfc.h5")).tokenizer, c.tokenizer)
        // tools/make_tiny_fixture.py wrote this version-1 file long before the key existed.
        let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures")
        let old = try XCTUnwrap(try Checkpoint.read(fixtures.appendingPathComponent("tiny-qwen2.h5").path).tokenizer)
        XCTAssertNil(old.normalizer)
    }

    func testUnknownTokenizerNormalizerIsRefusedNamingTheKey() throws {
        var c = sample()
        c.tokenizer?.normalizer = "NFKC"
        try c.write(to: path("nfkc.h5"))
        let detail = "normalizer 'NFKC' is not supported (expected NFC or none)"
        assertReadError(path("nfkc.h5"), .badTokenizer(path: path("nfkc.h5"), detail: detail))
        let llama = TokenizerSpec(model: "llama", pre: "no-prefix", tokens: ["<unk>", "a"], merges: [], scores: [0, 0],
                                  normalizer: "NFC")
        XCTAssertEqual(llama.problem(vocabSize: nil),
                       "normalizer 'NFC' belongs to model gpt2, not llama (our SentencePiece tokenizer applies none)")
    }
}
