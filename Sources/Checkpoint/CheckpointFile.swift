import CHDF5
import Foundation
import Model
import Quantization
import TensorCore

/// Constants of the on-disk format (documented in checkpoints/README.md).
public enum CheckpointFormat {
    public static let name = "compress-checkpoint"
    /// Version 2 adds /quantized (packed low-bit tensors); files without it are written as version 1.
    public static let version = 2
    public static let supportedVersions = [1, 2]
}

/// The tokenizer a checkpoint carries: enough to turn text into ids with no other file.
public struct TokenizerSpec: Codable, Equatable, Sendable {
    /// Tokenizer family; "gpt2" is byte-level BPE.
    public var model: String
    /// Pre-tokenizer kind (e.g. "gpt2", "smollm", "llama3").
    public var pre: String
    /// Token strings by id, in the byte-to-unicode representation of byte-level BPE.
    public var tokens: [String]
    /// Merge rules "left right", by rank.
    public var merges: [String]
    /// Token types by id (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte), when known.
    public var tokenTypes: [Int32]?
    public var bosTokenID: Int32?
    public var eosTokenID: Int32?
    public var addBosToken: Bool

    enum CodingKeys: String, CodingKey {
        case model, pre, tokens, merges
        case tokenTypes = "token_types", bosTokenID = "bos_token_id", eosTokenID = "eos_token_id", addBosToken = "add_bos_token"
    }

    public init(model: String, pre: String, tokens: [String], merges: [String], tokenTypes: [Int32]? = nil,
                bosTokenID: Int32? = nil, eosTokenID: Int32? = nil, addBosToken: Bool = false) {
        self.model = model
        self.pre = pre
        self.tokens = tokens
        self.merges = merges
        self.tokenTypes = tokenTypes
        self.bosTokenID = bosTokenID
        self.eosTokenID = eosTokenID
        self.addBosToken = addBosToken
    }
}

/// A model with everything that travels with it: tokenizer and history.
public struct Checkpoint {
    public var model: LlamaModel
    public var tokenizer: TokenizerSpec?
    /// Where the weights came from and every pass applied since, oldest first (free-form JSON objects).
    public var history: [JSONValue]

    /// Sparsity masks (0/1) of decoder linear weights, by tensor name; the weights are already zero where a
    /// mask is 0. Training keeps them so.
    public var masks: [String: Tensor] = [:]

    /// Tensors stored quantized (packed codes with scales, or float16), by name. The model holds their
    /// dequantized values; writing checks that it still does.
    public var quantized: [String: QuantizedTensor] = [:]

    public init(model: LlamaModel, tokenizer: TokenizerSpec? = nil, history: [JSONValue] = [], masks: [String: Tensor] = [:],
                quantized: [String: QuantizedTensor] = [:]) {
        self.masks = masks
        self.quantized = quantized
        self.model = model
        self.tokenizer = tokenizer
        self.history = history
    }

    public var config: LlamaConfig { model.config }

