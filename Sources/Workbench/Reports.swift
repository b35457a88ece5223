import Foundation
import Model

/// An error at the workbench boundary (user input), with the file or argument it concerns.
public struct WorkbenchError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// JSON encoding used for every machine-readable output: snake_case keys, sorted, pretty when asked.
public func encodeJSON<T: Encodable>(_ value: T, pretty: Bool = false) -> String {
    let e = JSONEncoder()
    e.keyEncodingStrategy = .convertToSnakeCase
    e.outputFormatting = pretty ? [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
    e.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
    guard let data = try? e.encode(value) else { return "{}" }
    return String(decoding: data, as: UTF8.self)
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
