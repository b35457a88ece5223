import Diagnostics
import Checkpoint
import Foundation
import SafeFiles
import JSONKeys
import Model

/// Reads a Hugging Face tokenizer.json of a BPE model into a `TokenizerSpec`: byte-level BPE (GPT-2, SmolLM, Llama 3,
/// Qwen2), or SentencePiece-style BPE with byte fallback and "▁" for spaces (Llama 2, Mistral, TinyLlama, Gemma).
enum HFTokenizerJSON {
    /// Reads a tokenizer.json strictly: the JSON through `JSONKeys.strictText`, every key of the document, of
    /// `model`, of `added_tokens` and of the normalizer, pre-tokenizer, post-processor and decoder either
    /// implemented or refused naming it. `preTokenizer` (the pre-tokenizer or SentencePiece spacing name of
    /// `compress import --pre-tokenizer`) replaces what the file's pre-tokenizer and normalizer describe.
    static func read(_ path: String, preTokenizer: String? = nil) throws -> TokenizerSpec {
        let data: Data
        data = try SafeFiles.read(path, role: "tokenizer.json", limit: 1 << 28)
        let parsed = try Importer.parseJSON(data, path: path)
        guard let root = parsed.objectValue else {
            throw ImportError("expected a JSON object", ErrorContext(file: path))
        }
        try checkRoot(root, path: path)
        // model.vocab read again from the bytes, in order: a JSONValue object's keys are Swift Strings, which compare
        // by canonical equivalence, and real vocabularies (Gemma's) hold canonically equivalent but different tokens.
        guard let model = root["model"]?.objectValue, model["type"]?.stringValue == "BPE",
            model["vocab"]?.objectValue != nil,
            let vocab = RawJSON.vocabulary(Array(data))
        else {
            let type = root["model"]?.objectValue?["type"]?.text ?? "missing"
            throw ImportError(
                "\(path): expected a BPE model with a vocab, found model.type \(type) (supported: byte-level BPE, and "
                    + "SentencePiece-style BPE with byte_fallback; a Unigram model is not)")
        }
        try checkModel(model, path: path)
        let added = try addedTokens(root, path: path)
        // Ids must be dense from 0: bound them by the number of entries before sizing anything by them.
        let entries = vocab.count + added.count
        for (token, id) in vocab {
            guard let i = Int(id), i >= 0, i < entries else {
                throw ImportError(
                    "\(path): model.vocab['\(token.prefix(40))'] is \(id) (expected a token id in 0..<\(entries))")
            }
        }
        if let bad = added.first(where: { $0.0 < 0 || $0.0 >= entries }) {
            throw ImportError("added_tokens id \(bad.0) ('\(bad.1.prefix(40))') is outside 0..<\(entries)",
                ErrorContext(file: path))
        }
        let size = max((vocab.compactMap { Int($0.id) }.max() ?? -1), added.map(\.0).max() ?? -1) + 1
        var tokens = [String?](repeating: nil, count: size)
        var types = [Int32](repeating: 1, count: size)
        for (token, id) in vocab {
            guard let i = Int(id) else { continue }
            if let earlier = tokens[i] {
                throw ImportError(
                    "\(path): model.vocab gives id \(i) to both '\(earlier.prefix(40))' and '\(token.prefix(40))'")
            }
            tokens[i] = token
        }
        for (id, content, special) in added {
            tokens[id] = content
            types[id] = special ? 3 : 4
        }
        if let missing = tokens.firstIndex(where: { $0 == nil }) {
            throw ImportError("token id \(missing) has no token (ids must be contiguous)", ErrorContext(file: path))
        }
        if isSentencePiece(root: root, model: model) {
            return try sentencePieceSpec(
                root: root, model: model, tokens: tokens.compactMap { $0 }, types: types, path: path,
                preTokenizer: preTokenizer)
        }
        return try spec(
            root: root, model: model, tokens: tokens.compactMap { $0 }, types: types, added: added, path: path,
            preTokenizer: preTokenizer)
    }

