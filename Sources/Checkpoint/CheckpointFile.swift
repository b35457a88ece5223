import Diagnostics
import CHDF5
import Foundation
import Model
import Quantization
import SafeFiles
import TensorCore

/// Constants of the on-disk format (documented in checkpoints/README.md).
public enum CheckpointFormat {
    public static let name = "compress-checkpoint"
    /// Version 3 stores every weight representation natively (/tensors dense float32, /quantized packed codes,
    /// /sparse kept values + packed mask bits, /factorized D + S values + S row indices). Versions 1 (dense,
    /// float32 /masks) and 2 (adds /quantized) still load.
    public static let version = 3
    public static let supportedVersions = [1, 2, 3]
}

/// The tokenizer a checkpoint carries: enough to turn text into ids with no other file.
///
/// Two models: "gpt2", byte-level BPE (tokens in GPT-2's byte-to-unicode spelling, `merges`, `pre` naming the
/// pre-tokenizer), and "llama", SentencePiece BPE with byte fallback (tokens with "▁" for spaces; `merges` when the
/// source listed them, as tokenizer.json does, else derived from `scores` or, for `merge_order` "gemma", from the
/// vocabulary order; `pre` naming the spacing rule, e.g. "no-prefix" or "prefix-first"). The fields added for "llama"
/// are optional, so files written before them read unchanged.
public struct TokenizerSpec: Codable, Equatable, Sendable {
    /// Tokenizer family: "gpt2" (byte-level BPE) or "llama" (SentencePiece BPE with byte fallback).
    public var model: String
    /// Pre-tokenizer kind for "gpt2" (e.g. "gpt2", "smollm", "llama3"); spacing rule for "llama" (e.g. "no-prefix").
    public var pre: String
    /// Token strings by id: GPT-2's byte-to-unicode spelling for "gpt2", the text with "▁" for spaces for "llama".
    public var tokens: [String]
    /// Merge rules "left right", by rank (empty for a "llama" tokenizer that derives them).
    public var merges: [String]
    /// Token types by id (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte), when known.
    public var tokenTypes: [Int32]?
    public var bosTokenID: Int32?
    public var eosTokenID: Int32?
    public var addBosToken: Bool
    /// SentencePiece scores by id ("llama"; GGUF `tokenizer.ggml.scores`), when known.
    public var scores: [Float]?
    /// How a "llama" tokenizer without `merges` derives them: "scores" (the default) or "gemma" (transformers' Gemma
    /// rule: whitespace tokens holding a space spelled with "▁", merges in vocabulary order).
    public var mergeOrder: String?
    /// Whether EOS is appended to every text (GGUF `tokenizer.ggml.add_eos_token`); nil means false.
    public var addEosToken: Bool?
    /// The normalization applied to text before pre-tokenization ("gpt2" only): "NFC" (Qwen2's tokenizer.json), or
    /// nil for none (checkpoints written before it existed read as nil).
    public var normalizer: String?

    /// The normalizers `normalizer` may name.
    public static let normalizers = ["NFC"]

    /// The derivation rules `mergeOrder` may name.
    public static let mergeOrders = ["scores", "gemma"]

    enum CodingKeys: String, CodingKey {
        case model, pre, tokens, merges, scores
        case tokenTypes = "token_types", bosTokenID = "bos_token_id", eosTokenID = "eos_token_id"
        case addBosToken = "add_bos_token"
        case mergeOrder = "merge_order", addEosToken = "add_eos_token", normalizer
    }

    public init(model: String, pre: String, tokens: [String], merges: [String], tokenTypes: [Int32]? = nil,
                bosTokenID: Int32? = nil, eosTokenID: Int32? = nil, addBosToken: Bool = false,
                scores: [Float]? = nil, mergeOrder: String? = nil, addEosToken: Bool? = nil,
                normalizer: String? = nil) {
        self.model = model
        self.pre = pre
        self.tokens = tokens
        self.merges = merges
        self.tokenTypes = tokenTypes
        self.bosTokenID = bosTokenID
        self.eosTokenID = eosTokenID
        self.addBosToken = addBosToken
        self.scores = scores
        self.mergeOrder = mergeOrder
        self.addEosToken = addEosToken
        self.normalizer = normalizer
    }
}

extension TokenizerSpec {
    /// At most this many tokens (a 2^22-entry vocabulary is far beyond any released model's).
    public static let maxTokens = 1 << 22

