import GGUF
import Foundation
import XCTest
@testable import Tokenizer

/// The committed reference cases written by tools/make_tokenizer_fixture.py.
struct Fixture: Decodable {
    struct Case: Decodable {
        let text: String
        /// Hugging Face's ids with the tokenizer transformers builds from the GGUF (GPT-2 regex).
        let ids: [Int32]
        /// Hugging Face's ids with SmolLM2's hub pre-tokenizer, when they differ from `ids`.
        let idsHub: [Int32]?

        enum CodingKeys: String, CodingKey {
            case text, ids
            case idsHub = "ids_hub"
        }
    }

    struct DecodeCase: Decodable {
        let ids: [Int32]
        let text: String
    }

    struct PretokenizeCase: Decodable {
        let text: String
        let gpt2: [String]
        let smollm: [String]
        let llama3: [String]
        let qwen2: [String]

        /// The pieces Hugging Face's pre-tokenizer of this kind cuts `text` into.
        func pieces(_ kind: PreTokenizer) -> [String] {
            switch kind {
            case .gpt2: gpt2
            case .smollm: smollm
            case .llama3: llama3
            case .qwen2: qwen2
            }
        }
    }

    /// Hugging Face's ids with the tokenizer transformers builds from the Qwen2.5-Coder GGUF.
    struct IDCase: Decodable {
        let text: String
        let ids: [Int32]
    }

    let cases: [Case]
    let decode: [DecodeCase]
    let pretokenize: [PretokenizeCase]
    /// Empty when the fixture was written without `--qwen2-gguf`.
    let qwen2Cases: [IDCase]
    /// Hugging Face's ids with the tokenizer transformers builds from the Gemma 3 GGUF (SentencePiece); empty when the
    /// fixture was written without `--gemma3-gguf`.
    let gemma3Cases: [IDCase]

    enum CodingKeys: String, CodingKey {
        case cases, decode, pretokenize
        case qwen2Cases = "qwen2_cases", gemma3Cases = "gemma3_cases"
    }

    init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        cases = try container.decode([Case].self, forKey: .cases)
        decode = try container.decode([DecodeCase].self, forKey: .decode)
        pretokenize = try container.decode([PretokenizeCase].self, forKey: .pretokenize)
        qwen2Cases = try container.decodeIfPresent([IDCase].self, forKey: .qwen2Cases) ?? []
        gemma3Cases = try container.decodeIfPresent([IDCase].self, forKey: .gemma3Cases) ?? []
    }

    static func load() throws -> Fixture {
        guard let url = Bundle.module.url(forResource: "tokenizer_cases", withExtension: "json",
                                          subdirectory: "Fixtures") else {
            throw TokenizerError("Fixtures/tokenizer_cases.json is missing from the test bundle")
        }
        return try JSONDecoder().decode(Fixture.self, from: Data(contentsOf: url))
    }
}

/// SmolLM2's vocabulary, read from the GGUF file that `SMOLLM2_GGUF` names.
enum SmolLM2Vocabulary {
    /// The vocabulary, or an `XCTSkip` when `SMOLLM2_GGUF` is unset.
    static func load() throws -> GGUFVocabulary {
        try GGUFVocabulary.load(variable: "SMOLLM2_GGUF", file: "SmolLM2-135M-Instruct.Q4_1.gguf")
    }
}

/// Qwen2.5-Coder-0.5B-Instruct's vocabulary (`tokenizer.ggml.pre = qwen2`), read from the GGUF file that
/// `QWEN2_GGUF` names (tools/setup_assets.sh --qwen2).
enum Qwen2Vocabulary {
    /// The vocabulary, or an `XCTSkip` when `QWEN2_GGUF` is unset.
    static func load() throws -> GGUFVocabulary {
        try GGUFVocabulary.load(variable: "QWEN2_GGUF", file: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
    }
}

/// A byte-level BPE vocabulary read from a GGUF file's `tokenizer.ggml.*` metadata.
struct GGUFVocabulary {
    let metadata: GGUFMetadata
    let tokens: [String]
    let merges: [String]
    let tokenTypes: [Int32]

    /// The vocabulary of the GGUF file the environment `variable` names (read once per file), or an `XCTSkip`
    /// naming `file` when the variable is unset.
    static func load(variable: String, file: String) throws -> GGUFVocabulary {
        guard let path = ProcessInfo.processInfo.environment[variable], !path.isEmpty else {
            throw XCTSkip("set \(variable) to \(file) to run the real-vocabulary tests")
        }
        if let cached = cache.withLock({ $0[path] }) { return cached }
        let metadata = try GGUFMetadata(file: GGUFFile(path: path))
        let vocabulary = GGUFVocabulary(
            metadata: metadata,
            tokens: metadata.strings("tokenizer.ggml.tokens") ?? [],
            merges: metadata.strings("tokenizer.ggml.merges") ?? [],
            tokenTypes: (metadata.integers("tokenizer.ggml.token_type") ?? []).map { Int32($0) })
        cache.withLock { $0[path] = vocabulary }
        return vocabulary
    }

    func tokenizer(_ preTokenizer: PreTokenizer) throws -> BPETokenizer {
        try BPETokenizer(tokens: tokens, merges: merges, preTokenizer: preTokenizer, tokenTypes: tokenTypes,
                         bosTokenID: metadata.integer("tokenizer.ggml.bos_token_id").map { Int32($0) },
                         eosTokenID: metadata.integer("tokenizer.ggml.eos_token_id").map { Int32($0) })
    }

    private static let cache = Locked<[String: GGUFVocabulary]>([:])
}

/// A value behind a lock, for caching across tests.
final class Locked<Value>: @unchecked Sendable {
    private var value: Value
    private let lock = NSLock()

    init(_ value: Value) { self.value = value }

    func withLock<Result>(_ body: (inout Value) -> Result) -> Result {
        lock.lock()
        defer { lock.unlock() }
        return body(&value)
    }
}

/// Compares strings scalar by scalar (Swift's `==` would treat canonically equivalent text as equal).
func assertSameScalars(_ actual: String, _ expected: String, _ message: String = "",
                        file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(Array(actual.unicodeScalars), Array(expected.unicodeScalars), message, file: file, line: line)
}

func assertSameScalars(_ actual: [String], _ expected: [String], _ message: String = "",
                        file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(actual.map { Array($0.unicodeScalars) }, expected.map { Array($0.unicodeScalars) },
                   message, file: file, line: line)
}

/// Typed, optional look-ups of GGUF metadata (through the GGUF module's reader).
struct GGUFMetadata {
    let file: GGUFFile
    func string(_ key: String) -> String? { file.metadata[key]?.stringValue }
    func integer(_ key: String) -> Int64? { file.metadata[key]?.intValue.map { Int64($0) } }
    func strings(_ key: String) -> [String]? { file.metadata[key]?.arrayValue?.compactMap(\.stringValue) }
    func integers(_ key: String) -> [Int64]? { file.metadata[key]?.arrayValue?.compactMap { $0.intValue.map { Int64($0) } } }
}