    private static func spec(
        root: [String: JSONValue], model: [String: JSONValue], tokens: [String], types: [Int32],
        added: [(Int, String, Bool)], path: String, preTokenizer: String?
    ) throws -> TokenizerSpec {
        let merges = try mergeRules(model, path: path)
        func id(_ content: String) -> Int32? { added.first { $0.1 == content }.map { Int32(clamping: $0.0) } }
        let normalizer = try byteLevelNormalizer(root["normalizer"], path: path, overridden: preTokenizer != nil)
        let pre = try preTokenizer ?? preTokenizerKind(root["pre_tokenizer"], path: path)
        try checkDecoder(root["decoder"], allowed: [["type": .string("ByteLevel")]], path: path)
        // Our llama3 pre-tokenizer ignores merges for pieces that are tokens (as Llama 3's tokenizer.json and
        // llama.cpp do); the others never do (Qwen2.5's tokenizer.json says "ignore_merges": false, and llama.cpp
        // sets it only for its LLAMA3 pre-type). A file that says otherwise would tokenize differently.
        let ignoreMerges = model["ignore_merges"]?.boolValue ?? false
        let implied = pre == "llama3"  // Tokenizer's PreTokenizer.ignoresMerges
        guard ignoreMerges == implied else {
            throw ImportError(
                "\(path): model.ignore_merges is \(ignoreMerges) with the \(pre) pre-tokenizer (expected \(implied): "
                    + "we implement "
                    + "\(implied ? "Llama 3's pre-tokenizer only with" : "this pre-tokenizer only without") "
                            + "ignore_merges)")
        }
        var ids: [String: Int] = [:]
        for (i, t) in tokens.enumerated() { ids[t] = i }
        let defaults = (bos: id("<|endoftext|>") ?? id("<s>"), eos: id("<|endoftext|>") ?? id("</s>"))
        let special = try specialTokens(template: byteLevelTemplate(root["post_processor"], path: path), ids: ids,
                                        defaults: defaults, path: path)
        return TokenizerSpec(
            model: "gpt2", pre: pre, tokens: tokens,
            merges: merges, tokenTypes: types, bosTokenID: special.bos,
            eosTokenID: special.eos, addBosToken: special.addBos, addEosToken: special.addEos ? true : nil,
            normalizer: normalizer)
    }

    /// The normalizer of a byte-level tokenizer.json as `TokenizerSpec.normalizer`: null (none), `NFC` (Qwen2's), or
    /// a Sequence of NFC steps. Anything else is refused naming its type, unless `--pre-tokenizer` overrides the file's
    /// pre-processing (`overridden`): then the tokenizer is imported without it.
    static func byteLevelNormalizer(_ n: JSONValue?, path: String, overridden: Bool) throws -> String? {
        guard let n, n != .null else { return nil }
        let nfc = JSONValue.object(["type": .string("NFC")])
        var steps = [n], at = { (_: Int) in "normalizer" }
        if let o = n.objectValue, o["type"] == .string("Sequence"),
           o.keys.allSatisfy({ ["type", "normalizers"].contains($0) }), let list = o["normalizers"]?.arrayValue {
            (steps, at) = (list, { "normalizer.normalizers[\($0)]" })
        }
        if let i = steps.firstIndex(where: { $0 != nfc }) {
            if overridden { return nil }
            let type = steps[i].objectValue?["type"]?.text ?? "missing"
            throw ImportError("\(at(i)) of type \(type) is not supported with a byte-level BPE: "
                + "\(steps[i].text.prefix(200)) (supported: null, NFC, or a Sequence of NFC; "
                + "--pre-tokenizer NAME imports the tokenizer without it)", ErrorContext(file: path))
        }
        return steps.isEmpty ? nil : "NFC"
    }

