import Diagnostics
import Foundation
import Model

/// An error at the workbench boundary (user input), with the file or argument it concerns.
public struct WorkbenchError: ContextualError {
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

/// JSON encoding used for every machine-readable output: snake_case keys, sorted, pretty when asked. JSON numbers are
/// always numbers: a non-finite value has no JSON form and is never written (as a string "nan" or otherwise). Every
/// command checks its figures before reporting them (a non-finite PPL, loss, distance or score is an error naming
/// the model and stage); should a report still hold one, this throws a `WorkbenchError` naming the path of the value
/// ("stages.2.ppl"), which the CLI reports like any other error (exit 1; one JSON object under `--json`).
public func encodeJSON<T: Encodable>(_ value: T, pretty: Bool = false) throws -> String {
    let e = JSONEncoder()
    e.keyEncodingStrategy = .convertToSnakeCase
    e.outputFormatting = pretty
        ? [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
    do { return String(decoding: try e.encode(value), as: UTF8.self) } catch {
        let why = firstNonFiniteNumber(in: value).map { "\($0) is not a finite number" } ?? "\(error)"
        throw WorkbenchError("could not encode the report: \(why)")
    }
}

/// Peak resident memory of this process, in bytes.
public func peakResidentBytes() -> Int {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Int(usage.ru_maxrss) * 1024  // Linux reports KiB
}

/// Human-readable byte count.
public func formatBytes(_ b: Int) -> String {
    let units = ["B", "KiB", "MiB", "GiB"]
    var v = Double(b), u = 0
    while v >= 1024 && u < units.count - 1 { v /= 1024; u += 1 }
    return u == 0 ? "\(b) B" : String(format: "%.2f %@", v, units[u])
}

/// Progress lines on standard error (so standard output stays machine-readable).
public func progressLine(_ s: String) {
    FileHandle.standardError.write(Data((s + "\n").utf8))
}