    /// Checks that a tokenizer can be built and used with a model of `vocabSize` tokens: a known model, token types
    /// one per token and known, no token twice, special ids and every id inside the vocabulary, every merge "a b" of
    /// two tokens whose concatenation is a token; for "llama", scores one per token and finite, and a way to get
    /// merges (listed, `scores`, or `merge_order` "gemma"); a `normalizer` only for "gpt2", and one we implement.
    /// Returns the first problem, naming the field.
    public func problem(vocabSize: Int?) -> String? {
        guard model == "gpt2" || model == "llama" else {
            return "model '\(model)' is not supported (expected gpt2, byte-level BPE, or llama, SentencePiece BPE with "
                + "byte fallback)"
        }
        guard !tokens.isEmpty, tokens.count <= Self.maxTokens else {
            return "\(tokens.count) tokens (expected 1...\(Self.maxTokens))"
        }
        if let vocabSize, tokens.count > vocabSize {
            return "\(tokens.count) tokens, more than the model's vocab_size \(vocabSize) (ids past it would index no "
                + "embedding row)"
        }
        if let types = tokenTypes {
            guard types.count == tokens.count else {
                return "\(types.count) token types for \(tokens.count) tokens (expected one per token)"
            }
            if let i = types.firstIndex(where: { !(1...6).contains($0) }) {
                return "token_types[\(i)] is \(types[i]) (expected 1...6)"
            }
        }
        if let problem = sentencePieceProblem() { return problem }
        // Tokens are told apart by their UTF-8 bytes: Swift's String equality is canonical equivalence, and real
        // vocabularies (Gemma's) hold canonically equivalent but different tokens.
        var ids: [[UInt8]: Int] = [:]
        ids.reserveCapacity(tokens.count)
        for (i, t) in tokens.enumerated() {
            if let j = ids.updateValue(i, forKey: Array(t.utf8)) {
                return "tokens[\(i)] '\(t.prefix(40))' is also tokens[\(j)] (expected distinct tokens)"
            }
        }
        for (key, id) in [("bos_token_id", bosTokenID), ("eos_token_id", eosTokenID)] {
            if let id, !(0..<Int32(tokens.count)).contains(id) { return "\(key) \(id) is outside 0..<\(tokens.count)" }
        }
        for (rank, m) in merges.enumerated() {
            let parts = m.utf8.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
                return "merges[\(rank)] '\(m.prefix(40))' is not two tokens separated by one space"
            }
            for p in parts where ids[Array(p)] == nil {
                return "merges[\(rank)] '\(m.prefix(40))' names '\(String(decoding: p, as: UTF8.self).prefix(40))', "
                    + "which "
                    + "is not a token"
            }
            if ids[Array(parts[0]) + Array(parts[1])] == nil {
                return "merges[\(rank)] '\(m.prefix(40))' makes "
                    + "'\(String(decoding: Array(parts[0]) + Array(parts[1]), as: UTF8.self).prefix(40))', which "
                    + "is not a token"
            }
        }
        return nil
    }

    /// The checks of the fields only "llama" uses (and that "gpt2" must not carry).
    private func sentencePieceProblem() -> String? {
        guard model == "llama" else {
            if scores != nil || mergeOrder != nil {
                return "scores and merge_order belong to model llama, not \(model)"
            }
            if let n = normalizer, !Self.normalizers.contains(n) {
                let known = Self.normalizers.joined(separator: " or ")
                return "normalizer '\(n.prefix(40))' is not supported (expected \(known) or none)"
            }
            return nil
        }
        if let n = normalizer {
            return "normalizer '\(n.prefix(40))' belongs to model gpt2, not llama (our SentencePiece tokenizer applies "
                + "none)"
        }
        if let scores {
            guard scores.count == tokens.count else {
                return "\(scores.count) scores for \(tokens.count) tokens (expected one per token)"
            }
            if let i = scores.firstIndex(where: { !$0.isFinite }) {
                return "scores[\(i)] is \(scores[i]) (expected a finite number)"
            }
        }
        if let order = mergeOrder, !Self.mergeOrders.contains(order) {
            return "merge_order '\(order)' is not known (expected \(Self.mergeOrders.joined(separator: " or ")))"
        }
        if merges.isEmpty, mergeOrder != "gemma", scores == nil {
            return "a llama tokenizer needs merges, scores, or merge_order gemma (found none)"
        }
        return nil
    }
}

/// A model with everything that travels with it: tokenizer and history. The model's weights carry their
/// own representations (dense, sparse, quantized, factorized); there are no side maps.
public struct Checkpoint {
    public var model: DecoderModel
    public var tokenizer: TokenizerSpec?
    /// Where the weights came from and every pass applied since, oldest first (free-form JSON objects).
    public var history: [JSONValue]

    public init(model: DecoderModel, tokenizer: TokenizerSpec? = nil, history: [JSONValue] = []) {
        self.model = model
        self.tokenizer = tokenizer
        self.history = history
    }

    public var config: ModelConfig { model.config }

    /// Reads and verifies a checkpoint: format and version, config, that every expected tensor is present
    /// once, in one representation, with its shape and type, and that nothing unknown is there.
    public static func read(_ path: String) throws -> Checkpoint {
        let file = try openVerified(path)
        func attribute<T>(_ name: String, _ get: (String) throws -> T) throws -> T {
            try translatingFailures(into: { rootUnreadable(path, $0) }) { try get(name) }
        }
        let config: ModelConfig
        do {
            config = try ModelConfig(json: JSONValue.parse(try attribute("config", file.string)))
        } catch let e as ConfigError {
            throw CheckpointError.badConfig(path: path, detail: e.description, context: e.context)
        } catch let e as CheckpointError { throw e } catch {
            throw CheckpointError.badConfig(path: path, detail: "config attribute is not valid JSON (\(error))")
        }
        var history: [JSONValue] = []
        if file.hasAttribute("history") {
            guard let h = try? JSONValue.parse(try attribute("history", file.string)).arrayValue else {
                throw CheckpointError.badHistory(path: path, detail: "expected a JSON array")
            }
            history = h
        }
        let root = try members(file, "/", path)
        if let unknown = root.first(where: {
            !["tensors", "tokenizer", "masks", "quantized", "sparse", "factorized"].contains($0)
        }) {
            throw CheckpointError.unknownEntry(path: path, entry: unknown)
        }
        let tokenizer = file.exists("tokenizer") ? try readTokenizer(file, path, vocabSize: config.vocabSize) : nil
        let model = try readModel(file, config: config, path: path)
        return Checkpoint(model: model, tokenizer: tokenizer, history: history)
    }