    /// The TemplateProcessing part of a byte-level post-processor: null, `ByteLevel` (its `add_prefix_space`,
    /// `trim_offsets` and `use_regex` only move offsets, so any value is accepted), `TemplateProcessing`, or a
    /// Sequence of a ByteLevel and a TemplateProcessing (Llama 3.1's). Anything else is refused.
    static func byteLevelTemplate(_ p: JSONValue?, path: String) throws -> [String: JSONValue]? {
        func isByteLevel(_ o: [String: JSONValue]) -> Bool {
            o["type"] == .string("ByteLevel")
                && o.keys.allSatisfy { ["type", "add_prefix_space", "trim_offsets", "use_regex"].contains($0) }
        }
        guard let p, p != .null else { return nil }
        guard let o = p.objectValue else {
            throw ImportError("post_processor is \(p.text.prefix(80)) (expected an object or null)",
                ErrorContext(file: path))
        }
        if isByteLevel(o) { return nil }
        if o["type"] == .string("Sequence"), o.keys.allSatisfy({ ["type", "processors"].contains($0) }),
            let steps = o["processors"]?.arrayValue?.compactMap(\.objectValue),
            steps.count == (o["processors"]?.arrayValue?.count ?? -1)
        {
            let rest = steps.filter { !isByteLevel($0) }
            if rest.count <= 1 { return rest.first ?? nil }
        }
        if o["type"] == .string("TemplateProcessing") { return o }
        throw ImportError(
            "\(path): post_processor \(p.text.prefix(200)) is not supported (supported: null, ByteLevel, "
                + "TemplateProcessing, or a Sequence of a ByteLevel and a TemplateProcessing)")
    }

    /// Llama 3's Split regex (tokenizers' `Regex` pattern), matched character for character.
    static let llama3Split =
        #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| "#
            + #"?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

    /// Qwen2's Split regex, as in Qwen2.5's tokenizer.json and in the tokenizer transformers builds from a `qwen2`
    /// GGUF: Llama 3's with `\p{N}` (one number scalar) for `\p{N}{1,3}`.
    static let qwen2Split =
        #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| "#
            + #"?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

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
            throw ImportError(
                "\(path): pre_tokenizer is null (expected a byte-level pre-tokenizer: "
                    + "\(known.map(\.name).joined(separator: ", ")))")
        }
        if let match = known.first(where: { $0.definition == withoutTrimOffsets(p) }) { return match.name }
        let patterns = splitPatterns(p)
        let quoted =
            patterns.isEmpty
            ? ""
            : "; its Split pattern\(patterns.count > 1 ? "s" : "") "
                + "\(patterns.map { "'\($0)'" }.joined(separator: ", ")) \(patterns.count > 1 ? "are" : "is") not one "
                + "we implement (Llama 3's is '\(llama3Split)', Qwen2's '\(qwen2Split)')"
        throw ImportError(
            "\(path): pre_tokenizer \(p.text.prefix(400)) is not supported\(quoted) (supported, exactly: ByteLevel "
                + "with add_prefix_space false and use_regex true; Digits(individual_digits) then that ByteLevel; "
                + "Llama 3's or Qwen2's Split then ByteLevel with use_regex false; --pre-tokenizer NAME imports "
                        + "with one of those)")
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

/// The one part of tokenizer.json read from its bytes: `model.vocab` as (token, raw value) pairs in file order, with
/// each token's string exactly as written (escapes decoded), so tokens that Swift's String equality would call equal
/// (canonically equivalent spellings) stay apart. The document is already known to be valid JSON.
enum RawJSON {
    static func vocabulary(_ bytes: [UInt8]) -> [(token: String, id: String)]? {
        var scanner = Scanner(bytes: bytes)
        guard let model = scanner.member("model", of: 0), let vocab = scanner.member("vocab", of: model) else {
            return nil
        }
        var pairs: [(String, String)] = []
        scanner.position = vocab
        guard scanner.members({ key, s in
            let start = s.position
            s.skipValue()
            var end = s.position
            while end > start, [0x20, 0x09, 0x0A, 0x0D].contains(s.bytes[end - 1]) { end -= 1 }
            pairs.append((key, String(decoding: s.bytes[start..<end], as: UTF8.self)))
        }) else { return nil }
        return pairs
    }

