import Diagnostics

/// Why a checkpoint could not be read or written. Every case names the file and, where there is one, the
/// tensor or key, with what was expected and what was found.
public enum CheckpointError: ContextualError, Equatable {
    case notFound(path: String)
    case notHDF5(path: String)
    case unreadable(path: String, detail: String)
    case wrongFormat(path: String, found: String, expected: String)
    case unsupportedVersion(path: String, found: Int, supported: [Int])
    case nonFinite(path: String, tensor: String, index: Int, value: Float)
    /// `context`: the fields of the model's own error (the tensor, expected and found of a shape the config refuses).
    case badConfig(path: String, detail: String, context: ErrorContext = ErrorContext())
    case badTokenizer(path: String, detail: String)
    case badHistory(path: String, detail: String)
    case missingTensor(path: String, tensor: String, expectedShape: [Int])
    case unknownTensor(path: String, tensor: String)
    case unknownEntry(path: String, entry: String)
    case shapeMismatch(path: String, tensor: String, expected: [Int], found: [Int])
    case wrongType(path: String, tensor: String, expected: String, found: String)
    case writeFailed(path: String, detail: String)
    case badMask(path: String, tensor: String, detail: String)
    case badQuantized(path: String, tensor: String, detail: String)

    public var description: String {
        switch self {
        case .notFound(let p): return "\(p): no such file"
        case .notHDF5(let p):
            return "\(p): not an HDF5 file (expected a compress checkpoint; import other formats with 'compress "
                + "import')"
        case .unreadable(let p, let d): return "\(p): \(d)"
        case .wrongFormat(let p, let f, let e):
            return "\(p): root attribute 'format' is '\(f)', expected '\(e)'"
        case .unsupportedVersion(let p, let v, let s):
            return "\(p): root attribute 'format_version' is \(v), which this build does not read (it reads "
                + "version\(s.count == 1 ? "" : "s") \(s.map(String.init).joined(separator: ", ")))"
        case .nonFinite(let p, let t, let i, let v):
            return "\(p): tensor '\(t)' holds \(v) at element \(i) (expected finite values only)"
        case .badConfig(let p, let d, _): return "\(p): \(d)"
        case .badTokenizer(let p, let d): return "\(p): tokenizer: \(d)"
        case .badHistory(let p, let d): return "\(p): history: \(d)"
        case .missingTensor(let p, let t, let s): return "\(p): missing tensor '\(t)' (expected shape \(s))"
        case .unknownTensor(let p, let t):
            return "\(p): unknown tensor '\(t)' (not part of the model described by the config)"
        case .unknownEntry(let p, let e):
            return "\(p): unknown entry '/\(e)' (expected only /tensors, /quantized, /sparse, /factorized, /tokenizer, "
                + "and /masks in version 1-2 files)"
        case .shapeMismatch(let p, let t, let e, let f): return "\(p): tensor '\(t)': expected shape \(e), found \(f)"
        case .wrongType(let p, let t, let e, let f): return "\(p): tensor '\(t)': expected \(e), found \(f)"
        case .writeFailed(let p, let d): return "\(p): could not write checkpoint: \(d)"
        case .badMask(let p, let t, let d): return "\(p): mask of '\(t)': \(d)"
        case .badQuantized(let p, let t, let d): return "\(p): quantized tensor '\(t)': \(d)"
        }
    }

    /// The file, tensor, expected and found value of the case, as fields.
    public var context: ErrorContext {
        switch self {
        case .notFound(let p): return ErrorContext(file: p, expected: "a checkpoint", found: "no such file")
        case .notHDF5(let p): return ErrorContext(file: p, expected: "an HDF5 file", found: "another format")
        case .unreadable(let p, _), .badTokenizer(let p, _), .badHistory(let p, _), .writeFailed(let p, _):
            return ErrorContext(file: p)
        case .badConfig(let p, _, let c): return c.filled(from: ErrorContext(file: p))
        case .wrongFormat(let p, let f, let e): return ErrorContext(file: p, key: "format", expected: e, found: f)
        case .unsupportedVersion(let p, let v, let s):
            return ErrorContext(file: p, key: "format_version", expected: s.map(String.init).joined(separator: ", "),
                                found: "\(v)")
        case .nonFinite(let p, let t, _, let v):
            return ErrorContext(file: p, tensor: t, expected: "finite values", found: "\(v)")
        case .missingTensor(let p, let t, let s):
            return ErrorContext(file: p, tensor: t, expected: "shape \(s)", found: "no tensor")
        case .unknownTensor(let p, let t): return ErrorContext(file: p, tensor: t)
        case .unknownEntry(let p, let e): return ErrorContext(file: p, key: e)
        case .shapeMismatch(let p, let t, let e, let f):
            return ErrorContext(file: p, tensor: t, expected: "\(e)", found: "\(f)")
        case .wrongType(let p, let t, let e, let f): return ErrorContext(file: p, tensor: t, expected: e, found: f)
        case .badMask(let p, let t, _), .badQuantized(let p, let t, _): return ErrorContext(file: p, tensor: t)
        }
    }
}
