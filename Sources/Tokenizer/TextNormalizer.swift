import Foundation

/// A normalization applied to text before pre-tokenization (tokenizer.json's `normalizer`). Added tokens are matched
/// in the raw text first, as Hugging Face `tokenizers` matches those with `normalized: false`; each stretch between
/// them is normalized on its own (`AddedVocabulary::extract_and_normalize`).
public enum TextNormalizer: String, Sendable, CaseIterable {
    /// Unicode canonical composition (NFC), as Qwen2's and Qwen2.5's tokenizer.json ask for.
    case nfc = "NFC"

    /// Whether normalizing these UTF-8 bytes may change them. Every scalar below U+0300 (UTF-8 lead bytes up to 0xCB,
    /// continuation bytes 0x80...0xBF) is stable under NFC and composes with no scalar below U+0300, so text without
    /// a byte from 0xCC up is already NFC.
    static func mayChange(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        bytes.contains { $0 >= 0xCC }
    }

    /// `text` normalized (Foundation's canonical composition, the same on Linux and macOS).
    func apply(_ text: String) -> String {
        switch self {
        case .nfc: text.precomposedStringWithCanonicalMapping
        }
    }
}
