import XCTest
@testable import Tokenizer

/// Llama 3's tokenizers set `"ignore_merges": true`: a pre-token that is itself a vocabulary entry is that
/// token, even when no sequence of merges reaches it (bug case 02; ids from Hugging Face tokenizers 0.23).
final class IgnoreMergesTests: XCTestCase {
    func testWholePieceInTheVocabularyIsOneToken() throws {
        let bytes = (0..<256).map { String(ByteLevel.scalarForByte[$0]) }
        func spell(_ s: String) -> String { s.utf8.map { String(ByteLevel.scalarForByte[Int($0)]) }.joined() }
        // 256 " V", 257 " Vi", 258 " Việt" (no merge builds it).
        let tokens = bytes + [spell(" V"), spell(" Vi"), spell(" Việt")]
        let merges = ["\(spell(" ")) V", "\(spell(" V")) i"]
        let llama3 = try BPETokenizer(tokens: tokens, merges: merges, preTokenizer: .llama3, bosTokenID: nil, eosTokenID: nil)
        // tokenizers: "Cửa Việt" -> ["C", "á", "»", "Ń", "a", "ĠViá»ĩt"] = [67, 225, 187, 173, 97, 258].
        XCTAssertEqual(llama3.encode("Cửa Việt"), [67, 225, 187, 173, 97, 258])
        XCTAssertEqual(llama3.encode("Cửa Việt Việt"), [67, 225, 187, 173, 97, 258, 258])  // also through the word cache
        // Pieces that are not tokens still merge: " Vin" -> " Vi" + "n".
        XCTAssertEqual(llama3.encode(" Vin"), [257, 110])
        // GPT-2's pre-tokenizer merges as before: " Việt" is " Vi" + the bytes of "ệt".
        let gpt2 = try BPETokenizer(tokens: tokens, merges: merges, preTokenizer: .gpt2, bosTokenID: nil, eosTokenID: nil)
        XCTAssertEqual(gpt2.encode(" Việt"), [257, 225, 187, 135, 116])
        XCTAssertTrue(PreTokenizer.llama3.ignoresMerges)
        XCTAssertFalse(PreTokenizer.gpt2.ignoresMerges || PreTokenizer.smollm.ignoresMerges)
    }
}
