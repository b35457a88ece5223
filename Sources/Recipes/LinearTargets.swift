import Model

extension StrictObject {
    /// The decoder projections a pass targets, typed: `key` (an array of short names "q_proj" … "down_proj"), in the
    /// order given; `default` when the key is absent. With `groups`, the names "attention" (q, k, v, o), "mlp" (gate,
    /// up, down) and "all" are accepted too, repeats are merged and the result is in canonical order; without, a
    /// repeated name is refused unless `repeats` (then kept as given). `hint` ends the unknown-name error (e.g. which
    /// keys the embedding and the LM head have). Errors name the location and the key: a name that is not a decoder
    /// projection (listing those that are), an empty list, a repeat.
    public func linearKinds(_ key: String = "targets", default d: [LinearKind] = LinearKind.allCases,
                            groups: Bool = false, repeats: Bool = false, hint: String? = nil) throws -> [LinearKind] {
        guard let list = try array(key) else { return d }
        let known = LinearKind.allCases.map(\.shortName).joined(separator: ", ")
        var kinds: [LinearKind] = []
        for v in list {
            let named: [LinearKind]
            switch v.stringValue {
            case "all" where groups: named = LinearKind.allCases
            case "attention" where groups: named = [.q, .k, .v, .o]
            case "mlp" where groups: named = [.gate, .up, .down]
            case let n? where LinearKind(shortName: n) != nil: named = [LinearKind(shortName: n)!]
            default:
                let more = (groups ? ", or the groups attention, mlp, all" : "") + (hint.map { "; \($0)" } ?? "")
                throw fail(key, "\(v.text) is not a decoder linear weight (choose from \(known)\(more))")
            }
            kinds += groups ? named.filter { !kinds.contains($0) } : named
        }
        guard !kinds.isEmpty else { throw RecipeError("\(location): '\(key)' is empty") }
        if groups { return kinds.sorted() }
        guard repeats || Set(kinds).count == kinds.count else {
            throw RecipeError("\(location): '\(key)' lists a projection twice")
        }
        return kinds
    }
}
