extension GGUFFile {
    /// The value for `key`, or an error naming the missing key.
    public func value(_ key: String) throws -> GGUFValue {
        guard let v = metadata[key] else { throw GGUFError(path, "metadata key '\(key)' is missing", key: key) }
        return v
    }

    /// `key` as a string.
    public func string(_ key: String) throws -> String {
        try typed(key, "string") { $0.stringValue }
    }

    /// `key` as an `Int` (any integer type).
    public func int(_ key: String) throws -> Int {
        try typed(key, "integer") { $0.intValue }
    }

    /// `key` as a finite `Double` (any float or integer type); NaN and infinities are refused, naming the key.
    public func double(_ key: String) throws -> Double {
        let x = try typed(key, "number") { $0.doubleValue }
        guard x.isFinite else { throw GGUFError(
            path, "metadata '\(key)': expected a finite number, found \(x)", key: key, expected: "a finite number",
            found: "\(x)") }
        return x
    }

    /// `key` as a finite `Float` (any float or integer type; a float64 beyond float32's range is refused).
    public func float(_ key: String) throws -> Float {
        let x = try double(key)
        guard Float(x).isFinite else { throw GGUFError(
            path, "metadata '\(key)': \(x) is beyond float32's range", key: key, expected: "a float32",
            found: "\(x)") }
        return Float(x)
    }

    /// `key` as a bool.
    public func bool(_ key: String) throws -> Bool {
        try typed(key, "bool") { $0.boolValue }
    }

    /// `key` as an array of strings.
    public func strings(_ key: String) throws -> [String] {
        try typed(key, "array of strings") { v in
            guard let items = v.arrayValue else { return nil }
            let strings = items.compactMap(\.stringValue)
            return strings.count == items.count ? strings : nil
        }
    }

    /// `accessor(key)` if `key` is present, else nil (a present value of the wrong type still throws).
    public func ifPresent<T>(_ key: String, _ accessor: (String) throws -> T) rethrows -> T? {
        metadata[key] == nil ? nil : try accessor(key)
    }

    private func typed<T>(_ key: String, _ expected: String, _ cast: (GGUFValue) -> T?) throws -> T {
        let v = try value(key)
        guard let result = cast(v) else {
            let found = v.arrayValue.map { "array of \($0.first?.typeName ?? "nothing")" } ?? v.typeName
            throw GGUFError(path, "metadata '\(key)': expected \(expected), found \(found)", key: key,
                            expected: expected, found: found)
        }
        return result
    }
}
