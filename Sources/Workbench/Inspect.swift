import Diagnostics
import Checkpoint
import Foundation
import Model
import Quantization

/// What `compress inspect` reports.
public struct InspectReport: Codable {
    public struct TensorEntry: Codable {
        public var name: String
        public var shape: [Int]
        /// How the weight is held: dense, sparse, quantized or factorized (norms: dense).
        public var representation: String
        /// "float32", or the stored format of a quantized tensor ("q4_g64_asym", "f16"); for a factorized weight
        /// the format of its dense factor D ("float32", or e.g. "q4_g32_sym" when D is stored quantized).
        public var dtype: String
        /// Sparse: the pattern ("2:4", "unstructured"); factorized: "rank k, s per column".
        public var pattern: String?
        /// Sparse and factorized: kept fraction of the (sparse factor's) elements.
        public var density: Double?
        /// Bytes as stored (packed codes with scales and minimums; kept values with mask bits or indices).
        public var bytes: Int
        /// Bytes × 8 over the elements of the (out × in) weight it represents.
        public var bitsPerWeight: Double
        /// Factorized with a quantized factor: bytes of D as stored, and of S's values (float32 or codes with
        /// scales) with their row indices (`bytes` is their sum); the format of S's values.
        public var denseFactorBytes: Int?
        public var sparseFactorBytes: Int?
        public var sparseFactorDtype: String?
    }
    public struct LayerEntry: Codable {
        public var index: Int
        public var attention: Bool
        public var numAttentionHeads: Int?
        public var numKeyValueHeads: Int?
        public var mlp: Bool
        public var intermediateSize: Int?
        public var parameters: Int
    }
    public var checkpoint: String
    public var fileBytes: Int
    public var architecture: String
    public var config: JSONValue
    public var parameters: Int
    /// Bytes of all tensors as stored, and storage bits per parameter.
    public var tensorBytes: Int
    public var bitsPerWeight: Double
    /// Tensors stored quantized, and their bits per weight together.
    public var quantizedTensors: Int
    public var quantizedBitsPerWeight: Double?
    public var layers: [LayerEntry]
    public var tensors: [TensorEntry]
    /// A `Tokenizer` summary, or null without a tokenizer.
    public var tokenizer: JSONValue
    public var history: [JSONValue]

    /// The checkpoint's tokenizer: its model and pre-tokenizer, sizes, special ids (null: none) and normalizer.
    public struct Tokenizer: Codable {
        public var model: String
        public var pre: String
        public var vocabulary: Int
        public var merges: Int
        public var bosTokenId: Nullable<Int>
        public var eosTokenId: Nullable<Int>
        public var addBosToken: Bool
        public var normalizer: Nullable<String>
    }
}

extension Workbench {
    /// Reads and verifies a checkpoint and describes it.
    public static func inspect(checkpoint path: String) throws -> InspectReport {
        let ckpt = try Checkpoint.read(path)
        let model = ckpt.model, c = model.config
        let layers = model.layers.enumerated().map { i, l -> InspectReport.LayerEntry in
            let b = c.blocks[i]
            let norms = (l.attention.map { $0.norm.count } ?? 0) + (l.mlp.map { $0.norm.count } ?? 0)
            let linear = [l.attention.map { [$0.q, $0.k, $0.v, $0.o] } ?? [],
                          l.mlp.map { [$0.gate, $0.up, $0.down] } ?? []].joined()
            return .init(index: i, attention: b.attention, numAttentionHeads: b.attention ? b.numAttentionHeads : nil,
                         numKeyValueHeads: b.attention ? b.numKeyValueHeads : nil, mlp: b.mlp,
                         intermediateSize: b.mlp ? b.intermediateSize : nil,
                         parameters: norms + linear.reduce(0) { $0 + $1.parameterCount })
        }
        let tokenizer = try ckpt.tokenizer.map { t in
            try JSONValue(encoding: InspectReport.Tokenizer(
                model: t.model, pre: t.pre, vocabulary: t.tokens.count, merges: t.merges.count,
                bosTokenId: Nullable(t.bosTokenID.map { Int($0) }), eosTokenId: Nullable(t.eosTokenID.map { Int($0) }),
                addBosToken: t.addBosToken, normalizer: Nullable(t.normalizer)))
        } ?? .null
        let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
        let entries = model.weights.map { w -> InspectReport.TensorEntry in
            let bytes = w.weight.storageBytes, n = w.weight.shape.reduce(1, *)
            var e = InspectReport.TensorEntry(name: model.config.name(w.id), shape: w.weight.shape,
                                              representation: "dense", dtype: "float32",
                                              bytes: bytes, bitsPerWeight: Double(bytes * 8) / Double(n))
            switch w.weight {
            case .vector, .matrix(.dense): break
            case .matrix(.sparse(let s)):
                (e.representation, e.pattern, e.density) = ("sparse", s.mask.pattern.description, s.mask.density)
            case .matrix(.quantized(let q)):
                (e.representation, e.dtype) = ("quantized", q.packed.format.description)
            case .matrix(.factorized(let f)):
                (e.representation, e.pattern, e.density) = ("factorized",
                                                            "rank \(f.rank), \(f.nonzerosPerColumn) per column",
                                                            f.sparse.mask.density)
                if f.isQuantized {
                    e.dtype = f.quantizedDense?.format.description ?? "float32"
                    e.sparseFactorDtype = f.quantizedSparse?.format.description ?? "float32"
                    (e.denseFactorBytes, e.sparseFactorBytes) = (f.denseBytes, f.sparseBytes)
                }
            }
            return e
        }
        let total = entries.reduce(0) { $0 + $1.bytes }
        let quantizedEntries = entries.filter { $0.representation == "quantized" }
        let qWeights: Int = quantizedEntries.reduce(0) { $0 + $1.shape.reduce(1, *) }
        return InspectReport(
            checkpoint: path, fileBytes: size,
            architecture: c.familyType.hfArchitecture,
            config: c.json, parameters: model.parameterCount, tensorBytes: total,
            bitsPerWeight: Double(total * 8) / Double(model.parameterCount),
            quantizedTensors: quantizedEntries.count,
            quantizedBitsPerWeight: qWeights > 0
                ? Double(quantizedEntries.reduce(0) { $0 + $1.bytes } * 8) / Double(qWeights) : nil,
            layers: layers, tensors: entries,
            tokenizer: tokenizer, history: ckpt.history)
    }
}

