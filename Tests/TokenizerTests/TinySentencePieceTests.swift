import Foundation
import XCTest
@testable import Tokenizer

/// SentencePiece BPE on a hand-made vocabulary; every expected id is derived by hand in the comments.
final class TinySentencePieceTests: XCTestCase {
    /// 0 <unk> (unknown), 1 <s>, 2 </s> (control), 3 <u> (user-defined), 4...259 the byte tokens <0x00>...<0xFF>, then
    /// normal tokens with scores (higher merges first).
    enum Tiny {
        static let words: [(String, Float)] = [
            ("a", -100), ("b", -101), ("c", -102), ("\u{2581}", -103),  // 260 261 262 263
            ("ab", -1), ("bc", -2), ("abc", -3), ("\u{2581}a", -4),  // 264 265 266 267
            ("aa", -5), ("aaa", -6), ("é", -104), ("\u{2581}\u{2581}", -7),  // 268 269 270 271
        ]
        static let tokens = ["<unk>", "<s>", "</s>", "<u>"] + (0..<256).map { SentencePieceTokenizer.byteTokenName(UInt8($0)) } + words.map(\.0)
        static let types: [Int32] = [2, 3, 3, 4] + Array(repeating: 6, count: 256) + Array(repeating: 1, count: words.count)
        static let scores: [Float] = [0, 0, 0, 0] + Array(repeating: 0, count: 256) + words.map(\.1)

        static func tokenizer(_ prefix: SentencePieceSpacing.Prefix = .none, split: Bool = false,
                              merges: SentencePieceMerges = .scores(scores)) throws -> SentencePieceTokenizer {
            try SentencePieceTokenizer(tokens: tokens, tokenTypes: types, merges: merges,
                                       spacing: SentencePieceSpacing(prefix: prefix, splitWords: split), bosTokenID: 1, eosTokenID: 2)
        }

        static func id(_ token: String) -> Int32 { Int32(tokens.firstIndex(of: token)!) }
        static func byte(_ value: UInt8) -> Int32 { 4 + Int32(value) }
    }

    func testBestScoreMergesFirstLeftmostOnTies() throws {
        let t = try Tiny.tokenizer()
        // a b c: "ab" (-1) beats "bc" (-2); then "ab"+"c" = "abc" (-3).
        XCTAssertEqual(t.encode("abc"), [Tiny.id("abc")])
        // b c a b: "ab" (-1) at 2 first, then "bc" (-2) at 0; "bcab" is no token.
        XCTAssertEqual(t.encode("bcab"), [Tiny.id("bc"), Tiny.id("ab")])
        // a a a a: "aa" at 0, 1, 2 tie: leftmost -> aa a a; then "aa" (-5) at 1 beats "aaa" (-6) at 0 -> aa aa.
        XCTAssertEqual(t.encode("aaaa"), [Tiny.id("aa"), Tiny.id("aa")])
        // a a a: aa a, then "aaa".
        XCTAssertEqual(t.encode("aaa"), [Tiny.id("aaa")])
    }

    /// The derived order: score descending, then the longer left part, then the longer right part, then the result's
    /// id, then the parts' ids (transformers' `generate_merges`, a stable sort of the vocabulary in id order).
    func testDerivedMergeOrder() throws {
        var table = TokenTable(capacity: 8)
        for token in ["a", "b", "ab", "ba", "aba", "bab", "abab"] { XCTAssertNil(table.append(token.utf8)) }
        // Scores: ab 0, ba 0, aba -1, bab -1, abab -1 (ties on purpose).
        let scores: [Double] = [-9, -9, 0, 0, -1, -1, -1]
        let order = SentencePieceMerges.derive(table) { scores[$0] }.map { "\(table.spelling($0.left).count)+\(table.spelling($0.right).count)>\($0.merged)" }
        // Score 0: ab (a+b), ba (b+a), both 1+1 -> by result id: ab (2) then ba (3).
        // Score -1: abab = ab+ab (2+2), aba+b (3+1), a+bab (1+3); aba = ab+a (2+1), a+ba (1+2); bab = ba+b, b+ab.
        //   left length 3 first: aba+b (6); then left 2, right 2: ab+ab (6); left 2, right 1: ab+a (4), ba+b (5);
        //   left 1, right 3: a+bab (6); left 1, right 2: a+ba (4), b+ab (5).
        XCTAssertEqual(order, ["1+1>2", "1+1>3", "3+1>6", "2+2>6", "2+1>4", "2+1>5", "1+3>6", "1+2>4", "1+2>5"])
        // transformers' Gemma rule ranks by position instead: every split of "ab" (2), then "ba" (3), "aba" (4), ...
        let gemma = SentencePieceMerges.derive(table) { -Double($0) }.map(\.merged)
        XCTAssertEqual(gemma, [2, 3, 4, 4, 5, 5, 6, 6, 6])
    }

