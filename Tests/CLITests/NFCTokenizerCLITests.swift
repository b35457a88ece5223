import Foundation
import XCTest

/// Qwen2's NFC normalizer end to end (issue "Reliability, second round", item 4): imported from tokenizer.json into the
/// checkpoint, applied by `compress tokenize` (Workbench.tokenizer passes it to the byte-level tokenizer) and shown by
/// `compress inspect`.
extension CLITests {
    func testTokenizeAppliesTheImportedNFCNormalizer() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cli-nfc-\(UUID().uuidString)")
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let hf = dir.appendingPathComponent("hf")
        try FileManager.default.copyItem(at: Self.fixtures.appendingPathComponent("tiny-llama-hf"), to: hf)
        let json = hf.appendingPathComponent("tokenizer.json")
        let text = try String(contentsOf: json, encoding: .utf8)
        XCTAssertTrue(text.contains(#""normalizer": null"#))
        try text.replacingOccurrences(of: #""normalizer": null"#, with: #""normalizer": {"type": "NFC"}"#)
            .write(to: json, atomically: true, encoding: .utf8)
        let out = dir.appendingPathComponent("nfc.h5").path
        let imported = try run(["import", hf.path, "-o", out])
        XCTAssertEqual(imported.status, 0, imported.stderr)
        // The fixture's tokenizer has no merges: ids are UTF-8 bytes, so "e" + U+0301 is 65 CC 81 unless composed
        // to é (C3 A9).
        let input = try tempFile("decomposed.txt", Data("cafe\u{301}".utf8))
        let r = try run(["tokenize", out, "--text", input])
        XCTAssertEqual(r.status, 0, r.stderr)
        func ids(_ r: Result) -> [Int] { r.stdout.split(whereSeparator: \.isWhitespace).compactMap { Int($0) } }
        XCTAssertEqual(ids(r), [0x63, 0x61, 0x66, 0xC3, 0xA9])
        let plain = try run(["tokenize", fixture("tiny-llama.h5"), "--text", input])
        XCTAssertEqual(ids(plain), [0x63, 0x61, 0x66, 0x65, 0xCC, 0x81])
        let inspect = try run(["inspect", out, "--json"])
        let tokenizer = inspect.json?["tokenizer"] as? [String: Any]
        XCTAssertEqual(tokenizer?["normalizer"] as? String, "NFC", String(inspect.stdout.prefix(300)))
    }
}