    /// Reads only the tokenizer of a checkpoint (after checking format and version), without the weights.
    public static func readTokenizer(_ path: String) throws -> TokenizerSpec? {
        let file = try openVerified(path)
        return file.exists("tokenizer") ? try readTokenizer(file, path, vocabSize: nil) : nil
    }

    /// Opens a file and checks that it is an HDF5 checkpoint of a supported format version.
    private static func openVerified(_ path: String) throws -> H5File {
        try requireRegularFile(path)
        guard H5File.isHDF5(path) else { throw CheckpointError.notHDF5(path: path) }
        let file = try translatingFailures(into: { .unreadable(path: path, detail: $0) }) {
            try H5File.openReadOnly(path)
        }
        try translatingFailures(into: { rootUnreadable(path, $0) }) {
            let format = try file.string("format")
            guard format == CheckpointFormat.name else {
                throw CheckpointError.wrongFormat(path: path, found: format, expected: CheckpointFormat.name)
            }
            let version = try file.int("format_version")
            guard CheckpointFormat.supportedVersions.contains(version) else {
                throw CheckpointError.unsupportedVersion(
                    path: path, found: version, supported: CheckpointFormat.supportedVersions)
            }
        }
        return file
    }

    /// A root attribute that could not be read: the file is not one of ours, or is damaged.
    private static func rootUnreadable(_ path: String, _ reason: String) -> CheckpointError {
        .unreadable(path: path, detail: "root \(reason) (expected a \(CheckpointFormat.name) file)")
    }

    private static func members(_ file: H5File, _ group: String, _ path: String) throws -> [String] {
        try translatingFailures(into: { .unreadable(path: path, detail: $0) }) { try file.members(group) }
    }

    private static func readModel(_ file: H5File, config: ModelConfig, path: String) throws -> DecoderModel {
        let specs = DecoderModel.tensorSpecs(config)
        let shapes = Dictionary(uniqueKeysWithValues: specs.map { ($0.name, $0.shape) })
        var weights: [String: ModelWeight] = [:]
        func add(_ name: String, _ w: ModelWeight, from group: String) throws {
            guard let expected = shapes[name] else {
                throw CheckpointError.unknownTensor(path: path, tensor: group + "/" + name)
            }
            guard weights[name] == nil else {
                throw CheckpointError.unreadable(
                    path: path, detail: "tensor '\(name)' is stored twice (in /\(group) and in another representation)")
            }
            guard w.shape == expected else {
                throw CheckpointError.shapeMismatch(path: path, tensor: name, expected: expected, found: w.shape)
            }
            if expected.count == 1, w.vector == nil {
                throw CheckpointError.unreadable(
                    path: path, detail: "tensor '\(name)' is a norm and must be float32 in /tensors")
            }
            weights[name] = w
        }
        for (name, q) in try readQuantized(file, shapes: shapes, path: path) {
            try add(name, .matrix(.quantized(QuantizedWeight(q))), from: "quantized")
        }
        for (name, s) in try readSparse(file, shapes: shapes, path: path) {
            try add(name, .matrix(.sparse(s)), from: "sparse")
        }
        for (name, f) in try readFactorized(file, shapes: shapes, path: path) {
            try add(name, .matrix(.factorized(f)), from: "factorized")
        }
        let present = file.exists("tensors") ? try members(file, "tensors", path) : []
        if let unknown = present.first(where: { shapes[$0] == nil }) {
            throw CheckpointError.unknownTensor(path: path, tensor: unknown)
        }
        // Version 1/2 masks: float32 0/1 beside their dense weight; loaded as unstructured sparse weights.
        let masks = file.exists("masks") ? try members(file, "masks", path) : []
        for name in present.sorted() {
            let t = try translatingFailures(into: { .unreadable(path: path, detail: "tensor '\(name)': \($0)") }) {
                try file.readFloat32("tensors/" + name, label: name, expected: shapes[name])
            }
            if masks.contains(name) {
                try add(
                    name, .matrix(.sparse(try readLegacyMask(file, name: name, weight: t, path: path))), from: "tensors"
                )
            } else {
                try add(name, .dense(t), from: "tensors")
            }
        }
        if let stray = masks.first(where: { !present.contains($0) }) {
            throw CheckpointError.unknownTensor(path: path, tensor: "masks/" + stray)
        }
        for s in specs where weights[s.name] == nil {
            throw CheckpointError.missingTensor(path: path, tensor: s.name, expectedShape: s.shape)
        }
        do { return try DecoderModel(config: config, weights: weights) } catch let e as ConfigError {
            throw CheckpointError.badConfig(path: path, detail: e.description, context: e.context)
        }
    }

