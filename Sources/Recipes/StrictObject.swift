import Diagnostics
import Foundation
import JSONKeys
import Model
import Training

/// An error in a recipe: names the recipe file, the place in it (stage) and the key, as text ("recipes/a.json,
/// stage 2 (gptq): 'bits': ...") and, where the reader knows them, as fields (`context`: file, stage, stage name,
/// key path, expected, found).
public struct RecipeError: ContextualError {
    /// How the message names the place (`StrictObject.location`), or nil when the message names it itself.
    public let location: String?
    /// What is wrong, after the location.
    public let message: String
    public let context: ErrorContext
    /// An error whose message says everything (file and stage included).
    public init(_ description: String) { location = nil; message = description; context = ErrorContext() }
    /// An error at `location` with fields; rendered "LOCATION: MESSAGE".
    public init(at location: String, _ message: String, _ context: ErrorContext) {
        self.location = location
        self.message = message
        self.context = context
    }
    public var description: String { location.map { "\($0): \(message)" } ?? message }
}

/// A JSON object read strictly: every value is fetched by key with its type and allowed range checked, and
/// `finish()` rejects the keys nobody asked for. Errors name the location (recipe file and stage) and the key.
public final class StrictObject {
    public let location: String
    /// The same place as fields: the recipe file, the stage and its name, and this object's key path (nil at the
    /// root of the file or stage); errors add the key read.
    public let context: ErrorContext
    let values: [String: JSONValue]
    private var used: Set<String> = []

    /// `location` is how errors refer to this object, e.g. "recipes/a.json, stage 2 (minitron)"; `context` names
    /// the same place as fields (`ErrorContext(file: "recipes/a.json", stage: 2, stageName: "minitron")`).
    public init(_ json: JSONValue, at location: String, context: ErrorContext = ErrorContext()) throws {
        guard let o = json.objectValue else {
            var c = context
            c.expected = "a JSON object"
            c.found = json.text
            throw RecipeError(at: location, "expected a JSON object, found \(json.text)", c)
        }
        values = o
        self.location = location
        self.context = context
    }

    /// The key path of `key` in this object ("eval.window" for `window` in the `eval` object).
    public func keyPath(_ key: String) -> String { context.key.map { "\($0).\(key)" } ?? key }

    public var keys: [String] { values.keys.sorted() }
    public func has(_ key: String) -> Bool { values[key] != nil && values[key] != .null }

    /// An error at `key` of this object: "LOCATION: 'KEY': MESSAGE", with the key path, expected and found as fields.
    public func fail(_ key: String, _ message: String, expected: String? = nil, found: String? = nil) -> RecipeError {
        var c = context
        c.key = keyPath(key)
        c.expected = expected
        c.found = found
        return RecipeError(at: location, "'\(key)': \(message)", c)
    }

    func take(_ key: String) -> JSONValue? {
        used.insert(key)
        guard let v = values[key], v != .null else { return nil }
        return v
    }

    public func int(_ key: String, default d: Int? = nil, in range: ClosedRange<Int>? = nil) throws -> Int {
        guard let v = take(key) else {
            if let d { return d }
            let what = "an integer\(range.map { " in \($0.lowerBound)...\($0.upperBound)" } ?? "")"
            throw fail(key, "required (\(what))", expected: what, found: "nothing")
        }
        let n: Int
        switch v {
        case .int(let i): n = i
        case .double(let x) where x == x.rounded() && abs(x) < 9e15: n = Int(x)
        default: throw fail(key, "expected an integer, found \(v.text)", expected: "an integer", found: v.text)
        }
        if let range, !range.contains(n) {
            throw fail(key, "\(n) is out of range \(range.lowerBound)...\(range.upperBound)",
                       expected: "\(range.lowerBound)...\(range.upperBound)", found: "\(n)")
        }
        return n
    }

    public func double(_ key: String, default d: Double? = nil, in range: ClosedRange<Double>? = nil) throws -> Double {
        guard let v = take(key) else {
            if let d { return d }
            let what = "a number\(range.map { " in [\($0.lowerBound), \($0.upperBound)]" } ?? "")"
            throw fail(key, "required (\(what))", expected: what, found: "nothing")
        }
        let x: Double
        switch v {
        case .int(let i): x = Double(i)
        case .double(let f): x = f
        default: throw fail(key, "expected a number, found \(v.text)", expected: "a number", found: v.text)
        }
        if let range, !range.contains(x) {
            throw fail(key, "\(x) is out of range [\(range.lowerBound), \(range.upperBound)]",
                       expected: "[\(range.lowerBound), \(range.upperBound)]", found: "\(x)")
        }
        return x
    }

