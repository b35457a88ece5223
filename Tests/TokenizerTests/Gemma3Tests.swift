import Foundation
import GGUF
import XCTest
@testable import Tokenizer

/// Gemma 3 270M's SentencePiece vocabulary (GGUF `tokenizer.ggml.model = llama`), read from the GGUF that `GEMMA3_GGUF`
/// names (tools/setup_assets.sh --gemma3-gguf-only), against the tokenizer transformers 5.25 builds from the same file.
final class Gemma3Tests: XCTestCase {
    func testRealVocabularyMetadata() throws {
        let vocabulary = try Gemma3Vocabulary.load()
        let metadata = vocabulary.metadata
        XCTAssertEqual(metadata.string("general.architecture"), "gemma3")
        XCTAssertEqual(metadata.string("tokenizer.ggml.model"), "llama")
        XCTAssertEqual(vocabulary.tokens.count, 262_144)
        XCTAssertEqual(vocabulary.scores.count, 262_144)
        XCTAssertEqual(metadata.integer("tokenizer.ggml.bos_token_id"), 2)
        XCTAssertEqual(metadata.integer("tokenizer.ggml.eos_token_id"), 1)
        XCTAssertEqual(metadata.file.metadata["tokenizer.ggml.add_space_prefix"]?.boolValue, false)
        XCTAssertEqual(metadata.file.metadata["tokenizer.ggml.add_bos_token"]?.boolValue, true)
        // 255,474 normal, 6,249 control, 256 byte and 165 user-defined tokens (among them "\n" runs, "  " runs, "\t"
        // runs and HTML tags).
        let counts = Dictionary(grouping: vocabulary.tokenTypes, by: { $0 }).mapValues(\.count)
        XCTAssertEqual(counts, [1: 255_474, 3: 6_249, 6: 256, 4: 165])
        XCTAssertEqual(vocabulary.tokens[138], "  ")
        XCTAssertEqual(try vocabulary.tokenizer().vocabularySize, 262_144)
    }

    /// Ids by hand from the vocabulary: "▁▁" (138, respelled from "  ") is reached by merging two "▁" (236743), and
    /// ranks first since merges follow the vocabulary order; "\n\n" (108) and "\t\t" (255969) are user-defined tokens
    /// matched whole; "<bos>" (2) is a control token; U+0001 has a token of its own (249732); "😀" too (242398).
    func testHandPickedIDs() throws {
        let tokenizer = try Gemma3Vocabulary.load().tokenizer()
        XCTAssertEqual(tokenizer.encode("Hello world"), [9259, 1902])
        XCTAssertEqual(tokenizer.encode("a  the"), [236746, 138, 1437])
        XCTAssertEqual(tokenizer.encode("  x"), [138, 236781])
        XCTAssertEqual(tokenizer.encode("\n\n1990 was"), [108, 236770, 236819, 236819, 236771, 691])
        XCTAssertEqual(tokenizer.encode("<bos>hi<unk>x<mask>"), [2, 2202, 3, 236781, 4])
        XCTAssertEqual(tokenizer.encode("tab\t\tx"), [4823, 255969, 236781])
        XCTAssertEqual(tokenizer.encode("😀 ½"), [242398, 47041])
        XCTAssertEqual(tokenizer.encode("\u{0}\u{1}"), [238, 249732])
        // A literal "▁▁" is the same token as two spaces under transformers' Gemma rule.
        XCTAssertEqual(tokenizer.encode("x\u{2581}\u{2581}y"), [236781, 138, 236762])
    }

    /// Where transformers' Gemma rule and llama.cpp part: runs of more than 31 spaces and literal "▁". llama.cpp
    /// (llama-cpp-python 0.3.36's vendored tree, `tokenize(add_bos=False, special=True)` on this GGUF) matches the
    /// user-defined space tokens whole and merges by score; the same vocabulary with merges by score
    /// (`SentencePieceMerges.scores`) gives llama.cpp's ids, and the Gemma rule transformers'. On the whole test split
    /// and the other 558 check texts the three agree (benchmarks/README.md, 2026-12-06).
    func testGemmaRuleAgainstScoreOrderOnSpaceRuns() throws {
        let vocabulary = try Gemma3Vocabulary.load()
        let byScore = try SentencePieceTokenizer(tokens: vocabulary.tokens, tokenTypes: vocabulary.tokenTypes,
                                                 merges: .scores(vocabulary.scores), spacing: SentencePieceSpacing(prefix: .none),
                                                 bosTokenID: 2, eosTokenID: 1)
        let gemma = try vocabulary.tokenizer()
        let cases: [(text: String, llamaCpp: [Int32], transformers: [Int32])] = [
            (String(repeating: " ", count: 40) + "word", [167, 145, 3017], [152, 160, 3017]),
            ("a" + String(repeating: " ", count: 33) + "b", [236746, 167, 138, 236763], [236746, 152, 153, 236763]),
            ("x\u{2581}\u{2581}y", [236781, 236743, 570], [236781, 138, 236762]),
            ("\u{2581}\u{2581}\u{2581} the", [236743, 236743, 236743, 506], [140, 1437]),
        ]
        for item in cases {
            XCTAssertEqual(byScore.encode(item.text), item.llamaCpp, item.text.debugDescription)
            XCTAssertEqual(gemma.encode(item.text), item.transformers, item.text.debugDescription)
        }
    }