    /// Quantized tensors: the root attribute 'quantization' (JSON: name → {format, shape}) lists them; each is a
    /// group /quantized/<name> holding 'codes' (uint8, bit-packed), 'scales' and, when asymmetric, 'mins'
    /// (float16, one per group), or 'values' (float16) for the f16 format.
    private static func readQuantized(_ file: H5File, shapes: [String: [Int]], path: String) throws -> [String:
        QuantizedTensor]
    {
        let listed = file.hasAttribute("quantization"), stored = file.exists("quantized")
        guard listed || stored else { return [:] }
        guard listed, stored else {
            throw CheckpointError.unreadable(
                path: path,
                detail: listed
                    ? "root attribute 'quantization' lists tensors but /quantized is missing"
                    : "/quantized is present but the root attribute 'quantization' is missing")
        }
        let text = try translatingFailures(into: { .unreadable(path: path, detail: $0) }) {
            try file.string("quantization")
        }
        guard let map = (try? JSONValue.parse(text))?.objectValue else {
            throw CheckpointError.unreadable(path: path, detail: "root attribute 'quantization' is not a JSON object")
        }
        let groups = Set(try members(file, "quantized", path))
        if let extra = groups.subtracting(map.keys).sorted().first {
            throw CheckpointError.badQuantized(
                path: path, tensor: extra,
                detail: "present in /quantized but not listed in the 'quantization' attribute")
        }
        var out: [String: QuantizedTensor] = [:]
        for (name, entry) in map.sorted(by: { $0.key < $1.key }) {
            func bad(_ d: String) -> CheckpointError { .badQuantized(path: path, tensor: name, detail: d) }
            guard let expected = shapes[name] else {
                throw CheckpointError.unknownTensor(path: path, tensor: "quantized/" + name)
            }
            guard groups.contains(name) else {
                throw bad("listed in the 'quantization' attribute but /quantized/\(name) is missing")
            }
            guard let fields = entry.objectValue, let formatName = fields["format"]?.stringValue,
                  let shape = fields["shape"]?.arrayValue?.compactMap(\.intValue) else {
                throw bad(
                    "its 'quantization' entry needs 'format' (string) and 'shape' (integers), found \(entry.text)")
            }
            guard shape == expected else { throw bad("shape \(shape), expected \(expected)") }
            let format = try translatingFailures(into: bad) { try QuantFormat(name: formatName) }
            out[name] = try translatingFailures(into: bad) {
                try readQuantizedGroup(file, "quantized/" + name + "/", format: format, shape: shape, bad: bad)
            }
        }
        return out
    }

    /// One quantized tensor's datasets under the group path `g` (ending in "/"): 'codes' (uint8, bit-packed),
    /// 'scales' and, when asymmetric, 'mins' (float16, shape (rows, columns / group size)), or 'values' (float16,
    /// the tensor's shape) for the f16 format. Exactly these datasets: a 'mins' beside a symmetric format, or
    /// 'codes' beside f16 values, is refused, as is a shape that does not fit the format and the tensor.
    private static func readQuantizedGroup(_ file: H5File, _ g: String, format: QuantFormat, shape: [Int],
                                           bad: (String) -> CheckpointError) throws -> QuantizedTensor {
        try checkQuantizedMembers(file, g, format: format, bad: bad)
        let groupShape = shape.count == 2 && format.groupSize > 0 && shape[1] % format.groupSize == 0
            ? [shape[0], shape[1] / format.groupSize] : nil
        func bytes(_ key: String) throws -> [UInt8] {
            guard file.exists(g + key) else { throw bad("'\(key)' is missing (format \(format))") }
            let info = try file.datasetInfo(g + key)
            guard info.typeClass == H5T_INTEGER, info.typeSize == 1, info.shape.count == 1 else {
                throw bad("'\(key)' must be a 1-D uint8 dataset, found \(info.typeDescription) \(info.shape)")
            }
            var b = [UInt8](repeating: 0, count: info.shape[0])
            try b.withUnsafeMutableBytes { try file.read(g + key, memType: H5Types.uint8, into: $0.baseAddress!) }
            return b
        }
        func halves(_ key: String) throws -> [Float16] {
            guard file.exists(g + key) else { throw bad("'\(key)' is missing (format \(format))") }
            let info = try file.datasetInfo(g + key)
            guard info.typeClass == H5T_FLOAT, info.typeSize == 2 else {
                throw bad("'\(key)' must be float16, found \(info.typeDescription)")
            }
            if let want = key == "values" ? shape : groupShape, info.shape != want {
                let why = key == "values" ? "the tensor's shape" : "one per group of \(format.groupSize) along each row"
                throw bad("'\(key)' has shape \(info.shape), expected \(want) (\(why), format \(format))")
            }
            var h = [Float16](repeating: 0, count: info.shape.reduce(1, *))
            try h.withUnsafeMutableBytes { try file.read(g + key, memType: H5Types.float16, into: $0.baseAddress!) }
            if let i = h.firstIndex(where: { !$0.isFinite }) {
                throw bad("'\(key)' holds \(h[i]) at element \(i) (expected finite values only)")
            }
            return h
        }
        if format.isFloat16 {
            return try QuantizedTensor(
                format: format, shape: shape, codes: try halves("values").withUnsafeBytes { [UInt8]($0) }, scales: [],
                mins: [])
        }
        return try QuantizedTensor(
            format: format, shape: shape, codes: try bytes("codes"), scales: try halves("scales"),
            mins: format.symmetric ? [] : try halves("mins"))
    }

    /// The datasets a quantized group must hold, exactly: 'values' (f16), or 'codes', 'scales' and, for an
    /// asymmetric format only, 'mins'.
    private static func checkQuantizedMembers(_ file: H5File, _ g: String, format: QuantFormat,
                                              bad: (String) -> CheckpointError) throws {
        let expected =
            format.isFloat16 ? ["values"] : format.symmetric ? ["codes", "scales"] : ["codes", "mins", "scales"]
        let found = try file.members(String(g.dropLast()))
        if let extra = found.first(where: { !expected.contains($0) }) {
            let why = extra == "mins" && !format.isFloat16 ? "a symmetric format has no minimums"
                : "format \(format) stores only \(expected.map { "'\($0)'" }.joined(separator: ", "))"
            throw bad("holds '\(extra)', which does not belong to format \(format) (\(why))")
        }
    }

