import Diagnostics
import Foundation
import JSONKeys
import Model

/// The keys of tokenizer.json that are not the vocabulary: each is implemented or refused naming it, never ignored.
/// Values accepted without being implemented are the ones that cannot change the ids of one encoded text; each
/// says why beside it.
extension HFTokenizerJSON {
    static let rootKeys: Set<String> = [
        "version", "truncation", "padding", "added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder",
        "model",
    ]

    /// Refuses an unknown top-level key, and truncation or padding (they cut or pad every encoded text).
    static func checkRoot(_ root: [String: JSONValue], path: String) throws {
        if let unknown = root.keys.sorted().first(where: { !rootKeys.contains($0) }) {
            throw ImportError("unknown key '\(unknown)' (known: \(rootKeys.sorted().joined(separator: ", ")))",
                ErrorContext(file: path))
        }
        for key in ["truncation", "padding"] where (root[key] ?? .null) != .null {
            throw ImportError(
                "\(path): \(key) is \(root[key]!.text.prefix(120)) (supported: null; it would cut or pad every text)")
        }
    }

    static let modelKeys: Set<String> = [
        "type", "vocab", "merges", "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix",
        "fuse_unk",
        "byte_fallback", "ignore_merges",
    ]

    /// The BPE model's options. `dropout` null or 0 (no dropout); no subword prefix or suffix (null or ""); an
    /// `unk_token` that is a token; `fuse_unk` only matters once an unknown token is produced, which neither
    /// byte-level BPE (every byte is a token) nor byte fallback does, so either value is accepted; `byte_fallback`
    /// and `ignore_merges` are read where the model kind is decided.
    static func checkModel(_ model: [String: JSONValue], path: String) throws {
        if let unknown = model.keys.sorted().first(where: { !modelKeys.contains($0) }) {
            throw ImportError(
                "\(path): model.\(unknown) is not a BPE model key we know (known: "
                    + "\(modelKeys.sorted().joined(separator: ", ")))")
        }
        if let d = model["dropout"], d != .null, d.doubleValue != 0 {
            throw ImportError(
                "\(path): model.dropout is \(d.text) (supported: null or 0; dropout makes encoding random)")
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let v = model[key], v != .null, v != .string("") {
                throw ImportError("model.\(key) is \(v.text) (supported: null)", ErrorContext(file: path))
            }
        }
        for key in ["fuse_unk", "byte_fallback", "ignore_merges"] {
            if let v = model[key], v != .null, v.boolValue == nil {
                throw ImportError("model.\(key) is \(v.text) (expected true or false)", ErrorContext(file: path))
            }
        }
        if let u = model["unk_token"], u != .null {
            guard let name = u.stringValue, model["vocab"]?.objectValue?[name] != nil else {
                throw ImportError("model.unk_token is \(u.text) (expected null or a token of model.vocab)",
                    ErrorContext(file: path))
            }
        }
    }

    static let addedTokenKeys: Set<String> = [
        "id", "content", "single_word", "lstrip", "rstrip", "normalized", "special"
    ]