    public func bool(_ key: String, default d: Bool? = nil) throws -> Bool {
        guard let v = take(key) else {
            if let d { return d }
            throw fail(key, "required (true or false)", expected: "true or false", found: "nothing")
        }
        guard case .bool(let b) = v else {
            throw fail(key, "expected true or false, found \(v.text)", expected: "true or false", found: v.text)
        }
        return b
    }

    public func string(_ key: String, default d: String? = nil, oneOf allowed: [String]? = nil) throws -> String {
        guard let v = take(key) else {
            if let d { return d }
            let what = "a string\(allowed.map { ": one of \($0.joined(separator: ", "))" } ?? "")"
            throw fail(key, "required (\(what))", expected: what, found: "nothing")
        }
        guard case .string(let s) = v else {
            throw fail(key, "expected a string, found \(v.text)", expected: "a string", found: v.text)
        }
        if let allowed, !allowed.contains(s) {
            let list = allowed.joined(separator: ", ")
            throw fail(key, "'\(s)' is not one of \(list)", expected: "one of \(list)", found: "'\(s)'")
        }
        return s
    }

    /// A string key naming a case of `E` (by raw value); unknown names list the known ones.
    public func choice<E: RawRepresentable & CaseIterable>(_ key: String,
                                                           default d: E) throws -> E where E.RawValue == String {
        E(rawValue: try string(key, default: d.rawValue, oneOf: E.allCases.map(\.rawValue)))!
    }

    // The optional readers mark the key read even when it is absent, so `finish()` lists it among the known keys.
    public func optionalString(_ key: String) throws -> String? { skip(key); return has(key) ? try string(key) : nil }
    public func optionalInt(_ key: String, in range: ClosedRange<Int>? = nil) throws -> Int? {
        skip(key)
        return has(key) ? try int(key, in: range) : nil
    }
    public func optionalDouble(_ key: String, in range: ClosedRange<Double>? = nil) throws -> Double? {
        skip(key)
        return has(key) ? try double(key, in: range) : nil
    }

    /// A nested object, read strictly in turn (its location extends this one's).
    public func object(_ key: String) throws -> StrictObject? {
        guard let v = take(key) else { return nil }
        var c = context
        c.key = keyPath(key)
        return try StrictObject(v, at: "\(location): '\(key)'", context: c)
    }

    public func array(_ key: String) throws -> [JSONValue]? {
        guard let v = take(key) else { return nil }
        guard case .array(let a) = v else {
            throw fail(key, "expected an array, found \(v.text)", expected: "an array", found: v.text)
        }
        return a
    }

    /// Marks a key as read without interpreting it (e.g. a discriminator read elsewhere).
    public func skip(_ key: String) { used.insert(key) }

    /// Rejects keys that were never read.
    public func finish() throws {
        let unknown = Set(values.keys).subtracting(used).sorted()
        guard unknown.isEmpty else {
            let known = used.sorted().joined(separator: ", ")
            let names = unknown.map { "'\($0)'" }.joined(separator: ", ")
            var c = context
            c.key = keyPath(unknown[0])
            c.expected = "one of \(known)"
            c.found = names
            throw RecipeError(at: location, "unknown key\(unknown.count > 1 ? "s" : "") \(names) (known: \(known))", c)
        }
    }
}

/// Parses a JSON file's bytes strictly (`JSONKeys.strictText`: UTF-8, no repeated key, no number past a
/// 64-bit float; then the parser), every error naming the file and, where it has one, the key path.
public func strictJSON(_ data: Data, path: String) throws -> JSONValue {
    do { return try JSONValue.parse(JSONKeys.strictText(data)) } catch let e as StrictJSONError {
        throw RecipeError(at: path, "\(e)", e.context.filled(from: ErrorContext(file: path)))
    } catch {
        throw RecipeError(at: path, "not valid JSON (\(error))", ErrorContext(file: path))
    }
}

extension ParameterGroup {
    /// Parameter groups from JSON text (`distill --groups`), read strictly: an array of objects with `match`
    /// (required, a glob over parameter names), `lr` (in [1e-12, 1]), `weight_decay` (in [0, 10]) and `frozen`;
    /// any other key, a repeated key or an overflowing number is an error naming `source`, the group and the key.
    public static func strictList(_ text: String, source: String) throws -> [ParameterGroup] {
        let json = try strictJSON(Data(text.utf8), path: source)
        guard let list = json.arrayValue else {
            throw RecipeError("\(source): expected a JSON array of {match, lr, weight_decay, frozen} objects, " +
                              "found \(json.text.prefix(80))")
        }
        return try list.enumerated().map { i, entry in
            let o = try StrictObject(entry, at: "\(source), group \(i + 1)")
            let group = ParameterGroup(match: try o.string("match"), lr: try o.optionalDouble("lr", in: 1e-12...1),
                                       weightDecay: try o.optionalDouble("weight_decay", in: 0...10),
                                       frozen: try o.bool("frozen", default: false))
            try o.finish()
            return group
        }
    }
}
