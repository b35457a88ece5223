import XCTest
@testable import Tokenizer

/// A hand-made vocabulary: ids 0...255 are the single bytes (id == byte value), then merged tokens.
enum Tiny {
    static let merged = ["he", "ll", "hell", "hello", "Ġw", "or", "Ġwor", "ld", "Ġworld", "<|end|>", "→"]
    static let merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld"]
    static let tokens = (0..<256).map { String(ByteLevel.scalarForByte[$0]) } + merged
    static let types: [Int32] = Array(repeating: 1, count: 256) + [1, 1, 1, 1, 1, 1, 1, 1, 1, 3, 1]

    static func id(_ token: String) -> Int32 { Int32(256 + (merged.firstIndex(of: token) ?? -257)) }

    static func tokenizer(_ preTokenizer: PreTokenizer = .gpt2) throws -> BPETokenizer {
        try BPETokenizer(tokens: tokens, merges: merges, preTokenizer: preTokenizer, tokenTypes: types,
                         bosTokenID: nil, eosTokenID: nil)
    }

    static func bytes(_ text: String) -> [Int32] { text.utf8.map { Int32($0) } }
}

final class TinyVocabularyTests: XCTestCase {
    func testByteAlphabetIsGPT2s() {
        let table = ByteLevel.scalarForByte
        XCTAssertEqual(Set(table).count, 256)
        XCTAssertEqual(table[Int(UInt8(ascii: " "))], "Ġ")
        XCTAssertEqual(table[Int(UInt8(ascii: "\n"))], "Ċ")
        XCTAssertEqual(table[0], "Ā")
        XCTAssertEqual(table[0xAD], "Ń")  // the soft hyphen is the last byte moved, to U+0143
        XCTAssertEqual(table[Int(UInt8(ascii: "A"))], "A")
        XCTAssertEqual(table[0xE9], "é")
        for byte in 0..<256 { XCTAssertEqual(ByteLevel.byte(for: table[byte]), UInt8(byte)) }
    }

    // Expected ids below were derived by hand and cross-checked against Hugging Face `tokenizers`
    // (transformers' GGUF converter fed this same vocabulary).
    func testMergesApplyByRank() throws {
        let tokenizer = try Tiny.tokenizer()
        XCTAssertEqual(tokenizer.vocabularySize, 267)
        // "hello" -> h e l l o -> he l l o (rank 0) -> he ll o (1) -> hell o (2) -> hello (3).
        // " world" -> Ġ w o r l d -> Ġw o r l d (4) -> Ġw or l d (5) -> Ġwor l d (6) -> Ġwor ld (7) -> Ġworld (8).
        XCTAssertEqual(tokenizer.encode("hello world"), [Tiny.id("hello"), Tiny.id("Ġworld")])
        // "hellworld": he (0), ll (1), hell (2); "o r" (5) beats "l d" (7); "Ġw ..." never applies.
        XCTAssertEqual(tokenizer.encode("hellworld"), [Tiny.id("hell"), 119, Tiny.id("or"), Tiny.id("ld")])
        // Equal ranks merge leftmost first: l l l -> ll l.
        XCTAssertEqual(tokenizer.encode("lll"), [Tiny.id("ll"), 108])
        // Pre-tokenization keeps merges inside pieces: "he" + "," + " world".
        XCTAssertEqual(tokenizer.encode("he, world"), [Tiny.id("he"), 44, Tiny.id("Ġworld")])
        // Two spaces: the first space is its own piece, the second prefixes the word.
        XCTAssertEqual(tokenizer.encode("he  world"), [Tiny.id("he"), 32, Tiny.id("Ġworld")])
        XCTAssertEqual(tokenizer.encode(""), [])
    }

    func testRepeatedWordsUseTheCacheConsistently() throws {
        let tokenizer = try Tiny.tokenizer()
        let once = tokenizer.encode("hello world")
        let text = Array(repeating: "hello world", count: 50).joined(separator: " ")
        var expected: [Int32] = []
        for index in 0..<50 { expected += index == 0 ? once : [32] + once }
        // " hello" has no "Ġh" merge, so later copies are Ġ + hello.
        XCTAssertEqual(tokenizer.encode(text), expected)
    }

