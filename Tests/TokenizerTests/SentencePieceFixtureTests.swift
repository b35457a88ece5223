import Foundation
import XCTest
@testable import Tokenizer

/// A tiny SentencePiece BPE model trained by tools/make_tokenizer_fixture.py with the `sentencepiece` package, and the
/// ids of 25 texts under the `sentencepiece` encoder itself and under the tokenizers transformers 5.25 builds from the
/// same vocabulary for GGUF architectures llama, phi3 and gemma3 (Fixtures/sentencepiece_cases.json).
final class SentencePieceFixtureTests: XCTestCase {
    struct Case: Decodable {
        let text: String
        let sentencepiece, llama, phi3, always, split, gemma3: [Int32]
    }

    struct Fixture: Decodable {
        let byteTokensAt: Int
        let tokens: [String]
        let scores: [Float]
        let types: [Int32]
        let bos, eos: Int32
        let gemmaInsertedAt: Int
        let gemmaInserted: [String]
        let cases: [Case]

        enum CodingKeys: String, CodingKey {
            case tokens, scores, types, bos, eos, cases
            case byteTokensAt = "byte_tokens_at", gemmaInsertedAt = "gemma_inserted_at", gemmaInserted = "gemma_inserted"
        }

        static func load() throws -> Fixture {
            guard let url = Bundle.module.url(forResource: "sentencepiece_cases", withExtension: "json", subdirectory: "Fixtures") else {
                throw TokenizerError("Fixtures/sentencepiece_cases.json is missing from the test bundle")
            }
            return try JSONDecoder().decode(Fixture.self, from: Data(contentsOf: url))
        }

        /// The full vocabulary: the byte pieces put back at `byteTokensAt`.
        var vocabulary: (tokens: [String], scores: [Float], types: [Int32]) {
            let at = byteTokensAt
            return (Array(tokens[..<at]) + (0..<256).map { SentencePieceTokenizer.byteTokenName(UInt8($0)) } + tokens[at...],
                    Array(scores[..<at]) + Array(repeating: 0, count: 256) + scores[at...],
                    Array(types[..<at]) + Array(repeating: 6, count: 256) + types[at...])
        }

        func tokenizer(_ prefix: SentencePieceSpacing.Prefix, split: Bool = false) throws -> SentencePieceTokenizer {
            let v = vocabulary
            return try SentencePieceTokenizer(tokens: v.tokens, tokenTypes: v.types, merges: .scores(v.scores),
                                              spacing: SentencePieceSpacing(prefix: prefix, splitWords: split), bosTokenID: bos, eosTokenID: eos)
        }

        /// The vocabulary with Gemma's whitespace tokens inserted after the control tokens, under Gemma's rule.
        func gemmaTokenizer() throws -> SentencePieceTokenizer {
            let v = vocabulary, at = gemmaInsertedAt, count = gemmaInserted.count
            func shifted(_ id: Int32) -> Int32 { Int(id) >= at ? id + Int32(count) : id }
            return try SentencePieceTokenizer(
                tokens: Array(v.tokens[..<at]) + gemmaInserted + v.tokens[at...],
                tokenTypes: Array(v.types[..<at]) + Array(repeating: 4, count: count) + v.types[at...],
                merges: .gemma, spacing: SentencePieceSpacing(prefix: .none), bosTokenID: shifted(bos), eosTokenID: shifted(eos))
        }
    }

    /// SentencePiece's own encoder (best score first, leftmost on ties; no dummy prefix) gives our ids with merges
    /// derived from the scores and no prefix space. SentencePiece matches only user-defined symbols in the text, so
    /// here control and unknown pieces are given type 5 (unused) and no BOS/EOS.
    func testMatchesSentencePiece() throws {
        let fixture = try Fixture.load()
        let v = fixture.vocabulary
        let tokenizer = try SentencePieceTokenizer(tokens: v.tokens, tokenTypes: v.types.map { $0 == 2 || $0 == 3 ? 5 : $0 },
                                                   merges: .scores(v.scores), spacing: SentencePieceSpacing(prefix: .none),
                                                   bosTokenID: nil, eosTokenID: nil)
        for item in fixture.cases {
            XCTAssertEqual(tokenizer.encode(item.text), item.sentencepiece, item.text.debugDescription)
            // A literal "▁" decodes to a space, as Hugging Face's decoder does.
            let expected = item.text.replacingOccurrences(of: "\u{2581}", with: " ")
            XCTAssertEqual(Array(tokenizer.decode(tokenizer.encode(item.text)).utf8), Array(expected.utf8), item.text.debugDescription)
        }
    }