    struct Scanner {
        let bytes: [UInt8]
        var position = 0

        mutating func skipSpace() {
            while position < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[position]) { position += 1 }
        }

        /// The offset of the value of `key` in the object starting at `object`, or nil.
        mutating func member(_ key: String, of object: Int) -> Int? {
            position = object
            var found: Int? = nil
            guard members({ name, s in
                if name == key, found == nil { s.skipSpace(); found = s.position }
                s.skipValue()
            }) else { return nil }
            return found
        }

        /// Calls `body` with each key of the object at `position`, positioned at its value (which `body` must skip).
        mutating func members(_ body: (String, inout Scanner) -> Void) -> Bool {
            skipSpace()
            guard position < bytes.count, bytes[position] == UInt8(ascii: "{") else { return false }
            position += 1
            while true {
                skipSpace()
                guard position < bytes.count else { return false }
                if bytes[position] == UInt8(ascii: "}") { position += 1; return true }
                if bytes[position] == UInt8(ascii: ",") { position += 1; skipSpace() }
                guard let key = string() else { return false }
                skipSpace()
                guard position < bytes.count, bytes[position] == UInt8(ascii: ":") else { return false }
                position += 1
                skipSpace()
                body(key, &self)
            }
        }

        /// The string at `position` (which holds its opening quote), escapes decoded.
        mutating func string() -> String? {
            guard position < bytes.count, bytes[position] == UInt8(ascii: "\"") else { return nil }
            position += 1
            var out: [UInt8] = []
            var pendingHigh: UInt32? = nil
            while position < bytes.count {
                let byte = bytes[position]
                position += 1
                if byte == UInt8(ascii: "\"") { return String(decoding: out, as: UTF8.self) }
                guard byte == UInt8(ascii: "\\") else { out.append(byte); continue }
                guard position < bytes.count else { return nil }
                let escape = bytes[position]
                position += 1
                switch escape {
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"):
                    guard position + 4 <= bytes.count,
                        let unit = UInt32(String(decoding: bytes[position..<position + 4], as: UTF8.self), radix: 16)
                    else { return nil }
                    position += 4
                    var value = unit
                    if (0xD800...0xDBFF).contains(unit) { pendingHigh = unit; continue }
                    if (0xDC00...0xDFFF).contains(unit), let high = pendingHigh {
                        value = 0x10000 + ((high - 0xD800) << 10) + (unit - 0xDC00)
                    }
                    pendingHigh = nil
                    out += Array(String(Unicode.Scalar(value).map(Character.init) ?? "\u{FFFD}").utf8)
                default: out.append(escape)  // \" \\ \/
                }
            }
            return nil
        }

        /// Moves past the value at `position` (a string, or anything up to the end of its brackets, or a literal).
        mutating func skipValue() {
            skipSpace()
            guard position < bytes.count else { return }
            if bytes[position] == UInt8(ascii: "\"") { _ = string(); return }
            var depth = 0
            while position < bytes.count {
                let byte = bytes[position]
                if byte == UInt8(ascii: "\"") { _ = string(); if depth == 0 { return }; continue }
                if byte == UInt8(ascii: "{") || byte == UInt8(ascii: "[") { depth += 1 }
                if byte == UInt8(ascii: "}") || byte == UInt8(ascii: "]") {
                    if depth == 0 { return }
                    depth -= 1
                    if depth == 0 { position += 1; return }
                }
                if depth == 0, byte == UInt8(ascii: ",") { return }
                position += 1
            }
        }
    }
}

// MARK: SentencePiece-style BPE

