import Diagnostics

/// A safetensors read failure: the file, the tensor where there is one, and what was expected versus found;
/// `description` is "FILE: MESSAGE".
public struct SafetensorsError: ContextualError, Sendable {
    /// The file (`<writer>` for a file being built).
    public let file: String
    /// What is wrong, without the path.
    public let message: String
    /// The tensor concerned, if any.
    public let tensor: String?
    /// What was expected and what was found there, if the message states them.
    public let expected: String?
    public let found: String?

    init(_ path: String, _ message: String, tensor: String? = nil, expected: String? = nil, found: String? = nil) {
        file = path
        self.message = message
        self.tensor = tensor
        self.expected = expected
        self.found = found
    }

    /// Human-readable message, prefixed with the file path.
    public var description: String { "\(file): \(message)" }
    public var context: ErrorContext { ErrorContext(file: file, tensor: tensor, expected: expected, found: found) }
}