    func testAddedTokensAreMatchedWhole() throws {
        let tokenizer = try Tiny.tokenizer()
        let end = Tiny.id("<|end|>")
        XCTAssertEqual(tokenizer.encode("hello<|end|> world"), [Tiny.id("hello"), end, Tiny.id("Ġworld")])
        XCTAssertEqual(tokenizer.encode("<|end|><|end|>"), [end, end])
        // The space before an added token stays a piece of its own.
        XCTAssertEqual(tokenizer.encode("hello <|end|>"), [Tiny.id("hello"), 32, end])
        XCTAssertEqual(tokenizer.encode("<|end"), Tiny.bytes("<|end"))
        XCTAssertEqual(tokenizer.decode([Tiny.id("hello"), end]), "hello<|end|>")
        // Without token types only BOS/EOS are added tokens.
        let plain = try BPETokenizer(tokens: Tiny.tokens, merges: Tiny.merges, preTokenizer: .gpt2,
                                     bosTokenID: nil, eosTokenID: end)
        XCTAssertEqual(plain.encode("a<|end|>"), [97, end])
        let none = try BPETokenizer(tokens: Tiny.tokens, merges: Tiny.merges, preTokenizer: .gpt2,
                                    bosTokenID: nil, eosTokenID: nil)
        XCTAssertEqual(none.encode("<|end|>"), Tiny.bytes("<|end|>"))
    }

    func testEveryByteFallsBackToItsToken() throws {
        let tokenizer = try Tiny.tokenizer()
        let scalars = byteCoveringScalars()
        var seen = Set<UInt8>()
        for scalar in scalars {
            let text = String(scalar)
            seen.formUnion(text.utf8)
            XCTAssertEqual(tokenizer.encode(text), Tiny.bytes(text), "U+\(String(scalar.value, radix: 16))")
            assertSameScalars(tokenizer.decode(tokenizer.encode(text)), text)
        }
        XCTAssertEqual(seen, Set((0...255).map { UInt8($0) }).subtracting([0xC0, 0xC1] + (0xF5...0xFF).map { $0 }))
        // Every byte's token decodes to that byte: ASCII alone, others only inside valid sequences.
        for byte in 0..<0x80 { XCTAssertEqual(Array(tokenizer.decode([Int32(byte)]).utf8), [UInt8(byte)]) }
        for byte in 0x80..<0x100 { XCTAssertEqual(tokenizer.decode([Int32(byte)]), "\u{FFFD}") }
    }

    func testDecodeReplacesInvalidUTF8LikeHuggingFace() throws {
        let tokenizer = try Tiny.tokenizer()
        // Expected strings are Hugging Face's `decode` of the same bytes (fixture "decode" section).
        XCTAssertEqual(tokenizer.decode([0xE2, 0x82]), "\u{FFFD}")
        XCTAssertEqual(tokenizer.decode([0x61, 0xC3]), "a\u{FFFD}")
        XCTAssertEqual(tokenizer.decode([0xF0, 0x9F, 0x98, 0x61]), "\u{FFFD}a")
        XCTAssertEqual(tokenizer.decode([0xED, 0xA0, 0x80]), "\u{FFFD}\u{FFFD}\u{FFFD}")
        XCTAssertEqual(tokenizer.decode([0xE0, 0x80, 0x62]), "\u{FFFD}\u{FFFD}b")
        XCTAssertEqual(tokenizer.decode([0xF4, 0x90, 0x80, 0x80]), "\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}")
        // A token outside the byte alphabet decodes to its own UTF-8; unknown ids are skipped.
        XCTAssertEqual(tokenizer.decode([Tiny.id("→"), -1, 9999, 97]), "→a")
    }

    func testRoundTripOfRandomText() throws {
        var generator = SplitMix(seed: 42)
        let pools: [ClosedRange<UInt32>] = [0x00...0x7F, 0x80...0x7FF, 0x800...0xFFFF, 0x10000...0x10FFFF,
                                             0x20...0x20, 0x0A...0x0D, 0x30...0x39]
        for kind in [PreTokenizer.gpt2, .smollm, .llama3, .qwen2] {
            let tokenizer = try Tiny.tokenizer(kind)
            for _ in 0..<200 {
                var text = String.UnicodeScalarView()
                for _ in 0..<Int(generator.next() % 40) {
                    let pool = pools[Int(generator.next() % UInt64(pools.count))]
                    let value = pool.lowerBound + UInt32(generator.next() % UInt64(pool.count))
                    if let scalar = Unicode.Scalar(value) { text.append(scalar) }
                }
                let string = String(text)
                XCTAssertEqual(Array(tokenizer.decode(tokenizer.encode(string)).utf8), Array(string.utf8))
                XCTAssertEqual(tokenizer.preTokenize(string).joined().utf8.count, string.utf8.count)
            }
        }
    }

