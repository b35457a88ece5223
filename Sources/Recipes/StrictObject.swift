import Foundation
import JSONKeys
import Model
import Training

/// An error in a recipe: names the recipe file, the place in it (stage) and the key.
public struct RecipeError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A JSON object read strictly: every value is fetched by key with its type and allowed range checked, and
/// `finish()` rejects the keys nobody asked for. Errors name the location (recipe file and stage) and the key.
public final class StrictObject {
    public let location: String
    let values: [String: JSONValue]
    private var used: Set<String> = []

    /// `location` is how errors refer to this object, e.g. "recipes/a.json, stage 2 (minitron)".
    public init(_ json: JSONValue, at location: String) throws {
        guard let o = json.objectValue else { throw RecipeError("\(location): expected a JSON object, found \(json.text)") }
        values = o
        self.location = location
    }

    public var keys: [String] { values.keys.sorted() }
    public func has(_ key: String) -> Bool { values[key] != nil && values[key] != .null }

    func fail(_ key: String, _ message: String) -> RecipeError { RecipeError("\(location): '\(key)': \(message)") }

    func take(_ key: String) -> JSONValue? {
        used.insert(key)
        guard let v = values[key], v != .null else { return nil }
        return v
    }

    public func int(_ key: String, default d: Int? = nil, in range: ClosedRange<Int>? = nil) throws -> Int {
        guard let v = take(key) else {
            if let d { return d }
            throw fail(key, "required (an integer\(range.map { " in \($0.lowerBound)...\($0.upperBound)" } ?? ""))")
        }
        let n: Int
        switch v {
        case .int(let i): n = i
        case .double(let x) where x == x.rounded() && abs(x) < 9e15: n = Int(x)
        default: throw fail(key, "expected an integer, found \(v.text)")
        }
        if let range, !range.contains(n) { throw fail(key, "\(n) is out of range \(range.lowerBound)...\(range.upperBound)") }
        return n
    }

    public func double(_ key: String, default d: Double? = nil, in range: ClosedRange<Double>? = nil) throws -> Double {
        guard let v = take(key) else {
            if let d { return d }
            throw fail(key, "required (a number\(range.map { " in [\($0.lowerBound), \($0.upperBound)]" } ?? ""))")
        }
        let x: Double
        switch v {
        case .int(let i): x = Double(i)
        case .double(let f): x = f
        default: throw fail(key, "expected a number, found \(v.text)")
        }
        if let range, !range.contains(x) { throw fail(key, "\(x) is out of range [\(range.lowerBound), \(range.upperBound)]") }
        return x
    }

    public func bool(_ key: String, default d: Bool? = nil) throws -> Bool {
        guard let v = take(key) else {
            if let d { return d }
            throw fail(key, "required (true or false)")
        }
        guard case .bool(let b) = v else { throw fail(key, "expected true or false, found \(v.text)") }
        return b
    }

    public func string(_ key: String, default d: String? = nil, oneOf allowed: [String]? = nil) throws -> String {
        guard let v = take(key) else {
            if let d { return d }
            throw fail(key, "required (a string\(allowed.map { ": one of \($0.joined(separator: ", "))" } ?? ""))")
        }
        guard case .string(let s) = v else { throw fail(key, "expected a string, found \(v.text)") }
        if let allowed, !allowed.contains(s) { throw fail(key, "'\(s)' is not one of \(allowed.joined(separator: ", "))") }
        return s
    }

    /// A string key naming a case of `E` (by raw value); unknown names list the known ones.
    public func choice<E: RawRepresentable & CaseIterable>(_ key: String, default d: E) throws -> E where E.RawValue == String {
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
        return try StrictObject(v, at: "\(location): '\(key)'")
    }

    public func array(_ key: String) throws -> [JSONValue]? {
        guard let v = take(key) else { return nil }
        guard case .array(let a) = v else { throw fail(key, "expected an array, found \(v.text)") }
        return a
    }

    /// Marks a key as read without interpreting it (e.g. a discriminator read elsewhere).
    public func skip(_ key: String) { used.insert(key) }

    /// Rejects keys that were never read.
    public func finish() throws {
        let unknown = Set(values.keys).subtracting(used).sorted()
        guard unknown.isEmpty else {
            let known = used.sorted().joined(separator: ", ")
            throw RecipeError("\(location): unknown key\(unknown.count > 1 ? "s" : "") \(unknown.map { "'\($0)'" }.joined(separator: ", ")) (known: \(known))")
        }
    }
}

/// Parses a JSON file's bytes strictly (`JSONKeys.strictText`: UTF-8, no repeated key, no number past a
/// 64-bit float; then the parser), every error naming the file and, where it has one, the key path.
public func strictJSON(_ data: Data, path: String) throws -> JSONValue {
    do { return try JSONValue.parse(JSONKeys.strictText(data)) } catch let e as StrictJSONError {
        throw RecipeError("\(path): \(e)")
    } catch {
        throw RecipeError("\(path): not valid JSON (\(error))")
    }
}

extension ParameterGroup {
    /// Parameter groups from JSON text (`distill --groups`), read strictly: an array of objects with `match`
    /// (required, a glob over parameter names), `lr` (in [1e-12, 1]), `weight_decay` (in [0, 10]) and `frozen`;
    /// any other key, a repeated key or an overflowing number is an error naming `source`, the group and the key.
    public static func strictList(_ text: String, source: String) throws -> [ParameterGroup] {
        let json = try strictJSON(Data(text.utf8), path: source)
        guard let list = json.arrayValue else {
            throw RecipeError("\(source): expected a JSON array of {match, lr, weight_decay, frozen} objects, found \(json.text.prefix(80))")
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
