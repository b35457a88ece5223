import Foundation
import XCTest
@testable import Tokenizer

/// The Qwen2 pre-tokenizer (GGUF `tokenizer.ggml.pre = qwen2`; Qwen2.5's tokenizer.json Split regex, llama.cpp's
/// LLAMA_VOCAB_PRE_TYPE_QWEN2) on a hand-made vocabulary, and on Qwen2.5-Coder-0.5B-Instruct's real vocabulary
/// when `QWEN2_GGUF` names its GGUF (tools/setup_assets.sh --qwen2).
final class Qwen2Tests: XCTestCase {
    /// The 256 byte tokens (id == byte) and then numbers, a contraction and words; merges build all but " Việt".
    private enum Numbers {
        static func spell(_ text: String) -> String { text.utf8.map { String(ByteLevel.scalarForByte[Int($0)]) }.joined() }
        // 256 "12", 257 "123", 258 " 1", 259 "'S", 260 " V", 261 " Vi", 262 " Việt" (no merge builds it).
        static let added = ["12", "123", " 1", "'S", " V", " Vi", " Việt"]
        static let tokens = (0..<256).map { String(ByteLevel.scalarForByte[$0]) } + added.map(spell)
        static let merges = [("1", "2"), ("12", "3"), (" ", "1"), ("'", "S"), (" ", "V"), (" V", "i")]
            .map { "\(spell($0.0)) \(spell($0.1))" }

        static func tokenizer(_ kind: PreTokenizer) throws -> BPETokenizer {
            try BPETokenizer(tokens: tokens, merges: merges, preTokenizer: kind, bosTokenID: nil, eosTokenID: nil)
        }

        static func id(_ text: String) -> Int32 { Int32(256 + added.firstIndex(of: text)!) }
    }

    // Expected ids by hand: the pieces (PreTokenizerTests.testQwen2) merged by rank within each piece.
    func testNumbersAreOneScalarPerPiece() throws {
        let qwen2 = try Numbers.tokenizer(.qwen2), llama3 = try Numbers.tokenizer(.llama3), gpt2 = try Numbers.tokenizer(.gpt2)
        let one: Int32 = 49, two: Int32 = 50, three: Int32 = 51, space: Int32 = 32
        // "123": Llama 3 keeps it one piece and merges it whole; Qwen2 cuts it into three pieces.
        XCTAssertEqual(llama3.encode("123"), [Numbers.id("123")])
        XCTAssertEqual(qwen2.encode("123"), [one, two, three])
        XCTAssertEqual(qwen2.encode("1231"), [one, two, three, one])
        // The space before a number is a piece of its own (no " ?\p{N}"), so the " 1" token never appears;
        // GPT-2's regex takes " 123" whole, and "1 2" (rank 0) beats " 1" (rank 2).
        XCTAssertEqual(qwen2.encode(" 123"), [space, one, two, three])
        XCTAssertEqual(llama3.encode(" 123"), [space, Numbers.id("123")])
        XCTAssertEqual(gpt2.encode(" 123"), [space, Numbers.id("123")])
        XCTAssertEqual(gpt2.encode(" 1"), [Numbers.id(" 1")])
        XCTAssertEqual(qwen2.encode(" 1"), [space, one])
        // Any \p{N} is cut alone: "²" (C2 B2) and "٣" (D9 A3) stay two pieces of two bytes.
        XCTAssertEqual(qwen2.encode("²٣"), [0xC2, 0xB2, 0xD9, 0xA3])
        // Contractions in any case: "I'S" -> "I", "'S".
        XCTAssertEqual(qwen2.encode("I'S 1"), [73, Numbers.id("'S"), space, one])
        XCTAssertEqual(qwen2.encode("i's"), [105, 39, 115])  // "'s" is a piece, but only "'S" is a token
    }

    /// Qwen2 does not ignore merges (tokenizer.json `"ignore_merges": false`; llama.cpp sets it only for LLAMA3):
    /// a piece that is a token but that no merges reach is merged like any other (compare IgnoreMergesTests).
    func testMergesAreNotIgnored() throws {
        XCTAssertFalse(PreTokenizer.qwen2.ignoresMerges)
        let ệ: [Int32] = [0xE1, 0xBB, 0x87]
        XCTAssertEqual(try Numbers.tokenizer(.qwen2).encode(" Việt"), [Numbers.id(" Vi")] + ệ + [116])
        XCTAssertEqual(try Numbers.tokenizer(.llama3).encode(" Việt"), [Numbers.id(" Việt")])
    }