    func testBadInputIsRejected() {
        func message(_ build: () throws -> BPETokenizer) -> String {
            do {
                _ = try build()
                return "no error"
            } catch {
                return String(describing: error)
            }
        }
        let tokens = Tiny.tokens
        XCTAssertTrue(message {
            try BPETokenizer(tokens: tokens + ["he"], merges: [], preTokenizer: .gpt2, bosTokenID: nil, eosTokenID: nil)
        }.contains("duplicate token 'he'"))
        XCTAssertTrue(message {
            try BPETokenizer(tokens: tokens, merges: ["h x1"], preTokenizer: .gpt2, bosTokenID: nil, eosTokenID: nil)
        }.contains("'x1' is not a token"))
        XCTAssertTrue(message {
            try BPETokenizer(tokens: tokens, merges: ["a b"], preTokenizer: .gpt2, bosTokenID: nil, eosTokenID: nil)
        }.contains("'ab' is not a token"))
        for bad in ["ab", "a b c", "a  b", " a"] {
            XCTAssertTrue(message {
                try BPETokenizer(tokens: tokens, merges: [bad], preTokenizer: .gpt2, bosTokenID: nil, eosTokenID: nil)
            }.contains("not two tokens"), bad)
        }
        XCTAssertTrue(message {
            try BPETokenizer(tokens: tokens, merges: [], preTokenizer: .gpt2, tokenTypes: [1, 1],
                             bosTokenID: nil, eosTokenID: nil)
        }.contains("token_type has 2 entries"))
        XCTAssertTrue(message {
            try BPETokenizer(tokens: tokens, merges: [], preTokenizer: .gpt2, bosTokenID: 999, eosTokenID: nil)
        }.contains("BOS token id 999"))
        XCTAssertThrowsError(try PreTokenizer(ggufName: "qwen35")) { error in
            XCTAssertTrue(String(describing: error).contains(
                "unknown pre-tokenizer 'qwen35' (supported: gpt2, smollm, llama-bpe, qwen2)"), "\(error)")
        }
        XCTAssertEqual(try PreTokenizer(ggufName: "smollm"), .smollm)
        XCTAssertEqual(try PreTokenizer(ggufName: "llama-bpe"), .llama3)
        XCTAssertEqual(try PreTokenizer(ggufName: "gpt2"), .gpt2)
        XCTAssertEqual(try PreTokenizer(ggufName: "qwen2"), .qwen2)
    }
}

/// One scalar whose UTF-8 holds each byte that valid UTF-8 can hold (all but C0, C1 and F5...FF).
func byteCoveringScalars() -> [Unicode.Scalar] {
    var scalars: [Unicode.Scalar] = (0..<0x80).compactMap { Unicode.Scalar($0) }
    scalars += (0x80..<0xC0).compactMap { Unicode.Scalar(UInt32($0)) }          // C2 80 ... C2 BF
    scalars += (0xC2...0xDF).compactMap { Unicode.Scalar(UInt32($0 & 0x1F) << 6) }
    scalars += (0xE0...0xEF).compactMap { Unicode.Scalar(UInt32($0 & 0x0F) << 12 | ($0 == 0xE0 ? 0x800 : 0)) }
    scalars += (0xF0...0xF4).compactMap { Unicode.Scalar(UInt32($0 & 0x07) << 18 | ($0 == 0xF0 ? 0x10000 : 0)) }
    return scalars
}

/// A small deterministic random number generator (SplitMix64).
struct SplitMix: RandomNumberGenerator {
    var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var value = state
        value = (value ^ (value >> 30)) &* 0xBF58_476D_1CE4_E5B9
        value = (value ^ (value >> 27)) &* 0x94D0_49BB_1331_11EB
        return value ^ (value >> 31)
    }
}
