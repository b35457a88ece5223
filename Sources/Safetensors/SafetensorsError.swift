/// A safetensors read failure; `description` names the file (and tensor) and what was expected versus found.
public struct SafetensorsError: Error, CustomStringConvertible, Sendable {
    /// Human-readable message, prefixed with the file path.
    public let description: String

    init(_ path: String, _ message: String) {
        description = "\(path): \(message)"
    }
}
