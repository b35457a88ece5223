/// What the workbench needs of a tokenizer: text to ids and back. Byte-level BPE (`BPETokenizer`) and SentencePiece
/// (`SentencePieceTokenizer`) vocabularies both provide it; `Workbench.tokenizer(_:path:)` picks one from a
/// checkpoint's tokenizer model.
public protocol TextTokenizer: Sendable {
    /// The number of tokens in the vocabulary.
    var vocabularySize: Int { get }
    /// The token ids of `text`, without BOS, EOS or any other token the tokenizer would add around it.
    func encode(_ text: String) -> [Int32]
    /// The text that `ids` spell; ids outside the vocabulary are skipped, invalid UTF-8 becomes U+FFFD.
    func decode(_ ids: [Int32]) -> String
}

extension BPETokenizer: TextTokenizer {}