    /// Every `gemma3_cases` text of the fixture (the hand-made unicode / whitespace / digit / special-token texts of the
    /// SmolLM2 cases, the pre-tokenizer texts, long space runs, Wikipedia paragraphs and raw wikitext) gives the ids of
    /// the tokenizer transformers 5.25 builds from the Gemma 3 GGUF.
    func testMatchesTheGGUFBuiltHuggingFaceTokenizer() throws {
        let tokenizer = try Gemma3Vocabulary.load().tokenizer()
        let cases = try Fixture.load().gemma3Cases
        XCTAssertGreaterThan(cases.count, 90, "gemma3_cases: write the fixture with tools/make_tokenizer_fixture.py --gemma3-gguf")
        for item in cases {
            XCTAssertEqual(tokenizer.encode(item.text), item.ids, item.text.debugDescription)
        }
    }

    /// Every text survives encode + decode (byte fallback covers every byte; no prefix space to strip), except that a
    /// literal "▁" comes back as a space, as from Hugging Face's decoder.
    func testRoundTrip() throws {
        let tokenizer = try Gemma3Vocabulary.load().tokenizer()
        for item in try Fixture.load().gemma3Cases {
            let expected = item.text.replacingOccurrences(of: "\u{2581}", with: " ")
            XCTAssertEqual(Array(tokenizer.decode(tokenizer.encode(item.text)).utf8), Array(expected.utf8), item.text.debugDescription)
        }
    }

    /// Opt-in, run by tools/check_sentencepiece_tokenizer.py: `GEMMA3_TEXT` (e.g. data/wiki.test.txt) and `GEMMA3_IDS`
    /// (Hugging Face's ids of it, little-endian int32); writes our ids to `GEMMA3_OUR_IDS` when that is set.
    func testWholeTextMatchesHuggingFace() throws {
        let environment = ProcessInfo.processInfo.environment
        guard let textPath = environment["GEMMA3_TEXT"], let idsPath = environment["GEMMA3_IDS"] else {
            throw XCTSkip("set GEMMA3_TEXT and GEMMA3_IDS (tools/check_sentencepiece_tokenizer.py does)")
        }
        let vocabulary = try Gemma3Vocabulary.load()
        let text = try String(contentsOfFile: textPath, encoding: .utf8)
        let expected = try Data(contentsOf: URL(fileURLWithPath: idsPath)).withUnsafeBytes { raw in
            (0..<raw.count / 4).map { Int32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self)) }
        }
        var start = ContinuousClock.now
        let tokenizer = try vocabulary.tokenizer()
        let built = ContinuousClock.now - start
        start = ContinuousClock.now
        let ids = tokenizer.encode(text)
        let elapsed = ContinuousClock.now - start
        if let out = environment["GEMMA3_OUR_IDS"] {
            try ids.map { $0.littleEndian }.withUnsafeBytes { Data($0) }.write(to: URL(fileURLWithPath: out))
        }
        let mismatches = (0..<min(ids.count, expected.count)).filter { ids[$0] != expected[$0] }
        print("gemma3 \(textPath): \(text.utf8.count) bytes -> \(ids.count) ids (Hugging Face \(expected.count)), "
              + "\(mismatches.count) differing positions, build \(built), encode \(elapsed)")
        XCTAssertEqual(ids.count, expected.count)
        if let first = mismatches.first {
            XCTFail("first difference at id \(first): \(ids[first]) vs \(expected[first])")
        }
        XCTAssertEqual(tokenizer.decode(ids).utf8.count, text.utf8.count)
    }
}

extension Gemma3Tests {
    /// Opt-in, run by tools/check_sentencepiece_tokenizer.py: `GEMMA3_CASES` names a JSON array of {"text", "ids"}
    /// (Hugging Face's ids); our ids of each text are written as a JSON array of arrays to `GEMMA3_OUR_CASES` and
    /// compared.
    func testCasesFileMatchesHuggingFace() throws {
        let environment = ProcessInfo.processInfo.environment
        guard let casesPath = environment["GEMMA3_CASES"] else {
            throw XCTSkip("set GEMMA3_CASES (tools/check_sentencepiece_tokenizer.py does)")
        }
        struct Item: Decodable { let text: String; let ids: [Int32] }
        let items = try JSONDecoder().decode([Item].self, from: Data(contentsOf: URL(fileURLWithPath: casesPath)))
        let tokenizer = try Gemma3Vocabulary.load().tokenizer()
        let ours = items.map { tokenizer.encode($0.text) }
        if let out = environment["GEMMA3_OUR_CASES"] {
            try JSONEncoder().encode(ours).write(to: URL(fileURLWithPath: out))
        }
        let differing = zip(items, ours).filter { $0.ids != $1 }.count
        print("gemma3 cases \(casesPath): \(items.count) texts, \(ours.map(\.count).reduce(0, +)) ids, \(differing) texts differ")
        for (item, ids) in zip(items, ours) { XCTAssertEqual(ids, item.ids, item.text.debugDescription) }
    }
}