    /// A version 1/2 mask: float32 holding only 0 and 1, the weight zero wherever the mask is.
    private static func readLegacyMask(
        _ file: H5File, name: String, weight w: Tensor, path: String
    ) throws -> SparseWeight {
        guard case .linear? = WeightID(hfName: name), w.shape.count == 2 else {
            throw CheckpointError.unknownTensor(path: path, tensor: "masks/" + name)
        }
        do {
            let m = try file.readFloat32("masks/" + name, label: "masks/" + name, expected: w.shape)
            for i in 0..<m.count where m[i] != 1 {
                guard m[i] == 0 else {
                    throw CheckpointError.badMask(
                        path: path, tensor: name, detail: "holds \(m[i]) at element \(i); a mask holds only 0 and 1")
                }
                guard w[i] == 0 else {
                    throw CheckpointError.badMask(
                        path: path, tensor: name, detail: "the weight is \(w[i]) at element \(i) where the mask is 0")
                }
            }
            let mask = try SparsityMask(pattern: .unstructured, rows: w.shape[0], cols: w.shape[1]) { m[$0] != 0 }
            return try SparseWeight(values: w, mask: mask)
        } catch let e as HDF5Failure {
            throw CheckpointError.unreadable(path: path, detail: "mask '\(name)': \(e.message)")
        } catch let e as ConfigError {
            throw CheckpointError.badMask(path: path, tensor: name, detail: e.description)
        }
    }

    /// The JSON object a root attribute holds (name → entry), or [:] when neither it nor its group exists.
    private static func listing(_ file: H5File, attribute: String, group: String, path: String) throws -> [String:
        JSONValue]
    {
        let listed = file.hasAttribute(attribute), stored = file.exists(group)
        guard listed || stored else { return [:] }
        guard listed, stored else {
            throw CheckpointError.unreadable(
                path: path,
                detail: listed
                    ? "root attribute '\(attribute)' lists tensors but /\(group) is missing"
                    : "/\(group) is present but the root attribute '\(attribute)' is missing")
        }
        let text = try translatingFailures(into: { .unreadable(path: path, detail: $0) }) { try file.string(attribute) }
        guard let map = (try? JSONValue.parse(text))?.objectValue else {
            throw CheckpointError.unreadable(path: path, detail: "root attribute '\(attribute)' is not a JSON object")
        }
        let groups = Set(try members(file, group, path))
        if let extra = groups.subtracting(map.keys).sorted().first {
            throw CheckpointError.unreadable(
                path: path, detail: "/\(group)/\(extra) is not listed in the '\(attribute)' attribute")
        }
        if let missing = Set(map.keys).subtracting(groups).sorted().first {
            throw CheckpointError.unreadable(
                path: path, detail: "'\(attribute)' lists '\(missing)' but /\(group)/\(missing) is missing")
        }
        return map
    }

    /// A 1-D dataset of `count` elements of the given HDF5 class and byte size, read as raw bytes.
    private static func rawDataset(
        _ file: H5File, _ key: String, typeClass: H5T_class_t, size: Int, count: Int, memType: hid_t,
        bad: (String) -> CheckpointError
    ) throws -> [UInt8] {
        guard file.exists(key) else { throw bad("'\(key)' is missing") }
        let info = try file.datasetInfo(key)
        guard info.typeClass == typeClass, info.typeSize == size, info.shape == [count] else {
            throw bad(
                "'\(key)' must hold \(count) elements of \(size) byte(s), found \(info.typeDescription) \(info.shape)")
        }
        var b = [UInt8](repeating: 0, count: count * size)
        try b.withUnsafeMutableBytes { try file.read(key, memType: memType, into: $0.baseAddress!) }
        return b
    }

    /// Sparse weights: the root attribute 'sparsity' (name → {pattern, shape}); each /sparse/<name> holds
    /// 'mask' (uint8, packed bits, row-major, little-endian within a byte) and 'values' (float32, the kept
    /// elements in row-major order).
    private static func readSparse(_ file: H5File, shapes: [String: [Int]], path: String) throws -> [String:
        SparseWeight]
    {
        var out: [String: SparseWeight] = [:]
        for (name, entry) in try listing(file, attribute: "sparsity", group: "sparse", path: path).sorted(by: {
            $0.key < $1.key
        }) {
            func bad(_ d: String) -> CheckpointError { .badMask(path: path, tensor: name, detail: d) }
            guard let expected = shapes[name], expected.count == 2 else {
                throw CheckpointError.unknownTensor(path: path, tensor: "sparse/" + name)
            }
            guard let f = entry.objectValue, let p = f["pattern"]?.stringValue, let pattern = SparsityMask.Pattern(p),
                  let shape = f["shape"]?.arrayValue?.compactMap(\.intValue), shape == expected else {
                throw bad(
                    "its 'sparsity' entry needs 'pattern' (\"N:M\" or \"unstructured\") and 'shape' \(expected), found "
                        + "\(entry.text)")
            }
            try translatingFailures(into: bad) {
                let count = shape[0] * shape[1]
                let bits = try rawDataset(
                    file, "sparse/\(name)/mask", typeClass: H5T_INTEGER, size: 1, count: (count + 7) / 8,
                    memType: H5Types.uint8, bad: bad)
                let mask = try SparsityMask(pattern: pattern, rows: shape[0], cols: shape[1], bits: bits)
                let kept = try file.readFloat32(
                    "sparse/\(name)/values", label: "sparse/\(name)/values", expected: [mask.nonzeros])
                let values = Tensor(shape: shape)
                var j = 0
                for i in 0..<count where mask[i] { values[i] = kept[j]; j += 1 }
                out[name] = try SparseWeight(values: values, mask: mask)
            }
        }
        return out
    }

