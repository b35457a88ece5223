import Diagnostics

/// An error raised while building a tokenizer from a vocabulary, merges or metadata.
public struct TokenizerError: ContextualError, Sendable {
    /// What is wrong; the file, when `context` names one, is prefixed when rendered.
    public let message: String
    /// Where and what: the file, key, tensor, expected and found value, as far as the thrower knows them.
    public let context: ErrorContext
    /// An error whose message says everything (it names its file itself, if any).
    public init(_ description: String) { message = description; context = ErrorContext() }
    /// An error with fields; `description` is "FILE: MESSAGE" when `context` names a file.
    public init(_ message: String, _ context: ErrorContext) { self.message = message; self.context = context }
    public var description: String { context.prefixingFile(message) }
}