    func testByteFallback() throws {
        let t = try Tiny.tokenizer()
        // "X" has no token: <0x58>; "é" has one (270); "😀" (F0 9F 98 80) and "ü" (C3 BC) have none: their bytes.
        XCTAssertEqual(t.encode("aXé😀ü"), [Tiny.id("a"), Tiny.byte(0x58), Tiny.id("é"), Tiny.byte(0xF0), Tiny.byte(0x9F),
                                             Tiny.byte(0x98), Tiny.byte(0x80), Tiny.byte(0xC3), Tiny.byte(0xBC)])
        XCTAssertEqual(t.decode(t.encode("aXé😀ü")), "aXé😀ü")
        // A lone continuation byte decodes to U+FFFD.
        XCTAssertEqual(t.decode([Tiny.byte(0x80), Tiny.id("a")]), "\u{FFFD}a")
    }

    func testAddedTokensAreMatchedWhole() throws {
        let t = try Tiny.tokenizer()
        // Unknown, control and user-defined tokens, and BOS/EOS, are cut out of the text first.
        XCTAssertEqual(t.encode("<unk><s>a</s><u>"), [0, 1, Tiny.id("a"), 2, 3])
        // "<u" alone is text: "<" (3C) and "u" (75) have no tokens.
        XCTAssertEqual(t.encode("<u"), [Tiny.byte(0x3C), Tiny.byte(0x75)])
    }

    func testSpacingRules() throws {
        let none = try Tiny.tokenizer(.none), first = try Tiny.tokenizer(.first)
        let always = try Tiny.tokenizer(.always), every = try Tiny.tokenizer(.every)
        let a = Tiny.id("a"), b = Tiny.id("b"), space = Tiny.id("\u{2581}"), spaceA = Tiny.id("\u{2581}a")
        // "a b" -> a ▁ b: neither "a▁" nor "▁b" is a token.
        XCTAssertEqual(none.encode("a b"), [a, space, b])
        // With a prefix: ▁ a ▁ b -> "▁a" (-4).
        XCTAssertEqual(first.encode("a b"), [spaceA, space, b])
        // " a" starts with a space: Metaspace adds nothing -> ▁a; Prepend adds one -> ▁ ▁ a: "▁a" (-4) beats "▁▁" (-7).
        XCTAssertEqual(first.encode(" a"), [spaceA])
        XCTAssertEqual(always.encode(" a"), [spaceA])
        XCTAssertEqual(every.encode(" a"), [space, spaceA])
        // After an added token: "first" adds "▁" only at the start of the text, "always" and "every" to every stretch.
        XCTAssertEqual(first.encode("b<u>a"), [space, b, 3, a])
        XCTAssertEqual(always.encode("b<u>a"), [space, b, 3, spaceA])
        XCTAssertEqual(every.encode("b<u>a"), [space, b, 3, spaceA])
        // " <u> a": the stretch " " starts with a space (Metaspace: ▁; Prepend: ▁▁ -> "▁▁"), then " a".
        XCTAssertEqual(always.encode(" <u> a"), [space, 3, spaceA])
        XCTAssertEqual(every.encode(" <u> a"), [Tiny.id("\u{2581}\u{2581}"), 3, space, spaceA])
        // Decoding drops the prefix space again.
        XCTAssertEqual(first.decode(first.encode("a b")), "a b")
        XCTAssertEqual(none.decode(none.encode(" a b")), " a b")
    }

    func testSplitWords() throws {
        // "a  " -> a ▁ ▁: merged, "▁▁" (-7); split into "a", "▁", "▁", no merge crosses a word start.
        XCTAssertEqual(try Tiny.tokenizer().encode("a  "), [Tiny.id("a"), Tiny.id("\u{2581}\u{2581}")])
        XCTAssertEqual(try Tiny.tokenizer(split: true).encode("a  "), [Tiny.id("a"), Tiny.id("\u{2581}"), Tiny.id("\u{2581}")])
        // "ab a" split: "ab", "▁a".
        XCTAssertEqual(try Tiny.tokenizer(split: true).encode("ab a"), [Tiny.id("ab"), Tiny.id("\u{2581}a")])
        XCTAssertEqual(try SentencePieceSpacing(name: "prefix-first+split"), SentencePieceSpacing(prefix: .first, splitWords: true))
        XCTAssertEqual(SentencePieceSpacing(prefix: .none, splitWords: true).name, "no-prefix+split")
    }

    /// Listed merges (tokenizer.json) apply by rank and only as listed: "b c" before "a b", and no "a bc".
    func testExplicitMerges() throws {
        let t = try Tiny.tokenizer(merges: .explicit(["b c", "a b", "ab c"]))
        XCTAssertEqual(t.encode("abc"), [Tiny.id("a"), Tiny.id("bc")])
        XCTAssertEqual(t.encode("abab"), [Tiny.id("ab"), Tiny.id("ab")])
    }