    /// Factorized weights W = D · S: the root attribute 'factorization' (name → {shape, rank, per_column} and,
    /// when D or S's values are stored quantized, dense_format / sparse_format); each /factorized/<name> holds
    /// 'dense' (float32, OC × rank), or with dense_format the group 'dense_quantized' (Dᵀ, rank × OC, in that
    /// format: 'codes', 'scales', 'mins' as in /quantized, or float16 'values'), and S column by column:
    /// 'indices' (the per_column row indices of each column, ascending; uint8 when rank ≤ 256, else uint16) and
    /// 'values' (float32, in the same order), or with sparse_format the group 'values_quantized' (those values as
    /// a 1 × (in · per_column) tensor in that format).
    private static func readFactorized(_ file: H5File, shapes: [String: [Int]], path: String) throws -> [String:
        FactorizedWeight]
    {
        var out: [String: FactorizedWeight] = [:]
        for (name, entry) in try listing(file, attribute: "factorization", group: "factorized", path: path).sorted(by: {
            $0.key < $1.key
        }) {
            func bad(_ d: String) -> CheckpointError {
                .unreadable(path: path, detail: "factorized tensor '\(name)': \(d)")
            }
            guard let expected = shapes[name], expected.count == 2 else {
                throw CheckpointError.unknownTensor(path: path, tensor: "factorized/" + name)
            }
            guard let f = entry.objectValue, let shape = f["shape"]?.arrayValue?.compactMap(\.intValue),
                shape == expected,
                let k = f["rank"]?.intValue, k >= 1, k <= 1 << 16, let s = f["per_column"]?.intValue, s >= 1, s <= k
            else {
                throw bad(
                    "its 'factorization' entry needs 'shape' \(expected), 'rank' (1...65536) and 'per_column' "
                        + "(1...rank), found \(entry.text)")
            }
            func format(_ key: String) throws -> QuantFormat? {
                guard let d = f[key] else { return nil }
                guard let text = d.stringValue else {
                    throw bad("'\(key)' must be a format name (e.g. q4_g32_sym), found \(d.text)")
                }
                return try translatingFailures(into: { bad("'\(key)': \($0)") }) { try QuantFormat(name: text) }
            }
            let denseFormat = try format("dense_format"), sparseFormat = try format("sparse_format")
            try translatingFailures(into: bad) {
                let OC = shape[0], C = shape[1], n = C * s
                let g = "factorized/\(name)/"
                var dense: Tensor?, quantizedDense: QuantizedTensor?
                if let denseFormat {
                    guard !file.exists(g + "dense") else {
                        throw bad(
                            "holds both 'dense' (float32) and a 'dense_format'; a quantized D is stored in "
                                + "'dense_quantized' only")
                    }
                    guard file.exists(g + "dense_quantized") else {
                        throw bad("'dense_format' is \(denseFormat) but 'dense_quantized' is missing")
                    }
                    quantizedDense = try readQuantizedGroup(
                        file, g + "dense_quantized/", format: denseFormat, shape: [k, OC], bad: bad)
                } else {
                    guard !file.exists(g + "dense_quantized") else {
                        throw bad("holds 'dense_quantized' but its 'factorization' entry has no 'dense_format'")
                    }
                    dense = try file.readFloat32(g + "dense", label: g + "dense", expected: [OC, k])
                }
                let wide = k > 256
                let raw = try rawDataset(
                    file, "factorized/\(name)/indices", typeClass: H5T_INTEGER, size: wide ? 2 : 1, count: n,
                    memType: wide ? H5Types.uint16 : H5Types.uint8, bad: bad)
                let kept: [Float]
                var quantizedSparse: QuantizedTensor?
                if let sparseFormat {
                    guard !file.exists(g + "values") else {
                        throw bad(
                            "holds both 'values' (float32) and a 'sparse_format'; quantized values are stored in "
                                + "'values_quantized' only")
                    }
                    guard file.exists(g + "values_quantized") else {
                        throw bad("'sparse_format' is \(sparseFormat) but 'values_quantized' is missing")
                    }
                    let q = try readQuantizedGroup(
                        file, g + "values_quantized/", format: sparseFormat, shape: [1, n], bad: bad)
                    quantizedSparse = q
                    kept = q.dequantized()
                } else {
                    guard !file.exists(g + "values_quantized") else {
                        throw bad("holds 'values_quantized' but its 'factorization' entry has no 'sparse_format'")
                    }
                    kept = try file.readFloat32(g + "values", label: g + "values", expected: [n]).array
                }
                let index: (Int) -> Int = { wide ? Int(raw[2 * $0]) | Int(raw[2 * $0 + 1]) << 8 : Int(raw[$0]) }
                let values = Tensor(shape: [k, C])
                var keep = [Bool](repeating: false, count: k * C)
                for c in 0..<C {
                    var last = -1
                    for j in 0..<s {
                        let r = index(c * s + j)
                        guard r > last, r < k else {
                            throw bad(
                                "column \(c): row indices must be ascending within 0..<\(k), found \(r) after \(last)")
                        }
                        last = r
                        keep[r * C + c] = true
                        values[r * C + c] = kept[c * s + j]
                    }
                }
                let mask = try SparsityMask(pattern: .unstructured, rows: k, cols: C) { keep[$0] }
                let sparse = try SparseWeight(values: values, mask: mask)
                let factor = try quantizedDense.map { try FactorizedWeight(quantizedDense: $0, sparse: sparse) }
                    ?? FactorizedWeight(dense: dense!, sparse: sparse)
                out[name] = try quantizedSparse.map { try factor.quantizingSparseValues($0) } ?? factor
            }
        }
        return out
    }