    /// Reads and verifies a checkpoint: format and version, config, that every expected tensor is present
    /// with its shape and type, and that nothing unknown is there.
    public static func read(_ path: String) throws -> Checkpoint {
        let file = try openVerified(path)
        func attribute<T>(_ name: String, _ get: (String) throws -> T) throws -> T {
            do { return try get(name) } catch let e as HDF5Failure {
                throw CheckpointError.unreadable(path: path, detail: "root \(e.message) (expected a \(CheckpointFormat.name) file)")
            }
        }
        let config: LlamaConfig
        do { config = try LlamaConfig(json: JSONValue.parse(try attribute("config", file.string))) } catch let e as ConfigError {
            throw CheckpointError.badConfig(path: path, detail: e.description)
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
        if let unknown = root.first(where: { !["tensors", "tokenizer", "masks", "quantized"].contains($0) }) {
            throw CheckpointError.unknownEntry(path: path, entry: unknown)
        }
        let tokenizer = file.exists("tokenizer") ? try readTokenizer(file, path) : nil
        let quantized = try readQuantized(file, config: config, path: path)
        let model = try readModel(file, config: config, quantized: quantized, path: path)
        let masks = root.contains("masks") ? try readMasks(file, model: model, path: path) : [:]
        return Checkpoint(model: model, tokenizer: tokenizer, history: history, masks: masks, quantized: quantized)
    }

    /// Reads only the tokenizer of a checkpoint (after checking format and version), without the weights.
    public static func readTokenizer(_ path: String) throws -> TokenizerSpec? {
        let file = try openVerified(path)
        return file.exists("tokenizer") ? try readTokenizer(file, path) : nil
    }

    /// Opens a file and checks that it is an HDF5 checkpoint of a supported format version.
    private static func openVerified(_ path: String) throws -> H5File {
        guard FileManager.default.fileExists(atPath: path) else { throw CheckpointError.notFound(path: path) }
        guard H5File.isHDF5(path) else { throw CheckpointError.notHDF5(path: path) }
        let file: H5File
        do { file = try H5File.openReadOnly(path) } catch let e as HDF5Failure {
            throw CheckpointError.unreadable(path: path, detail: e.message)
        }
        do {
            let format = try file.string("format")
            guard format == CheckpointFormat.name else { throw CheckpointError.wrongFormat(path: path, found: format) }
            let version = try file.int("format_version")
            guard CheckpointFormat.supportedVersions.contains(version) else {
                throw CheckpointError.unsupportedVersion(path: path, found: version)
            }
        } catch let e as HDF5Failure {
            throw CheckpointError.unreadable(path: path, detail: "root \(e.message) (expected a \(CheckpointFormat.name) file)")
        }
        return file
    }

    private static func members(_ file: H5File, _ group: String, _ path: String) throws -> [String] {
        do { return try file.members(group) } catch let e as HDF5Failure {
            throw CheckpointError.unreadable(path: path, detail: e.message)
        }
    }

    private static func readModel(_ file: H5File, config: LlamaConfig, quantized: [String: QuantizedTensor], path: String) throws -> LlamaModel {
        let specs = LlamaModel.tensorSpecs(config)
        let present = file.exists("tensors") ? try members(file, "tensors", path) : []
        let expected = Set(specs.map(\.name))
        if let unknown = present.first(where: { !expected.contains($0) }) {
            throw CheckpointError.unknownTensor(path: path, tensor: unknown)
        }
        if let both = present.first(where: { quantized[$0] != nil }) {
            throw CheckpointError.badQuantized(path: path, tensor: both, detail: "stored both in /tensors and in /quantized")
        }
        let presentSet = Set(present)
        var tensors: [String: Tensor] = [:]
        for s in specs {
            if let q = quantized[s.name] {
                tensors[s.name] = Tensor(shape: q.shape, values: q.dequantized())
                continue
            }
            guard presentSet.contains(s.name) else {
                throw CheckpointError.missingTensor(path: path, tensor: s.name, expectedShape: s.shape)
            }
            do {
                tensors[s.name] = try file.readFloat32("tensors/" + s.name, label: s.name, expected: s.shape)
            } catch let e as HDF5Failure {
                throw CheckpointError.unreadable(path: path, detail: "tensor '\(s.name)': \(e.message)")
            }
        }
        do { return try LlamaModel(config: config, tensors: tensors) } catch let e as ConfigError {
            throw CheckpointError.badConfig(path: path, detail: e.description)
        }
    }

    /// Quantized tensors: the root attribute 'quantization' (JSON: name → {format, shape}) lists them; each is a
    /// group /quantized/<name> holding 'codes' (uint8, bit-packed), 'scales' and, when asymmetric, 'mins'
    /// (float16, one per group), or 'values' (float16) for the f16 format.
    private static func readQuantized(_ file: H5File, config: LlamaConfig, path: String) throws -> [String: QuantizedTensor] {
        let listed = file.hasAttribute("quantization"), stored = file.exists("quantized")
        guard listed || stored else { return [:] }
        guard listed, stored else {
            throw CheckpointError.unreadable(path: path, detail: listed ? "root attribute 'quantization' lists tensors but /quantized is missing"
                                                                        : "/quantized is present but the root attribute 'quantization' is missing")
        }
        let text: String
        do { text = try file.string("quantization") } catch let e as HDF5Failure { throw CheckpointError.unreadable(path: path, detail: e.message) }
        guard let map = (try? JSONValue.parse(text))?.objectValue else {
            throw CheckpointError.unreadable(path: path, detail: "root attribute 'quantization' is not a JSON object")
        }
        let shapes = Dictionary(uniqueKeysWithValues: LlamaModel.tensorSpecs(config).map { ($0.name, $0.shape) })
        let groups = Set(try members(file, "quantized", path))
        if let extra = groups.subtracting(map.keys).sorted().first {
            throw CheckpointError.badQuantized(path: path, tensor: extra, detail: "present in /quantized but not listed in the 'quantization' attribute")
        }
        var out: [String: QuantizedTensor] = [:]
        for (name, entry) in map.sorted(by: { $0.key < $1.key }) {
            func bad(_ d: String) -> CheckpointError { .badQuantized(path: path, tensor: name, detail: d) }
            guard let expected = shapes[name] else { throw CheckpointError.unknownTensor(path: path, tensor: "quantized/" + name) }
            guard groups.contains(name) else { throw bad("listed in the 'quantization' attribute but /quantized/\(name) is missing") }
            guard let fields = entry.objectValue, let formatName = fields["format"]?.stringValue,
                  let shape = fields["shape"]?.arrayValue?.compactMap(\.intValue) else {
                throw bad("its 'quantization' entry needs 'format' (string) and 'shape' (integers), found \(entry.text)")
            }
            guard shape == expected else { throw bad("shape \(shape), expected \(expected)") }
            let format: QuantFormat
            do { format = try QuantFormat(name: formatName) } catch let e as QuantizationError { throw bad(e.description) }
            do {
                let g = "quantized/" + name + "/"
                func bytes(_ key: String) throws -> [UInt8] {
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
                    var h = [Float16](repeating: 0, count: info.shape.reduce(1, *))
                    try h.withUnsafeMutableBytes { try file.read(g + key, memType: H5Types.float16, into: $0.baseAddress!) }
                    return h
                }
                let q: QuantizedTensor
                if format.isFloat16 {
                    q = try QuantizedTensor(format: format, shape: shape, codes: try halves("values").withUnsafeBytes { [UInt8]($0) }, scales: [], mins: [])
                } else {
                    q = try QuantizedTensor(format: format, shape: shape, codes: try bytes("codes"), scales: try halves("scales"),
                                            mins: format.symmetric ? [] : try halves("mins"))
                }
                out[name] = q
            } catch let e as HDF5Failure {
                throw bad(e.message)
            } catch let e as QuantizationError {
                throw bad(e.description)
            }
        }
        return out
    }

    /// Masks: each names a decoder linear weight, has its shape, holds only 0 and 1, and the weight is zero
    /// wherever the mask is.
    private static func readMasks(_ file: H5File, model: LlamaModel, path: String) throws -> [String: Tensor] {
        let weights = Dictionary(uniqueKeysWithValues: model.namedTensors.map { ($0.name, $0.tensor) })
        var masks: [String: Tensor] = [:]
        for name in try members(file, "masks", path) {
            guard let w = weights[name], name.hasPrefix("model.layers."), w.shape.count == 2 else {
                throw CheckpointError.unknownTensor(path: path, tensor: "masks/" + name)
            }
            do {
                let m = try file.readFloat32("masks/" + name, label: "masks/" + name, expected: w.shape)
                for i in 0..<m.count where m[i] != 1 {
                    guard m[i] == 0 else {
                        throw CheckpointError.badMask(path: path, tensor: name, detail: "holds \(m[i]) at element \(i); a mask holds only 0 and 1")
                    }
                    guard w[i] == 0 else {
                        throw CheckpointError.badMask(path: path, tensor: name, detail: "the weight is \(w[i]) at element \(i) where the mask is 0")
                    }
                }
                masks[name] = m
            } catch let e as HDF5Failure {
                throw CheckpointError.unreadable(path: path, detail: "mask '\(name)': \(e.message)")
            }
        }
        return masks
    }

    private static func readTokenizer(_ file: H5File, _ path: String) throws -> TokenizerSpec {
        do {
            let info = try file.datasetInfo("tokenizer")
            guard info.typeClass == H5T_INTEGER, info.typeSize == 1, info.shape.count == 1 else {
                throw CheckpointError.badTokenizer(path: path, detail: "expected a 1-D uint8 dataset of JSON, found \(info.typeDescription) \(info.shape)")
            }
            var bytes = [UInt8](repeating: 0, count: info.shape[0])
            try bytes.withUnsafeMutableBytes { try file.read("tokenizer", memType: H5Types.uint8, into: $0.baseAddress!) }
            let spec = try JSONDecoder().decode(TokenizerSpec.self, from: Data(bytes))
            if let types = spec.tokenTypes, types.count != spec.tokens.count {
                throw CheckpointError.badTokenizer(path: path, detail: "\(types.count) token types for \(spec.tokens.count) tokens")
            }
            return spec
        } catch let e as HDF5Failure {
            throw CheckpointError.unreadable(path: path, detail: "tokenizer: \(e.message)")
        } catch let e as DecodingError {
            throw CheckpointError.badTokenizer(path: path, detail: "invalid JSON (\(e))")
        }
    }

    /// Writes the checkpoint atomically: into a temporary file beside `path`, flushed, then renamed over it.
    public func write(to path: String) throws {
        let tensors = Dictionary(uniqueKeysWithValues: model.namedTensors.map { ($0.name, $0.tensor) })
        for (name, q) in quantized.sorted(by: { $0.key < $1.key }) {
            guard let t = tensors[name] else { throw CheckpointError.writeFailed(path: path, detail: "quantized tensor '\(name)' is not part of the model") }
            guard t.shape == q.shape, q.dequantized().withUnsafeBufferPointer({ d in (0..<t.count).allSatisfy { d[$0] == t[$0] } }) else {
                throw CheckpointError.writeFailed(path: path, detail: "tensor '\(name)' no longer equals its quantized form (changed after quantization); re-quantize it or drop its quantized form")
            }
        }
        try writeAtomically(path) { try writeUnsafely(to: $0) }
    }

    private func writeUnsafely(to tmp: String) throws {
        let file = try H5File.create(tmp)
        try file.setString("format", CheckpointFormat.name)
        try file.setInt("format_version", quantized.isEmpty ? 1 : CheckpointFormat.version)
        try file.setString("config", config.json.text)
        try file.setString("history", JSONValue.array(history).text)
        try file.createGroup("tensors")
        for (name, t) in model.namedTensors where quantized[name] == nil {
            try file.write("tensors/" + name, shape: t.shape, fileType: H5Types.float32File, memType: H5Types.float32, data: t.data)
        }
        if !quantized.isEmpty {
            var entries: [String: JSONValue] = [:]
            try file.createGroup("quantized")
            for (name, q) in quantized.sorted(by: { $0.key < $1.key }) {
                entries[name] = .object(["format": .string(q.format.description), "shape": .array(q.shape.map { .int($0) })])
                let g = "quantized/" + name
                try file.createGroup(g)
                if q.format.isFloat16 {
                    try q.codes.withUnsafeBytes { try file.write(g + "/values", shape: q.shape, fileType: H5Types.float16, memType: H5Types.float16, data: $0.baseAddress!) }
                    continue
                }
                try q.codes.withUnsafeBytes { try file.write(g + "/codes", shape: [q.codes.count], fileType: H5Types.uint8File, memType: H5Types.uint8, data: $0.baseAddress!) }
                let groupShape = [q.shape[0], q.shape[1] / q.format.groupSize]
                try q.scales.withUnsafeBytes { try file.write(g + "/scales", shape: groupShape, fileType: H5Types.float16, memType: H5Types.float16, data: $0.baseAddress!) }
                if !q.format.symmetric {
                    try q.mins.withUnsafeBytes { try file.write(g + "/mins", shape: groupShape, fileType: H5Types.float16, memType: H5Types.float16, data: $0.baseAddress!) }
                }
            }
            try file.setString("quantization", JSONValue.object(entries).text)
        }
        if !masks.isEmpty {
            try file.createGroup("masks")
            for (name, m) in masks.sorted(by: { $0.key < $1.key }) {
                try file.write("masks/" + name, shape: m.shape, fileType: H5Types.float32File, memType: H5Types.float32, data: m.data)
            }
        }
        if let tokenizer {
            let e = JSONEncoder()
            e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            let bytes = [UInt8](try e.encode(tokenizer))
            try bytes.withUnsafeBytes {
                try file.write("tokenizer", shape: [bytes.count], fileType: H5Types.uint8File, memType: H5Types.uint8, data: $0.baseAddress!)
            }
        }
        try file.close()
    }
}
