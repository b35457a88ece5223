import Foundation
import XCTest
@testable import Tokenizer

/// Tests against SmolLM2's real vocabulary, read from the GGUF that `SMOLLM2_GGUF` names.
final class SmolLM2Tests: XCTestCase {
    func testMetadataDescribesAByteLevelBPE() throws {
        let vocabulary = try SmolLM2Vocabulary.load()
        let metadata = vocabulary.metadata
        XCTAssertEqual(metadata.string("tokenizer.ggml.model"), "gpt2")
        XCTAssertEqual(metadata.string("tokenizer.ggml.pre"), "smollm")
        XCTAssertEqual(vocabulary.tokens.count, 49152)
        XCTAssertEqual(vocabulary.merges.count, 48900)
        XCTAssertEqual(vocabulary.tokenTypes.count, 49152)
        XCTAssertEqual(metadata.integer("tokenizer.ggml.bos_token_id"), 1)
        XCTAssertEqual(metadata.integer("tokenizer.ggml.eos_token_id"), 2)
        let tokenizer = try vocabulary.tokenizer(PreTokenizer(ggufName: metadata.string("tokenizer.ggml.pre") ?? ""))
        XCTAssertEqual(tokenizer.vocabularySize, 49152)
    }

    /// `.gpt2` reproduces the tokenizer transformers builds from this GGUF (it ignores "smollm").
    func testGPT2MatchesTheGGUFBuiltHuggingFaceTokenizer() throws {
        let tokenizer = try SmolLM2Vocabulary.load().tokenizer(.gpt2)
        for item in try Fixture.load().cases {
            XCTAssertEqual(tokenizer.encode(item.text), item.ids, item.text.debugDescription)
        }
    }

    /// `.smollm` reproduces SmolLM2's hub tokenizer.json: Digits(individual) then the GPT-2 regex.
    func testSmolLMMatchesTheHubHuggingFaceTokenizer() throws {
        let tokenizer = try SmolLM2Vocabulary.load().tokenizer(.smollm)
        let cases = try Fixture.load().cases
        XCTAssertGreaterThan(cases.count, 80)
        for item in cases {
            XCTAssertEqual(tokenizer.encode(item.text), item.idsHub ?? item.ids, item.text.debugDescription)
        }
    }

    func testDecodeMatchesHuggingFace() throws {
        let tokenizer = try SmolLM2Vocabulary.load().tokenizer(.smollm)
        for item in try Fixture.load().decode {
            assertSameScalars(tokenizer.decode(item.ids), item.text, "\(item.ids)")
        }
    }

    func testRoundTrip() throws {
        let tokenizer = try SmolLM2Vocabulary.load().tokenizer(.smollm)
        // Bytes 04 06 13 14 16 1D C0 C1 F1 F2 F5...FF have no token in SmolLM2's vocabulary, and
        // Hugging Face drops them too; every other text survives encode + decode unchanged.
        let missing = Set<UInt8>([0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xF1, 0xF2])
        for item in try Fixture.load().cases where Set(item.text.utf8).isDisjoint(with: missing) {
            assertSameScalars(tokenizer.decode(tokenizer.encode(item.text)), item.text)
        }
        var generator = SplitMix(seed: 7)
        for _ in 0..<300 {
            var text = String.UnicodeScalarView()
            while text.count < 30 {
                let value = UInt32(generator.next() % 0x3_0000)
                if let scalar = Unicode.Scalar(value), Set(String(scalar).utf8).isDisjoint(with: missing) {
                    text.append(scalar)
                }
                if generator.next() % 4 == 0 { text.append(" ") }
            }
            let string = String(text)
            XCTAssertEqual(Array(tokenizer.decode(tokenizer.encode(string)).utf8), Array(string.utf8))
        }
    }