    private static func readTokenizer(_ file: H5File, _ path: String, vocabSize: Int?) throws -> TokenizerSpec {
        do {
            let info = try file.datasetInfo("tokenizer")
            guard info.typeClass == H5T_INTEGER, info.typeSize == 1, info.shape.count == 1 else {
                throw CheckpointError.badTokenizer(
                    path: path,
                    detail: "expected a 1-D uint8 dataset of JSON, found \(info.typeDescription) \(info.shape)")
            }
            var bytes = [UInt8](repeating: 0, count: info.shape[0])
            try bytes.withUnsafeMutableBytes {
                try file.read("tokenizer", memType: H5Types.uint8, into: $0.baseAddress!)
            }
            let spec = try JSONDecoder().decode(TokenizerSpec.self, from: Data(bytes))
            if let problem = spec.problem(vocabSize: vocabSize) {
                throw CheckpointError.badTokenizer(path: path, detail: problem)
            }
            return spec
        } catch let e as HDF5Failure {
            throw CheckpointError.unreadable(path: path, detail: "tokenizer: \(e.message)")
        } catch let e as DecodingError {
            throw CheckpointError.badTokenizer(path: path, detail: "invalid JSON (\(describe(e)))")
        }
    }

    /// Writes the checkpoint atomically: into a temporary file beside `path`, flushed, then renamed over it.
    /// Every stored float (dense and sparse values, factors, quantized scales, minimums and float16 values) is
    /// checked first: a NaN or infinity refuses the write, naming the tensor and its first bad element, and
    /// nothing is written.
    public func write(to path: String) throws {
        if let (name, what, i, v) = firstNonFinite() {
            throw CheckpointError.writeFailed(path: path, detail: "tensor '\(name)'\(what) holds \(v) at element \(i) "
                                              + "(expected finite values only; nothing was written)")
        }
        try writeAtomically(path) { try writeUnsafely(to: $0) }
    }

    /// The first non-finite stored value: tensor name, which part of it (empty for the values themselves),
    /// element index and value.
    func firstNonFinite() -> (String, String, Int, Float)? {
        typealias Hit = (part: String, index: Int, value: Float)
        func first(_ t: Tensor, _ part: String = "") -> Hit? {
            let p = t.data
            for i in 0..<t.count where !p[i].isFinite { return (part, i, p[i]) }
            return nil
        }
        func first(_ q: QuantizedTensor, _ of: String = "") -> Hit? {
            if q.format.isFloat16 {
                let halves = q.codes.withUnsafeBytes { Array($0.bindMemory(to: Float16.self)) }
                return halves.firstIndex { !$0.isFinite }.map { (" (\(of)float16 values)", $0, Float(halves[$0])) }
            }
            for (part, h) in [("scales", q.scales), ("minimums", q.mins)] {
                if let i = h.firstIndex(where: { !$0.isFinite }) { return (" (\(of)\(part))", i, Float(h[i])) }
            }
            return nil
        }
        for (id, weight) in model.weights {
            let hit: Hit?
            switch weight {
            case .vector(let t), .matrix(.dense(let t)): hit = first(t)
            case .matrix(.quantized(let qw)): hit = first(qw.packed)
            case .matrix(.sparse(let s)): hit = first(s.values)
            case .matrix(.factorized(let f)):
                let d = f.quantizedDense.map { first($0, "D ") } ?? first(f.dense, " (D)")
                hit = d ?? f.quantizedSparse.map { first($0, "S ") } ?? first(f.sparse.values, " (S)")
            }
            if let hit { return (config.name(id), hit.part, hit.index, hit.value) }
        }
        return nil
    }

    /// One quantized tensor's datasets under the group path `g` (ending in "/"), as `readQuantizedGroup` reads them.
    private func writeQuantizedGroup(_ file: H5File, _ g: String, _ q: QuantizedTensor) throws {
        if q.format.isFloat16 {
            try q.codes.withUnsafeBytes {
                try file.write(
                    g + "values", shape: q.shape, fileType: H5Types.float16, memType: H5Types.float16,
                    data: $0.baseAddress!)
            }
            return
        }
        try q.codes.withUnsafeBytes {
            try file.write(
                g + "codes", shape: [q.codes.count], fileType: H5Types.uint8File, memType: H5Types.uint8,
                data: $0.baseAddress!)
        }
        let groupShape = [q.shape[0], q.shape[1] / q.format.groupSize]
        try q.scales.withUnsafeBytes {
            try file.write(
                g + "scales", shape: groupShape, fileType: H5Types.float16, memType: H5Types.float16,
                data: $0.baseAddress!)
        }
        if !q.format.symmetric {
            try q.mins.withUnsafeBytes {
                try file.write(
                    g + "mins", shape: groupShape, fileType: H5Types.float16, memType: H5Types.float16,
                    data: $0.baseAddress!)
            }
        }
    }