    /// transformers' builders from a `llama` GGUF vocabulary, by architecture: llama (Metaspace "first"), phi3
    /// (Prepend normalizer: "▁" before every stretch), and the llama backend with Metaspace "always" and with split.
    func testMatchesTransformersBuilders() throws {
        let fixture = try Fixture.load()
        let first = try fixture.tokenizer(.first), every = try fixture.tokenizer(.every)
        let always = try fixture.tokenizer(.always), split = try fixture.tokenizer(.first, split: true)
        for item in fixture.cases {
            let label = item.text.debugDescription
            XCTAssertEqual(first.encode(item.text), item.llama, "llama " + label)
            XCTAssertEqual(every.encode(item.text), item.phi3, "phi3 " + label)
            XCTAssertEqual(always.encode(item.text), item.always, "always " + label)
            XCTAssertEqual(split.encode(item.text), item.split, "split " + label)
        }
    }

    /// The merge list of a derived tokenizer, given back as listed merges over its spelled tokens, tokenizes the same
    /// (what a tokenizer.json of it would hold).
    func testMergeListReproducesTheTokenizer() throws {
        let fixture = try Fixture.load()
        for derived in [try fixture.tokenizer(.first), try fixture.gemmaTokenizer()] {
            let (tokens, merges) = derived.mergeList()
            XCTAssertFalse(merges.contains { $0.0.contains(" ") || $0.1.contains(" ") })
            let v = fixture.vocabulary
            let types = tokens.count == v.types.count ? v.types
                : Array(v.types[..<fixture.gemmaInsertedAt]) + Array(repeating: 4, count: fixture.gemmaInserted.count) + v.types[fixture.gemmaInsertedAt...]
            // Under Gemma's rule the respelled tokens are not added tokens; spelled "▁▁▁" they are normal tokens.
            let listedTypes = zip(types, tokens).map { $0.0 == 4 && $0.1.hasPrefix("\u{2581}") ? 1 : $0.0 }
            let prefix: SentencePieceSpacing.Prefix = tokens.count == v.types.count ? .first : .none
            let bos = Int32(tokens.firstIndex(of: "<s>")!), eos = Int32(tokens.firstIndex(of: "</s>")!)
            let listed = try SentencePieceTokenizer(tokens: tokens, tokenTypes: listedTypes, merges: .explicit(merges.map { "\($0.0) \($0.1)" }),
                                                    spacing: SentencePieceSpacing(prefix: prefix), bosTokenID: bos, eosTokenID: eos)
            for item in fixture.cases { XCTAssertEqual(listed.encode(item.text), derived.encode(item.text), item.text.debugDescription) }
        }
    }

    /// transformers' Gemma builder: "   " and "    " respelled "▁▁▁", "▁▁▁▁" and reached by merges ranked by vocabulary
    /// order; "\n", "\n\n" and "\t" matched whole.
    func testMatchesTransformersGemmaBuilder() throws {
        let fixture = try Fixture.load()
        let tokenizer = try fixture.gemmaTokenizer()
        for item in fixture.cases {
            XCTAssertEqual(tokenizer.encode(item.text), item.gemma3, item.text.debugDescription)
            let expected = item.text.replacingOccurrences(of: "\u{2581}", with: " ")
            XCTAssertEqual(Array(tokenizer.decode(tokenizer.encode(item.text)).utf8), Array(expected.utf8), item.text.debugDescription)
        }
    }
}
