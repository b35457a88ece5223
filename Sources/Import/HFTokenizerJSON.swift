import Checkpoint
import Foundation
import JSONKeys
import Model

/// Reads a Hugging Face tokenizer.json of a byte-level BPE model into a `TokenizerSpec`.
enum HFTokenizerJSON {
    static func read(_ path: String) throws -> TokenizerSpec {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw ImportError("\(path): cannot read UTF-8 text") }
        let parsed: JSONValue
        do { parsed = try JSONValue.parse(text) } catch let e as DuplicateJSONKey { throw ImportError("\(path): \(e)") } catch { throw ImportError("\(path): not valid JSON (\(error))") }
        guard let root = parsed.objectValue else { throw ImportError("\(path): expected a JSON object") }
        guard let model = root["model"]?.objectValue, model["type"]?.stringValue == "BPE",
              let vocab = model["vocab"]?.objectValue else {
            throw ImportError("\(path): expected a BPE model with a vocab (supported: byte-level BPE)")
        }
        var added: [(Int, String, Bool)] = []
        for entry in root["added_tokens"]?.arrayValue ?? [] {
            guard let o = entry.objectValue, let id = o["id"]?.intValue, let content = o["content"]?.stringValue else { continue }
            added.append((id, content, o["special"]?.boolValue ?? false))
        }
        let size = max((vocab.values.compactMap(\.intValue).max() ?? -1), added.map(\.0).max() ?? -1) + 1
        var tokens = [String?](repeating: nil, count: size)
        var types = [Int32](repeating: 1, count: size)
        for (token, id) in vocab { if let i = id.intValue { tokens[i] = token } }
        for (id, content, special) in added {
            tokens[id] = content
            types[id] = special ? 3 : 4
        }
        if let missing = tokens.firstIndex(where: { $0 == nil }) {
            throw ImportError("\(path): token id \(missing) has no token (ids must be contiguous)")
        }
        return try spec(root: root, model: model, tokens: tokens.compactMap { $0 }, types: types, added: added, path: path)
    }

    private static func spec(root: [String: JSONValue], model: [String: JSONValue], tokens: [String], types: [Int32],
                             added: [(Int, String, Bool)], path: String) throws -> TokenizerSpec {
        let merges: [String] = try (model["merges"]?.arrayValue ?? []).map {
            if let s = $0.stringValue { return s }
            if let pair = $0.arrayValue?.compactMap(\.stringValue), pair.count == 2 { return pair.joined(separator: " ") }
            throw ImportError("\(path): a merge is neither \"a b\" nor [\"a\", \"b\"]: \($0.text)")
        }
        func id(_ content: String) -> Int32? { added.first { $0.1 == content }.map { Int32($0.0) } }
        return TokenizerSpec(model: "gpt2", pre: try preTokenizerKind(root["pre_tokenizer"], path: path), tokens: tokens,
                             merges: merges, tokenTypes: types, bosTokenID: id("<|endoftext|>") ?? id("<s>"),
                             eosTokenID: id("<|endoftext|>") ?? id("</s>"), addBosToken: false)
    }

    /// Names the pre-tokenizer: ByteLevel alone is GPT-2's; Digits(individual) then ByteLevel is SmolLM's.
    static func preTokenizerKind(_ p: JSONValue?, path: String) throws -> String {
        guard let p = p?.objectValue, let type = p["type"]?.stringValue else { return "gpt2" }
        if type == "ByteLevel" { return "gpt2" }
        if type == "Sequence", let steps = p["pretokenizers"]?.arrayValue?.compactMap(\.objectValue) {
            let kinds = steps.compactMap { $0["type"]?.stringValue }
            if kinds == ["Digits", "ByteLevel"], steps[0]["individual_digits"]?.boolValue == true { return "smollm" }
            if kinds.last == "ByteLevel", kinds.dropLast().allSatisfy({ $0 == "Split" }) { return "llama3" }
        }
        throw ImportError("\(path): pre_tokenizer \(JSONValue.object(p).text.prefix(200)) is not supported (supported: ByteLevel, Digits+ByteLevel, Split+ByteLevel)")
    }
}