    private func writeUnsafely(to tmp: String) throws {
        let file = try H5File.create(tmp)
        try file.setString("format", CheckpointFormat.name)
        try file.setInt("format_version", CheckpointFormat.version)
        try file.setString("config", config.json.text)
        try file.setString("history", JSONValue.array(history).text)
        try file.createGroup("tensors")
        var quantization: [String: JSONValue] = [:], sparsity: [String: JSONValue] = [:],
            factorization: [String: JSONValue] = [:]
        func group(_ name: String, _ created: Bool) throws { if !created { try file.createGroup(name) } }
        for (id, weight) in model.weights {
            let name = config.name(id)
            func floats(_ key: String, _ shape: [Int], _ p: UnsafePointer<Float>) throws {
                try file.write(key, shape: shape, fileType: H5Types.float32File, memType: H5Types.float32, data: p)
            }
            switch weight {
            case .vector(let t): try floats("tensors/" + name, t.shape, t.data)
            case .matrix(.dense(let t)): try floats("tensors/" + name, t.shape, t.data)
            case .matrix(.quantized(let qw)):
                let q = qw.packed
                try group("quantized", !quantization.isEmpty)
                quantization[name] = .object([
                    "format": .string(q.format.description), "shape": .array(q.shape.map { .int($0) })
                ])
                let g = "quantized/" + name
                try file.createGroup(g)
                try writeQuantizedGroup(file, g + "/", q)
            case .matrix(.sparse(let s)):
                try group("sparse", !sparsity.isEmpty)
                sparsity[name] = .object([
                    "pattern": .string(s.mask.pattern.description), "shape": .array(s.values.shape.map { .int($0) })
                ])
                let g = "sparse/" + name
                try file.createGroup(g)
                try s.mask.bits.withUnsafeBytes {
                    try file.write(
                        g + "/mask", shape: [s.mask.bits.count], fileType: H5Types.uint8File, memType: H5Types.uint8,
                        data: $0.baseAddress!)
                }
                var kept: [Float] = []
                kept.reserveCapacity(s.mask.nonzeros)
                for i in 0..<s.values.count where s.mask[i] { kept.append(s.values[i]) }
                try kept.withUnsafeBufferPointer { try floats(g + "/values", [kept.count], $0.baseAddress!) }
            case .matrix(.factorized(let f)):
                try group("factorized", !factorization.isEmpty)
                let k = f.rank, C = f.sparse.mask.cols, s = f.nonzerosPerColumn
                var entry: [String: JSONValue] = [
                    "shape": .array(weight.shape.map { .int($0) }), "rank": .int(k), "per_column": .int(s)
                ]
                let g = "factorized/" + name
                try file.createGroup(g)
                if let q = f.quantizedDense {
                    entry["dense_format"] = .string(q.format.description)
                    try file.createGroup(g + "/dense_quantized")
                    try writeQuantizedGroup(file, g + "/dense_quantized/", q)
                } else {
                    try floats(g + "/dense", f.dense.shape, f.dense.data)
                }
                var rows: [Int] = [], kept: [Float] = []
                for c in 0..<C {
                    for r in 0..<k where f.sparse.mask[r * C + c] {
                        rows.append(r); kept.append(f.sparse.values[r * C + c])
                    }
                }
                if k > 256 {
                    let idx = rows.map { UInt16($0) }
                    try idx.withUnsafeBytes {
                        try file.write(
                            g + "/indices", shape: [idx.count], fileType: H5Types.uint16File, memType: H5Types.uint16,
                            data: $0.baseAddress!)
                    }
                } else {
                    let idx = rows.map { UInt8($0) }
                    try idx.withUnsafeBytes {
                        try file.write(
                            g + "/indices", shape: [idx.count], fileType: H5Types.uint8File, memType: H5Types.uint8,
                            data: $0.baseAddress!)
                    }
                }
                if let q = f.quantizedSparse {
                    entry["sparse_format"] = .string(q.format.description)
                    try file.createGroup(g + "/values_quantized")
                    try writeQuantizedGroup(file, g + "/values_quantized/", q)
                } else {
                    try kept.withUnsafeBufferPointer { try floats(g + "/values", [kept.count], $0.baseAddress!) }
                }
                factorization[name] = .object(entry)
            }
        }
        for (attribute, entries) in [
            ("quantization", quantization), ("sparsity", sparsity), ("factorization", factorization)
        ] where !entries.isEmpty {
            try file.setString(attribute, JSONValue.object(entries).text)
        }
        if let tokenizer {
            let e = JSONEncoder()
            e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            let bytes = [UInt8](try e.encode(tokenizer))
            try bytes.withUnsafeBytes {
                try file.write(
                    "tokenizer", shape: [bytes.count], fileType: H5Types.uint8File, memType: H5Types.uint8,
                    data: $0.baseAddress!)
            }
        }
        try file.close()
    }
}

/// A decoding error as one line: the coding path and what was wrong.
func describe(_ e: DecodingError) -> String {
    func path(_ c: DecodingError.Context) -> String {
        let p = c.codingPath.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
        return p.isEmpty ? "" : "at \(p): "
    }
    switch e {
    case .typeMismatch(let t, let c): return "\(path(c))expected \(t): \(c.debugDescription)"
    case .valueNotFound(let t, let c): return "\(path(c))missing \(t) value"
    case .keyNotFound(let k, let c): return "\(path(c))missing key '\(k.stringValue)'"
    case .dataCorrupted(let c): return "\(path(c))\(c.debugDescription)"
    @unknown default: return "\(e)"
    }
}

extension H5Types {
    static var uint16File: hid_t { h5_std_u16le() }
    static var uint16: hid_t { h5_native_uint16() }
}

/// Runs `body`, turning a failure of the HDF5 library or of a model type built from what it read (`HDF5Failure`,
/// `ConfigError`, `QuantizationError`) into `fail(reason)`: the checkpoint's own error, naming the file and the
/// tensor or attribute. The checkpoint's own errors pass through unchanged. The one place the readers translate them.
func translatingFailures<T>(into fail: (String) -> CheckpointError, _ body: () throws -> T) throws -> T {
    do { return try body() } catch let e as CheckpointError { throw e } catch { throw fail("\(error)") }
}
