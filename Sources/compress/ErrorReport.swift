import Diagnostics

/// The JSON object a failing command prints under `--json`: the message (`error`, as on standard error) and the
/// fields the error states, where it has them (`file`, `stage`, `stage_name`, `key`, `tensor`, `expected`, `found`:
/// `ErrorContext`).
struct ErrorReport: Encodable {
    let error: String
    let context: ErrorContext

    init(message: String, error: any Error) {
        self.error = message
        context = error.errorContext
    }

    enum CodingKeys: String, CodingKey { case error, file, stage, stageName, key, tensor, expected, found }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(error, forKey: .error)
        try c.encodeIfPresent(context.file, forKey: .file)
        try c.encodeIfPresent(context.stage, forKey: .stage)
        try c.encodeIfPresent(context.stageName, forKey: .stageName)
        try c.encodeIfPresent(context.key, forKey: .key)
        try c.encodeIfPresent(context.tensor, forKey: .tensor)
        try c.encodeIfPresent(context.expected, forKey: .expected)
        try c.encodeIfPresent(context.found, forKey: .found)
    }
}