extension HFTokenizerJSON {
    /// model.merges as "a b" rules: each entry "a b" or ["a", "b"]; a part holding a space cannot be written as "a b"
    /// and is refused.
    static func mergeRules(_ model: [String: JSONValue], path: String) throws -> [String] {
        try (model["merges"]?.arrayValue ?? []).enumerated().map { index, entry in
            if let s = entry.stringValue { return s }
            if let pair = entry.arrayValue?.compactMap(\.stringValue), pair.count == 2 {
                if pair.contains(where: { $0.contains(" ") }) {
                    throw ImportError(
                        "\(path): model.merges[\(index)] \(entry.text) has a part holding a space (not supported: "
                            + "merges are kept as \"a b\")")
                }
                return pair.joined(separator: " ")
            }
            throw ImportError("a merge is neither \"a b\" nor [\"a\", \"b\"]: \(entry.text)", ErrorContext(file: path))
        }
    }

    /// A SentencePiece-style BPE: byte fallback, or "▁" for spaces in the normalizer or pre-tokenizer.
    static func isSentencePiece(root: [String: JSONValue], model: [String: JSONValue]) -> Bool {
        model["byte_fallback"]?.boolValue == true
            || [root["normalizer"], root["pre_tokenizer"]].contains { part in
                let text = part?.text ?? ""
                return text.contains("Metaspace") || text.contains("\u{2581}") || text.contains("\\u2581")
            }
    }

    /// A SentencePiece-style tokenizer.json as a "llama" spec with its merges listed. Supported: a BPE model with
    /// `byte_fallback` true (no dropout, subword prefix or suffix, `ignore_merges` false); normalizer null,
    /// `Replace(" ", "▁")`, `Prepend("▁")` or a Sequence of those two; pre-tokenizer null, `Metaspace` (replacement
    /// "▁", any prepend scheme, split or not) or Gemma's `Split(" ", merged_with_previous)` after a Replace normalizer
    /// (which leaves no space to split on). BOS (and EOS) added by a `TemplateProcessing` post-processor set
    /// `add_bos_token` (`add_eos_token`). Anything else is refused, naming the key.
    static func sentencePieceSpec(
        root: [String: JSONValue], model: [String: JSONValue], tokens: [String], types: [Int32],
        path: String, preTokenizer: String? = nil
    ) throws -> TokenizerSpec {
        guard model["byte_fallback"]?.boolValue == true else {
            throw ImportError(
                "\(path): model.byte_fallback is \(model["byte_fallback"]?.text ?? "missing") with a "
                    + "SentencePiece-style (\"▁\") tokenizer (supported: true; without it unknown characters become "
                    + "unk)")
        }
        if model["ignore_merges"]?.boolValue == true {
            throw ImportError(
                "\(path): model.ignore_merges is true with a SentencePiece-style tokenizer (supported: false)")
        }
        let spacing =
            try preTokenizer
            ?? spacingName(normalizer: root["normalizer"], preTokenizer: root["pre_tokenizer"], path: path)
        try checkDecoder(root["decoder"], allowed: sentencePieceDecoders, path: path)
        var types = types
        var ids: [String: Int] = [:]
        for (i, t) in tokens.enumerated() { ids[t] = i }
        // The unknown token is type 2 (matched whole, as transformers registers it), byte tokens type 6.
        if let unk = model["unk_token"]?.stringValue, let i = ids[unk], types[i] != 4 { types[i] = 2 }
        for byte in 0..<256 {
            if let i = ids[String(format: "<0x%02X>", byte)], types[i] == 1 { types[i] = 6 }
        }
        let merges = try mergeRules(model, path: path)
        guard !merges.isEmpty else {
            throw ImportError(
                "\(path): model.merges is empty (a SentencePiece-style BPE without merges is not supported)")
        }
        let template = root["post_processor"]?.objectValue
        let control = ids.filter { types[$0.value] == 3 }  // Gemma's "<s>" and "</s>" are HTML tags (user-defined)
        func named(_ names: [String]) -> Int32? { names.lazy.compactMap { control[$0] }.first.map { Int32($0) } }
        let (bos, addBos, eos, addEos) = try specialTokens(
            template: template, ids: ids,
            defaults: (named(["<s>", "<bos>"]), named(["</s>", "<eos>"])), path: path)
        return TokenizerSpec(model: "llama", pre: spacing, tokens: tokens, merges: merges, tokenTypes: types,
                             bosTokenID: bos, eosTokenID: eos, addBosToken: addBos, addEosToken: addEos ? true : nil)
    }