    /// `added_tokens` as (id, content, special). Every entry needs an id and a content; `single_word`, `lstrip`
    /// and `rstrip` must be false (we match added tokens exactly where they occur); `normalized` true is
    /// accepted only when there is no normalizer (matching the normalized text is then matching the text).
    static func addedTokens(_ root: [String: JSONValue], path: String) throws -> [(Int, String, Bool)] {
        guard let list = root["added_tokens"], list != .null else { return [] }
        guard let entries = list.arrayValue else {
            throw ImportError("added_tokens is \(list.text.prefix(80)) (expected an array)", ErrorContext(file: path))
        }
        let normalizer = root["normalizer"] ?? .null
        return try entries.enumerated().map { index, entry in
            let at = "\(path): added_tokens[\(index)]"
            guard let o = entry.objectValue, let id = o["id"]?.intValue, let content = o["content"]?.stringValue else {
                throw ImportError(
                    "\(at): expected an object with an integer id and a string content, found \(entry.text.prefix(120))"
                )
            }
            if let unknown = o.keys.sorted().first(where: { !addedTokenKeys.contains($0) }) {
                throw ImportError(
                    "\(at).\(unknown) is not an added-token key we know (known: "
                        + "\(addedTokenKeys.sorted().joined(separator: ", ")))")
            }
            for key in ["single_word", "lstrip", "rstrip", "normalized", "special"] {
                if let v = o[key], v.boolValue == nil {
                    throw ImportError("\(at).\(key) is \(v.text) (expected true or false)")
                }
            }
            for key in ["single_word", "lstrip", "rstrip"] where o[key]?.boolValue == true {
                throw ImportError("\(at).\(key) is true (supported: false)")
            }
            if o["normalized"]?.boolValue == true, normalizer != .null {
                throw ImportError(
                    "\(at).normalized is true with a normalizer (supported: false; the token would be matched in the "
                        + "normalized text)")
            }
            return (id, content, o["special"]?.boolValue ?? false)
        }
    }

    /// The decoders of SentencePiece-style tokenizer.json files whose decoding ours does: Metaspace, or a Sequence of
    /// Replace("▁", " "), ByteFallback, Fuse and Strip(" ", 1, 0) (Llama 2's, Gemma's without the Strip).
    static let sentencePieceDecoders: [[String: JSONValue]] = [
        ["type": .string("Replace"), "pattern": .object(["String": .string("\u{2581}")]), "content": .string(" ")],
        ["type": .string("ByteFallback")], ["type": .string("Fuse")],
        ["type": .string("Strip"), "content": .string(" "), "start": .int(1), "stop": .int(0)],
    ]

    /// The decoder (it turns ids back into text; the ids do not depend on it): null, one of `allowed`, a Sequence
    /// of them, or for SentencePiece a Metaspace decoder. Anything else is refused.
    static func checkDecoder(_ d: JSONValue?, allowed: [[String: JSONValue]], path: String) throws {
        guard let d, d != .null else { return }
        func known(_ v: JSONValue) -> Bool {
            guard let o = v.objectValue else { return false }
            if o["type"] == .string("ByteLevel") && allowed.contains(["type": .string("ByteLevel")]) {
                return o.keys.allSatisfy { ["type", "add_prefix_space", "trim_offsets", "use_regex"].contains($0) }
            }
            if o["type"] == .string("Metaspace") && allowed.count > 1 {
                return o.keys.allSatisfy {
                    ["type", "replacement", "prepend_scheme", "split", "add_prefix_space", "str_rep"].contains($0)
                }
                    && (o["replacement"] ?? .string("\u{2581}")) == .string("\u{2581}")
            }
            return allowed.contains(o)
        }
        if let o = d.objectValue, o["type"] == .string("Sequence"),
            o.keys.allSatisfy({ ["type", "decoders"].contains($0) }),
            let steps = o["decoders"]?.arrayValue, steps.allSatisfy(known)
        {
            return
        }
        if known(d) { return }
        let ours =
            allowed.count > 1
            ? "Replace(\"▁\", \" \"), ByteFallback, Fuse, Strip(\" \", 1, 0) or Metaspace"
            : "ByteLevel's"
        throw ImportError("decoder \(d.text.prefix(200)) is not supported (our decoding is \(ours))",
            ErrorContext(file: path))
    }
}

extension Importer {
    /// JSON bytes parsed strictly (`JSONKeys.strictText`: UTF-8, no repeated key, no number past a 64-bit float),
    /// every error naming the file and, where it has one, the key path.
    static func parseJSON(_ data: Data, path: String) throws -> JSONValue {
        do { return try JSONValue.parse(JSONKeys.strictText(data)) } catch let e as StrictJSONError {
            throw ImportError("\(e)", e.context.filled(from: ErrorContext(file: path)))
        } catch {
            throw ImportError("not valid JSON (\(error))", ErrorContext(file: path))
        }
    }
}
