import Checkpoint
import Foundation
import SafeFiles
import JSONKeys
import Model

/// Reads a Hugging Face tokenizer.json of a byte-level BPE model into a `TokenizerSpec`.
enum HFTokenizerJSON {
    static func read(_ path: String) throws -> TokenizerSpec {
        let data: Data
        do { data = try SafeFiles.read(path, role: "tokenizer.json", limit: 1 << 28) } catch let e as FileError { throw ImportError(e.description) }
        guard let text = String(data: data, encoding: .utf8) else { throw ImportError("\(path): not valid UTF-8 (expected tokenizer.json text)") }
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
        // Ids must be dense from 0: bound them by the number of entries before sizing anything by them.
        let entries = vocab.count + added.count
        for (token, id) in vocab {
            guard let i = id.intValue, i >= 0, i < entries else {
                throw ImportError("\(path): model.vocab['\(token.prefix(40))'] is \(id.text) (expected a token id in 0..<\(entries))")
            }
        }
        if let bad = added.first(where: { $0.0 < 0 || $0.0 >= entries }) {
            throw ImportError("\(path): added_tokens id \(bad.0) ('\(bad.1.prefix(40))') is outside 0..<\(entries)")
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
        func id(_ content: String) -> Int32? { added.first { $0.1 == content }.map { Int32(clamping: $0.0) } }
        let pre = try preTokenizerKind(root["pre_tokenizer"], path: path)
        // Our llama3 pre-tokenizer ignores merges for pieces that are tokens (as Llama 3's tokenizer.json and
        // llama.cpp do); the others never do (Qwen2.5's tokenizer.json says "ignore_merges": false, and llama.cpp
        // sets it only for its LLAMA3 pre-type). A file that says otherwise would tokenize differently.
        // The `normalizer` is not read: Qwen2's (NFC, set by transformers' own Qwen2 tokenizer classes) is not
        // applied, as neither the tokenizer transformers builds from a qwen2 GGUF nor llama.cpp applies it; the
        // ids are the same for text that is already NFC.
        let ignoreMerges = model["ignore_merges"]?.boolValue ?? false
        let implied = pre == "llama3"  // Tokenizer's PreTokenizer.ignoresMerges
        guard ignoreMerges == implied else {
            throw ImportError("\(path): model.ignore_merges is \(ignoreMerges) with the \(pre) pre-tokenizer (expected \(implied): we implement \(implied ? "Llama 3's pre-tokenizer only with" : "this pre-tokenizer only without") ignore_merges)")
        }
        return TokenizerSpec(model: "gpt2", pre: pre, tokens: tokens,
                             merges: merges, tokenTypes: types, bosTokenID: id("<|endoftext|>") ?? id("<s>"),
                             eosTokenID: id("<|endoftext|>") ?? id("</s>"), addBosToken: false)
    }

    /// Llama 3's Split regex (tokenizers' `Regex` pattern), matched character for character.
    static let llama3Split = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

    /// Qwen2's Split regex, as in Qwen2.5's tokenizer.json and in the tokenizer transformers builds from a `qwen2`
    /// GGUF: Llama 3's with `\p{N}` (one number scalar) for `\p{N}{1,3}`.
    static let qwen2Split = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

    /// The pre-tokenizers we implement, each by its exact tokenizer.json definition (`trim_offsets` only moves
    /// offsets, so it may take either value).
    static let known: [(name: String, definition: JSONValue)] = {
        func byteLevel(regex: Bool) -> JSONValue {
            .object(["type": .string("ByteLevel"), "add_prefix_space": .bool(false), "use_regex": .bool(regex)])
        }
        func split(_ regex: String) -> JSONValue {
            .object(["type": .string("Sequence"), "pretokenizers": .array([
                .object(["type": .string("Split"), "pattern": .object(["Regex": .string(regex)]),
                         "behavior": .string("Isolated"), "invert": .bool(false)]),
                byteLevel(regex: false)])])
        }
        return [
            ("gpt2", byteLevel(regex: true)),
            ("smollm", .object(["type": .string("Sequence"), "pretokenizers": .array([
                .object(["type": .string("Digits"), "individual_digits": .bool(true)]), byteLevel(regex: true)])])),
            ("llama3", split(llama3Split)),
            ("qwen2", split(qwen2Split)),
        ]
    }()

    /// Names the pre-tokenizer whose definition this is, exactly: GPT-2's ByteLevel, SmolLM's Digits(individual)
    /// then ByteLevel, or Llama 3's or Qwen2's Split(its regex) then ByteLevel without regex; anything else is refused.
    static func preTokenizerKind(_ p: JSONValue?, path: String) throws -> String {
        guard let p, p != .null else {
            throw ImportError("\(path): pre_tokenizer is null (expected a byte-level pre-tokenizer: \(known.map(\.name).joined(separator: ", ")))")
        }
        if let match = known.first(where: { $0.definition == withoutTrimOffsets(p) }) { return match.name }
        let patterns = splitPatterns(p)
        let quoted = patterns.isEmpty ? "" : "; its Split pattern\(patterns.count > 1 ? "s" : "") \(patterns.map { "'\($0)'" }.joined(separator: ", ")) \(patterns.count > 1 ? "are" : "is") not one we implement (Llama 3's is '\(llama3Split)', Qwen2's '\(qwen2Split)')"
        throw ImportError("\(path): pre_tokenizer \(p.text.prefix(400)) is not supported\(quoted) (supported, exactly: ByteLevel with add_prefix_space false and use_regex true; Digits(individual_digits) then that ByteLevel; Llama 3's or Qwen2's Split then ByteLevel with use_regex false)")
    }

    /// The definition with every `trim_offsets` key removed and ByteLevel's `use_regex` default (true) filled in.
    private static func withoutTrimOffsets(_ v: JSONValue) -> JSONValue {
        switch v {
        case .object(var o):
            if o["type"] == .string("ByteLevel"), o["use_regex"] == nil { o["use_regex"] = .bool(true) }
            return .object(o.filter { $0.key != "trim_offsets" }.mapValues(withoutTrimOffsets))
        case .array(let a): return .array(a.map(withoutTrimOffsets))
        default: return v
        }
    }

    /// Every Split regex or string pattern in the definition.
    private static func splitPatterns(_ v: JSONValue) -> [String] {
        switch v {
        case .object(let o):
            if o["type"] == .string("Split"), let pattern = o["pattern"]?.objectValue,
               let text = pattern["Regex"]?.stringValue ?? pattern["String"]?.stringValue { return [text] }
            return o.keys.sorted().flatMap { splitPatterns(o[$0]!) }
        case .array(let a): return a.flatMap(splitPatterns)
        default: return []
        }
    }
}

extension Importer {
    /// The tokenizer.json `pre_tokenizer` object of a pre-tokenizer we implement, by our name or GGUF's
    /// (`gpt2`, `smollm`, `llama3` / `llama-bpe`, `qwen2`); nil for any other. The exporter writes exactly what the
    /// importer recognises.
    public static func hfPreTokenizer(named name: String) -> JSONValue? {
        let ours = ["llama-bpe": "llama3", "llama-v3": "llama3", "gpt-2": "gpt2"][name] ?? name
        return HFTokenizerJSON.known.first { $0.name == ours }?.definition
    }
}