extension InspectReport {
    /// A human-readable summary.
    public var text: String {
        var s = "\(checkpoint): \(architecture), \(parameters) parameters, \(formatBytes(tensorBytes)) of tensors"
            + String(format: " (%.3f bits per weight)", bitsPerWeight) + ", file \(formatBytes(fileBytes))\n"
        if let q = quantizedBitsPerWeight {
            s += String(format: "quantized: %d tensors, %.3f bits per weight (scales included)\n", quantizedTensors, q)
        }
        s += "config: \(config.text)\n"
        s += "layers:\n"
        for l in layers {
            let attn = l.attention
                ? "attention \(l.numAttentionHeads ?? 0)q/\(l.numKeyValueHeads ?? 0)kv heads" : "attention absent"
            let mlp = l.mlp ? "mlp \(l.intermediateSize ?? 0)" : "mlp absent"
            s += "  \(l.index): \(attn), \(mlp), \(l.parameters) parameters\n"
        }
        s += "tensors (\(tensors.count)):\n"
        for t in tensors {
            var how = t.representation == "dense" || t.representation == "quantized" ? t.dtype
                : t.representation + " " + (t.pattern ?? "")
                    + (t.density.map { String(format: " density %.3f", $0) } ?? "")
            if t.representation == "factorized", let d = t.denseFactorBytes, let s = t.sparseFactorBytes {
                how += ", D \(t.dtype) \(formatBytes(d)) + S \(t.sparseFactorDtype ?? "float32") \(formatBytes(s))"
            }
            s += "  \(t.name) \(t.shape) \(how) \(formatBytes(t.bytes))"
                + String(format: " %.3f bits/weight\n", t.bitsPerWeight)
        }
        s += "tokenizer: \(tokenizer.text)\n"
        s += "history (\(history.count)):\n"
        for h in history { s += "  \(h.text)\n" }
        return s
    }
}

/// What `compress formats` reports: the quantization formats table for one group size.
public struct FormatsReport: Codable {
    public struct Row: Codable {
        public var name: String
        public var bits: Int
        public var groupSize: Int
        public var symmetric: Bool
        public var bytesPerGroup: Double
        public var bitsPerWeight: Double
    }
    public var groupSize: Int
    public var formats: [Row]

    public var text: String {
        var s = "format          bits  group  bytes/group  bits/weight\n"
        for r in formats {
            s += r.name.padding(toLength: 16, withPad: " ", startingAt: 0)
                + String(format: "%4d  %5d  %11.2f  %11.3f\n", r.bits, r.groupSize, r.bytesPerGroup, r.bitsPerWeight)
        }
        return s
    }
}

extension Workbench {
    public static func formats(groupSize: Int) throws -> FormatsReport {
        do {
            return FormatsReport(groupSize: groupSize, formats: try QuantFormat.table(groupSize: groupSize).map {
                .init(name: $0.name, bits: $0.bits, groupSize: $0.groupSize, symmetric: $0.symmetric,
                      bytesPerGroup: $0.bytesPerGroup,
                      bitsPerWeight: $0.bitsPerWeight)
            })
        } catch { throw error.adding(place: "--group-size") }
    }
}
