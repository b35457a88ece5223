import Checkpoint
import Foundation
import GGUF
import Model
@testable import Import
import Tokenizer
import XCTest
@testable import Export

/// Parity of the NFC normalizer (Qwen2's tokenizer.json, `"normalizer": {"type": "NFC"}`) with Hugging Face
/// `tokenizers`: Tests/Fixtures/nfc-bpe holds a small Qwen2-like byte-level BPE and the ids the library gives
/// (tools/make_nfc_tokenizer_fixture.py, tokenizers 0.23.3) for decomposed, composed and mixed text, with added tokens
/// (normalized false, matched in the raw text) beside decomposed text, with the normalizer and without it.
final class NFCTokenizerParityTests: XCTestCase {
    static let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/nfc-bpe")

    struct Case: Decodable {
        let text: String
        let ids: [Int32]
        let idsWithoutNormalizer: [Int32]
        enum CodingKeys: String, CodingKey { case text, ids, idsWithoutNormalizer = "ids_without_normalizer" }
    }

    static func cases() throws -> [Case] {
        struct File: Decodable { let cases: [Case] }
        let data = try Data(contentsOf: dir.appendingPathComponent("cases.json"))
        return try JSONDecoder().decode(File.self, from: data).cases
    }

    /// The byte-level tokenizer a spec describes (as `Workbench.tokenizer` builds it), with or without its normalizer.
    static func tokenizer(_ spec: TokenizerSpec, normalized: Bool = true) throws -> BPETokenizer {
        try BPETokenizer(tokens: spec.tokens, merges: spec.merges, preTokenizer: PreTokenizer(ggufName: spec.pre),
                         tokenTypes: spec.tokenTypes, bosTokenID: spec.bosTokenID, eosTokenID: spec.eosTokenID,
                         normalizer: normalized ? spec.normalizer.flatMap(TextNormalizer.init(rawValue:)) : nil)
    }

    func testImportedNFCTokenizerEncodesAsTheTokenizersLibrary() throws {
        let spec = try HFTokenizerJSON.read(Self.dir.appendingPathComponent("tokenizer.json").path)
        XCTAssertEqual(spec.normalizer, "NFC")
        XCTAssertEqual(spec.pre, "qwen2")
        let nfc = try Self.tokenizer(spec), plain = try Self.tokenizer(spec, normalized: false)
        let cases = try Self.cases()
        var changed = 0
        for c in cases {
            let scalars = c.text.unicodeScalars.map { String($0.value, radix: 16) }
            XCTAssertEqual(nfc.encode(c.text), c.ids, "\(scalars)")
            XCTAssertEqual(plain.encode(c.text), c.idsWithoutNormalizer, "without the normalizer: \(scalars)")
            if c.ids != c.idsWithoutNormalizer { changed += 1 }
        }
        // Most cases are ones NFC changes, so a tokenizer that ignored the normalizer would fail above.
        XCTAssertEqual(changed, 16)  // of 23
        XCTAssertEqual(cases.count, 23)
    }

    func testNFCNormalizerIsExportedAndReadBack() throws {
        let spec = try HFTokenizerJSON.read(Self.dir.appendingPathComponent("tokenizer.json").path)
        let bytes = try TokenizerFiles.tokenizerJSON(spec)
        let root = try XCTUnwrap(try JSONValue.parse(String(decoding: bytes, as: UTF8.self)).objectValue)
        XCTAssertEqual(root["normalizer"], .object(["type": .string("NFC")]))
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("nfc-export-\(UUID().uuidString).json")
        defer { try? FileManager.default.removeItem(at: url) }
        try Data(bytes).write(to: url)
        XCTAssertEqual(try HFTokenizerJSON.read(url.path), spec)
        var none = spec
        none.normalizer = nil
        let written = String(decoding: try TokenizerFiles.tokenizerJSON(none), as: UTF8.self)
        let plain = try XCTUnwrap(try JSONValue.parse(written).objectValue)
        XCTAssertEqual(plain["normalizer"], JSONValue.null)
        // GGUF has no normalizer key (llama.cpp applies none): the export says so instead of dropping it silently.
        var writer = GGUFWriter()
        let warnings = try GGUFExport.addTokenizer(spec, architecture: "qwen2", to: &writer)
        XCTAssertTrue(warnings.contains { $0.hasPrefix("tokenizer normalizer NFC: GGUF has no key for it") }, "\(warnings)")
        var plainWriter = GGUFWriter()
        XCTAssertFalse(try GGUFExport.addTokenizer(none, architecture: "qwen2", to: &plainWriter).contains { $0.contains("normalizer") })
    }
}