    /// transformers' Gemma rule: a whitespace token holding a space ("  ", user-defined) is spelled "▁▁", reached by
    /// merging (ranked by its id, so before everything after it), and not matched whole.
    func testGemmaRespelling() throws {
        let tokens = Array(Tiny.tokens[0..<4]) + ["  ", "\n"] + Array(Tiny.tokens[4...]).filter { $0 != "\u{2581}\u{2581}" }
        let types: [Int32] = [2, 3, 3, 4, 4, 4] + Array(Tiny.types[4...].dropLast())
        let gemma = try SentencePieceTokenizer(tokens: tokens, tokenTypes: types, merges: .gemma,
                                               spacing: SentencePieceSpacing(prefix: .none), bosTokenID: 1, eosTokenID: 2)
        let a = Int32(tokens.firstIndex(of: "a")!), spaceA = Int32(tokens.firstIndex(of: "\u{2581}a")!)
        // " a" -> ▁ ▁ a: "▁▁" (id 4) ranks before "▁a" (a later id) -> [4, a]; "\n" (5) is matched whole.
        XCTAssertEqual(gemma.encode("  a\n"), [4, a, 5])
        XCTAssertEqual(gemma.encode("\u{2581}\u{2581}a"), [4, a])
        XCTAssertEqual(gemma.decode([4, a]), "  a")
        // By score instead, "  " keeps its spelling and is matched whole as a user-defined token.
        var scores = [Float](repeating: 0, count: tokens.count)
        for (i, t) in tokens.enumerated() { if let s = Tiny.words.first(where: { $0.0 == t })?.1 { scores[i] = s } }
        let byScore = try SentencePieceTokenizer(tokens: tokens, tokenTypes: types, merges: .scores(scores),
                                                 spacing: SentencePieceSpacing(prefix: .none), bosTokenID: 1, eosTokenID: 2)
        XCTAssertEqual(byScore.encode("  a"), [4, a])
        XCTAssertEqual(byScore.encode(" a"), [spaceA])
        XCTAssertEqual(SentencePieceMerges.gemmaSpelling(" \t"), "\u{2581}\u{2581}")
        XCTAssertEqual(SentencePieceMerges.gemmaSpelling("\t\t"), "\t\t")
        XCTAssertEqual(SentencePieceMerges.gemmaSpelling(" x"), " x")
    }

    func testErrorsNameTheProblem() {
        func message(_ build: () throws -> SentencePieceTokenizer) -> String {
            do { _ = try build(); return "no error" } catch { return "\(error)" }
        }
        let spacing = SentencePieceSpacing(prefix: .none)
        XCTAssertTrue(message { try SentencePieceTokenizer(tokens: Tiny.tokens.filter { $0 != "<0x41>" }, merges: .gemma, spacing: spacing, bosTokenID: nil, eosTokenID: nil) }
            .contains("'<0x41>' is not a token"))
        XCTAssertTrue(message { try SentencePieceTokenizer(tokens: Tiny.tokens + ["a"], merges: .gemma, spacing: spacing, bosTokenID: nil, eosTokenID: nil) }
            .contains("duplicate token 'a' at ids 260 and 272"))
        XCTAssertTrue(message { try SentencePieceTokenizer(tokens: Tiny.tokens, merges: .scores([1, 2]), spacing: spacing, bosTokenID: nil, eosTokenID: nil) }
            .contains("scores has 2 entries but there are 272 tokens"))
        XCTAssertTrue(message { try Tiny.tokenizer(merges: .scores(Tiny.scores.map { $0 == -1 ? .nan : $0 })) }.contains("score of token 264 is nan"))
        XCTAssertTrue(message { try Tiny.tokenizer(merges: .explicit(["a x"])) }.contains("'x' is not a token"))
        XCTAssertTrue(message { try Tiny.tokenizer(merges: .explicit(["c a"])) }.contains("'ca' is not a token"))
        XCTAssertTrue(message { try Tiny.tokenizer(merges: .explicit(["ab"])) }.contains("is not two tokens separated by one space"))
        XCTAssertTrue(message { try SentencePieceTokenizer(tokens: Tiny.tokens, merges: .gemma, spacing: spacing, bosTokenID: 999, eosTokenID: nil) }
            .contains("BOS token id 999 is outside the vocabulary of 272 tokens"))
        XCTAssertTrue(message { try SentencePieceTokenizer(tokens: Tiny.tokens, tokenTypes: [1], merges: .gemma, spacing: spacing, bosTokenID: nil, eosTokenID: nil) }
            .contains("token_type has 1 entries"))
        XCTAssertThrowsError(try SentencePieceSpacing(name: "metaspace")) { error in
            XCTAssertTrue("\(error)".contains("unknown SentencePiece spacing 'metaspace' (supported: no-prefix, prefix-first, prefix-always, prefix-every"), "\(error)")
        }
    }
}