    /// BOS and EOS: the special tokens a TemplateProcessing post-processor puts before and after a single text
    /// (then added), else the control tokens "<s>" / "<bos>" and "</s>" / "<eos>" (not added).
    /// `pair` only describes encoding two texts together, and a piece's `type_id` only the token type ids, so
    /// both are accepted; every `special_tokens` entry must name its token's own id.
    static func specialTokens(template: [String: JSONValue]?, ids: [String: Int], defaults: (bos: Int32?, eos: Int32?),
                              path: String) throws -> (bos: Int32?, addBos: Bool, eos: Int32?, addEos: Bool) {
        var (bos, eos) = defaults
        var addBos = false, addEos = false
        guard let template else { return (bos, false, eos, false) }
        guard template["type"]?.stringValue == "TemplateProcessing", let single = template["single"]?.arrayValue,
              template.keys.allSatisfy({ ["type", "single", "pair", "special_tokens"].contains($0) }) else {
            throw ImportError(
                "\(path): post_processor \(JSONValue.object(template).text.prefix(200)) is not supported (supported: "
                    + "null or TemplateProcessing with single, pair and special_tokens)")
        }
        for (name, entry) in (template["special_tokens"]?.objectValue ?? [:]).sorted(by: { $0.key < $1.key }) {
            let listed = entry.objectValue?["ids"]?.arrayValue?.compactMap(\.intValue)
            guard let id = ids[name], listed == [id] else {
                throw ImportError(
                    "\(path): post_processor.special_tokens.\(name) is \(entry.text.prefix(120)) (expected the one id "
                        + "of token '\(name)'\(ids[name].map { ", \($0)" } ?? ", which is not a token"))")
            }
        }
        // The single-text template: at most one special token, then the text, then at most one special token.
        let pieces = single.map { $0.objectValue?["SpecialToken"]?.objectValue?["id"]?.stringValue }
        let text = pieces.firstIndex(where: { $0 == nil }) ?? pieces.count
        guard text < pieces.count, text <= 1, pieces.count - text <= 2, pieces.filter({ $0 == nil }).count == 1 else {
            throw ImportError(
                "\(path): post_processor.single \(JSONValue.array(single).text.prefix(200)) is not supported "
                    + "(supported: the text with at most one special token before and one after)")
        }
        func id(_ name: String) throws -> Int32 {
            guard let i = ids[name] else {
                throw ImportError("post_processor names '\(name)', which is not a token", ErrorContext(file: path))
            }
            return Int32(i)
        }
        if text == 1, let name = pieces[0] { bos = try id(name); addBos = true }
        if text + 1 < pieces.count, let name = pieces[text + 1] { eos = try id(name); addEos = true }
        return (bos, addBos, eos, addEos)
    }

