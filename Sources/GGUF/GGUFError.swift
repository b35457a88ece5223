/// A GGUF read failure; `description` names the file and what was expected versus found.
public struct GGUFError: Error, CustomStringConvertible, Sendable {
    /// Human-readable message, prefixed with the file path.
    public let description: String

    init(_ path: String, _ message: String) {
        description = "\(path): \(message)"
    }
}
