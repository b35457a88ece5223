/// An error raised while building a tokenizer from a vocabulary, merges or metadata.
public struct TokenizerError: Error, CustomStringConvertible {
    /// A human-readable explanation of what was wrong with the input.
    public let description: String

    /// Creates an error carrying the given explanation.
    public init(_ description: String) {
        self.description = description
    }
}