    /// The spacing rule (`SentencePieceSpacing` name) the normalizer and pre-tokenizer describe.
    static func spacingName(normalizer: JSONValue?, preTokenizer: JSONValue?, path: String) throws -> String {
        let replace = JSONValue.object([
            "type": .string("Replace"), "pattern": .object(["String": .string(" ")]), "content": .string("\u{2581}")
        ])
        let prepend = JSONValue.object(["type": .string("Prepend"), "prepend": .string("\u{2581}")])
        var steps: [JSONValue] = []
        switch normalizer ?? .null {
        case .null: break
        case .object(let o) where o["type"] == .string("Sequence"): steps = o["normalizers"]?.arrayValue ?? [.null]
        case let other: steps = [other]
        }
        guard steps.allSatisfy({ $0 == replace || $0 == prepend }), Set(steps.map(\.text)).count == steps.count else {
            throw ImportError(
                "\(path): normalizer \((normalizer ?? .null).text.prefix(300)) is not supported (supported: null, "
                    + "Replace(\" \", \"▁\"), Prepend(\"▁\"), or a Sequence of those two)")
        }
        let replaces = steps.contains(replace), prepends = steps.contains(prepend)
        var scheme: String? = nil, split = false
        switch preTokenizer ?? .null {
        case .null: break
        case .object(let o) where o["type"] == .string("Metaspace"):
            (scheme, split) = try metaspace(o, path: path)
        case .object(let o)
        where o["type"] == .string("Split") && replaces && o["pattern"] == .object(["String": .string(" ")])
            && o["behavior"] == .string("MergedWithPrevious") && (o["invert"] ?? .bool(false)) == .bool(false)
            && o.keys.allSatisfy({ ["type", "pattern", "behavior", "invert"].contains($0) }):
            break  // Gemma's: after Replace(" ", "▁") there is no space left to split on.
        case let other:
            throw ImportError(
                "\(path): pre_tokenizer \(other.text.prefix(300)) is not supported with a SentencePiece-style "
                    + "tokenizer (supported: null, Metaspace, or Split(\" \", MergedWithPrevious) after a Replace(\" "
                    + "\", \"▁\") normalizer)")
        }
        guard replaces || scheme != nil else {
            throw ImportError(
                "\(path): neither normalizer nor pre_tokenizer turns spaces into \"▁\" (expected Replace(\" \", \"▁\") "
                    + "or Metaspace)")
        }
        let prefix =
            prepends
            ? "prefix-every" : ["first": "prefix-first", "always": "prefix-always"][scheme ?? ""] ?? "no-prefix"
        return prefix + (split ? "+split" : "")
    }

    /// A Metaspace pre-tokenizer's prepend scheme and split, as `tokenizers` reads them: `prepend_scheme` (default
    /// "always"), or the older `add_prefix_space` (true: "always", false: "never"), which must agree when both are
    /// given; `split` defaults to true.
    private static func metaspace(_ o: [String: JSONValue], path: String) throws -> (scheme: String, split: Bool) {
        if let unknown = o.keys.sorted().first(where: {
            !["type", "replacement", "str_rep", "prepend_scheme", "add_prefix_space", "split"].contains($0)
        }) {
            throw ImportError("pre_tokenizer.\(unknown) is not supported in a Metaspace pre-tokenizer",
                ErrorContext(file: path))
        }
        for key in ["replacement", "str_rep"] where o[key] != nil && o[key] != .string("\u{2581}") {
            throw ImportError("pre_tokenizer.\(key) is \(o[key]!.text) (supported: \"▁\")", ErrorContext(file: path))
        }
        let legacy = o["add_prefix_space"]?.boolValue
        if o["add_prefix_space"] != nil, legacy == nil {
            throw ImportError(
                "\(path): pre_tokenizer.add_prefix_space is \(o["add_prefix_space"]!.text) (expected true or false)")
        }
        let scheme: String
        if let given = o["prepend_scheme"] {
            guard let name = given.stringValue, ["first", "always", "never"].contains(name) else {
                throw ImportError(
                    "\(path): pre_tokenizer.prepend_scheme is \(given.text) (supported: first, always, never)")
            }
            scheme = name
        } else {
            scheme = legacy == false ? "never" : "always"
        }
        if let legacy, legacy != (scheme != "never") {
            throw ImportError(
                "\(path): pre_tokenizer.add_prefix_space is \(legacy) but prepend_scheme is '\(scheme)' (they disagree)"
            )
        }
        var split = true
        if let given = o["split"] {
            guard let value = given.boolValue else {
                throw ImportError("pre_tokenizer.split is \(given.text) (expected true or false)",
                    ErrorContext(file: path))
            }
            split = value
        }
        return (scheme, split)
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