    func testEveryByteIsSpelledByTokens() throws {
        let vocabulary = try SmolLM2Vocabulary.load()
        let tokenizer = try vocabulary.tokenizer(.smollm)
        let byteTokens = (0..<256).map { vocabulary.tokens.firstIndex(of: String(ByteLevel.scalarForByte[$0])) }
        XCTAssertEqual(byteTokens.indices.filter { byteTokens[$0] == nil },
                       [0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xC0, 0xC1, 0xF1, 0xF2] + Array(0xF5...0xFF))
        // Each scalar's bytes come back from its tokens' spellings; bytes without a token are
        // dropped, as Hugging Face drops them (this BPE has no unknown token).
        for scalar in byteCoveringScalars() {
            let text = String(scalar)
            let spelled = tokenizer.encode(text).flatMap { ByteLevel.decode(vocabulary.tokens[Int($0)]) ?? [] }
            XCTAssertEqual(spelled, text.utf8.filter { byteTokens[Int($0)] != nil }, "U+\(String(scalar.value, radix: 16))")
        }
        for byte in 0..<0x80 {
            XCTAssertEqual(tokenizer.encode(String(UnicodeScalar(UInt8(byte)))), byteTokens[byte].map { [Int32($0)] } ?? [])
        }
    }

    func testSpecialTokensAreSingleIDs() throws {
        let tokenizer = try SmolLM2Vocabulary.load().tokenizer(.smollm)
        XCTAssertEqual(tokenizer.encode("<|im_start|>"), [1])
        XCTAssertEqual(tokenizer.encode("<|im_start|>user\nHi"), [1, 4093, 198, 26843])  // HF's ids; see README
        XCTAssertEqual(tokenizer.encode("<|im_end|><|endoftext|>"), [2, 0])
        XCTAssertEqual(tokenizer.decode([1, 2, 0]), "<|im_start|><|im_end|><|endoftext|>")
    }

    /// Opt-in: `TOKENIZER_BENCH_DIR` holding the files `make_tokenizer_fixture.py --bench-dir` writes.
    func testWikipediaMatchesHuggingFaceAndTimesEncoding() throws {
        guard let directory = ProcessInfo.processInfo.environment["TOKENIZER_BENCH_DIR"] else {
            throw XCTSkip("set TOKENIZER_BENCH_DIR to the --bench-dir of tools/make_tokenizer_fixture.py")
        }
        let vocabulary = try SmolLM2Vocabulary.load()
        let base = URL(fileURLWithPath: directory)
        for kind in ["prose", "wikitext"] {
            let text = try String(contentsOf: base.appendingPathComponent("\(kind).txt"), encoding: .utf8)
            for (name, preTokenizer) in [("gguf", PreTokenizer.gpt2), ("hub", .smollm)] {
                let data = try Data(contentsOf: base.appendingPathComponent("\(kind)_ids_\(name).i32"))
                let expected = data.withUnsafeBytes { raw in
                    (0..<raw.count / 4).map { Int32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self)) }
                }
                let initStart = ContinuousClock.now
                let tokenizer = try vocabulary.tokenizer(preTokenizer)
                let initElapsed = ContinuousClock.now - initStart
                let start = ContinuousClock.now
                let ids = tokenizer.encode(text)
                let elapsed = ContinuousClock.now - start
                let decodeStart = ContinuousClock.now
                let decoded = tokenizer.decode(ids)
                let decodeElapsed = ContinuousClock.now - decodeStart
                print("\(kind) \(preTokenizer): \(text.utf8.count) bytes -> \(ids.count) ids, encode \(elapsed), "
                      + "decode \(decodeElapsed), init \(initElapsed)")
                XCTAssertEqual(ids.count, expected.count)
                if let index = ids.indices.first(where: { $0 < expected.count && ids[$0] != expected[$0] }) {
                    XCTFail("\(kind) \(name): first difference at id \(index): \(ids[index]) vs \(expected[index])")
                }
                XCTAssertEqual(decoded.utf8.count, text.utf8.count)
            }
        }
    }
}