extension Gemma3Tests {
    /// Opt-in, run by tools/check_sentencepiece_tokenizer.py: `GEMMA3_MERGES` names transformers' tokenizer.json
    /// `model` object (its vocab and merges) built from the GGUF; our respelled vocabulary and derived merge list must
    /// equal it entry for entry.
    func testMergeListMatchesHuggingFace() throws {
        guard let path = ProcessInfo.processInfo.environment["GEMMA3_MERGES"] else {
            throw XCTSkip("set GEMMA3_MERGES (tools/check_sentencepiece_tokenizer.py does)")
        }
        // The vocabulary comes as [token, id] pairs: a JSON object's keys would be Swift Strings, which compare by
        // canonical equivalence, and Gemma holds canonically equivalent but different tokens.
        struct Model: Decodable { let vocab: [[String]]; let merges: [[String]] }
        let model = try JSONDecoder().decode(Model.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
        let (tokens, merges) = try Gemma3Vocabulary.load().tokenizer().mergeList()
        XCTAssertEqual(model.vocab.count, tokens.count)
        let wrongIDs = model.vocab.filter { pair in
            Int(pair[1]).map { !tokens.indices.contains($0) || Array(tokens[$0].utf8) != Array(pair[0].utf8) } ?? true
        }
        XCTAssertEqual(wrongIDs.count, 0, "first token with another id: \(wrongIDs.first ?? [])")
        XCTAssertEqual(merges.count, model.merges.count)
        let first = zip(merges, model.merges).enumerated().first { [$0.element.0.0, $0.element.0.1] != $0.element.1 }?.offset
        print("gemma3 merges \(path): \(merges.count) ours, \(model.merges.count) Hugging Face, first difference: \(first.map(String.init) ?? "none")")
        XCTAssertNil(first)
    }
}

/// Gemma 3 270M's vocabulary, read from the GGUF file that `GEMMA3_GGUF` names.
enum Gemma3Vocabulary {
    /// The vocabulary, or an `XCTSkip` when `GEMMA3_GGUF` is unset.
    static func load() throws -> SentencePieceVocabulary {
        try SentencePieceVocabulary.load(variable: "GEMMA3_GGUF", file: "gemma-3-270m-q4_k_m.gguf")
    }
}

/// A SentencePiece vocabulary read from a GGUF file's `tokenizer.ggml.*` metadata, and the tokenizer transformers
/// builds from it (for a `gemma3` file: Gemma's merge rule, no prefix space).
struct SentencePieceVocabulary: @unchecked Sendable {
    let metadata: GGUFMetadata
    let tokens: [String]
    let scores: [Float]
    let tokenTypes: [Int32]

    static func load(variable: String, file: String) throws -> SentencePieceVocabulary {
        guard let path = ProcessInfo.processInfo.environment[variable], !path.isEmpty else {
            throw XCTSkip("set \(variable) to \(file) to run the real-vocabulary tests")
        }
        if let cached = cache.withLock({ $0[path] }) { return cached }
        let metadata = try GGUFMetadata(file: GGUFFile(path: path))
        let vocabulary = SentencePieceVocabulary(
            metadata: metadata,
            tokens: metadata.strings("tokenizer.ggml.tokens") ?? [],
            scores: (metadata.file.metadata["tokenizer.ggml.scores"]?.arrayValue ?? []).compactMap { $0.doubleValue.map(Float.init) },
            tokenTypes: (metadata.integers("tokenizer.ggml.token_type") ?? []).map { Int32($0) })
        cache.withLock { $0[path] = vocabulary }
        return vocabulary
    }

    /// The tokenizer (built once per file: deriving 514,906 merges takes a while in a debug build).
    func tokenizer() throws -> SentencePieceTokenizer {
        let key = metadata.file.path
        if let built = Self.tokenizers.withLock({ $0[key] }) { return built }
        let gemma = (metadata.string("general.architecture") ?? "").hasPrefix("gemma")
        let built = try SentencePieceTokenizer(
            tokens: tokens, tokenTypes: tokenTypes, merges: gemma ? .gemma : .scores(scores),
            spacing: SentencePieceSpacing(prefix: gemma ? .none : .first),
            bosTokenID: metadata.integer("tokenizer.ggml.bos_token_id").map { Int32($0) },
            eosTokenID: metadata.integer("tokenizer.ggml.eos_token_id").map { Int32($0) })
        Self.tokenizers.withLock { $0[key] = built }
        return built
    }

    private static let cache = Locked<[String: SentencePieceVocabulary]>([:])
    private static let tokenizers = Locked<[String: SentencePieceTokenizer]>([:])
}