    func testRealVocabularyMetadata() throws {
        let vocabulary = try Qwen2Vocabulary.load()
        let metadata = vocabulary.metadata
        XCTAssertEqual(metadata.string("tokenizer.ggml.model"), "gpt2")
        XCTAssertEqual(metadata.string("tokenizer.ggml.pre"), "qwen2")
        XCTAssertEqual(vocabulary.tokens.count, 151_936)
        XCTAssertEqual(vocabulary.merges.count, 151_387)
        XCTAssertEqual(vocabulary.tokenTypes.count, 151_936)
        XCTAssertEqual(metadata.integer("tokenizer.ggml.bos_token_id"), 151_643)
        XCTAssertEqual(metadata.integer("tokenizer.ggml.eos_token_id"), 151_645)
        let tokenizer = try vocabulary.tokenizer(PreTokenizer(ggufName: metadata.string("tokenizer.ggml.pre") ?? ""))
        XCTAssertEqual(tokenizer.vocabularySize, 151_936)
    }

    /// Every `qwen2_cases` text of the fixture (the hand-made unicode / whitespace / digit / special-token texts of
    /// the SmolLM2 cases, the pre-tokenizer texts, Wikipedia paragraphs and raw wikitext) gives the ids of the
    /// tokenizer transformers 5.25 builds from the Qwen2.5-Coder GGUF.
    func testMatchesTheGGUFBuiltHuggingFaceTokenizer() throws {
        let tokenizer = try Qwen2Vocabulary.load().tokenizer(.qwen2)
        let cases = try Fixture.load().qwen2Cases
        XCTAssertGreaterThan(cases.count, 90, "qwen2_cases: write the fixture with tools/make_tokenizer_fixture.py --qwen2-gguf")
        for item in cases {
            XCTAssertEqual(tokenizer.encode(item.text), item.ids, item.text.debugDescription)
        }
    }

    func testSpecialTokensAndRoundTrip() throws {
        let tokenizer = try Qwen2Vocabulary.load().tokenizer(.qwen2)
        // Hugging Face's ids: control tokens (type 3) and the user-defined <tool_call> (type 4) are matched whole.
        XCTAssertEqual(tokenizer.encode("<|im_start|>user\nHi 2024!<|im_end|>\n"),
                       [151_644, 872, 198, 13048, 220, 17, 15, 17, 19, 0, 151_645, 198])
        XCTAssertEqual(tokenizer.encode("<tool_call>{\"x\": 12}</tool_call>"), [151_657, 4913, 87, 788, 220, 16, 17, 92, 151_658])
        XCTAssertEqual(tokenizer.encode("Hello 12345 world\n\nIt'S"), [9707, 220, 16, 17, 18, 19, 20, 1879, 271, 2132, 13272])
        // Every byte has a token in this vocabulary, so every text survives encode + decode.
        for item in try Fixture.load().qwen2Cases {
            XCTAssertEqual(Array(tokenizer.decode(tokenizer.encode(item.text)).utf8), Array(item.text.utf8))
        }
    }

    /// Opt-in, run by tools/check_qwen2_tokenizer.py: `QWEN2_TEXT` (e.g. data/wiki.test.txt) and `QWEN2_IDS`
    /// (Hugging Face's ids of it, little-endian int32); writes our ids to `QWEN2_OUR_IDS` when that is set.
    func testWholeTextMatchesHuggingFace() throws {
        let environment = ProcessInfo.processInfo.environment
        guard let textPath = environment["QWEN2_TEXT"], let idsPath = environment["QWEN2_IDS"] else {
            throw XCTSkip("set QWEN2_TEXT and QWEN2_IDS (tools/check_qwen2_tokenizer.py does)")
        }
        let vocabulary = try Qwen2Vocabulary.load()
        let text = try String(contentsOfFile: textPath, encoding: .utf8)
        let expected = try Data(contentsOf: URL(fileURLWithPath: idsPath)).withUnsafeBytes { raw in
            (0..<raw.count / 4).map { Int32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self)) }
        }
        let tokenizer = try vocabulary.tokenizer(.qwen2)
        let start = ContinuousClock.now
        let ids = tokenizer.encode(text)
        let elapsed = ContinuousClock.now - start
        if let out = environment["QWEN2_OUR_IDS"] {
            try ids.map { $0.littleEndian }.withUnsafeBytes { Data($0) }.write(to: URL(fileURLWithPath: out))
        }
        let mismatches = (0..<min(ids.count, expected.count)).filter { ids[$0] != expected[$0] }
        print("qwen2 \(textPath): \(text.utf8.count) bytes -> \(ids.count) ids (Hugging Face \(expected.count)), "
              + "\(mismatches.count) differing positions, encode \(elapsed)")
        XCTAssertEqual(ids.count, expected.count)
        if let first = mismatches.first {
            XCTFail("first difference at id \(first): \(ids[first]) vs \(expected[first])")
        }
        XCTAssertEqual(tokenizer.decode(ids).utf8.count, text.utf8.count)
    }
}
