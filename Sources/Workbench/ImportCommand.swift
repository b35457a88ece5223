import Diagnostics
import Checkpoint
import Foundation
import Import
import Model
import SafeFiles

/// What `compress import` reports.
public struct ImportReport: Codable {
    public var source: String
    public var output: String
    public var parameters: Int
    public var tensors: Int
    public var outputBytes: Int
    public var tokenizer: Bool
    public var seconds: Double
    /// What the import decided that the source did not say plainly (also kept in the checkpoint's history).
    public var warnings: [String]
}

extension Workbench {
    /// Imports a GGUF file or Hugging Face directory and writes it (atomically) as our checkpoint. `preTokenizer`
    /// (as `tokenize --pre-tokenizer`) replaces the source's pre-tokenizer or SentencePiece spacing rule, for a source
    /// whose own is missing or one we do not implement; the tokenizer is built with it before anything is written.
    public static func importModel(source: String, output: String, preTokenizer: String? = nil) throws -> ImportReport {
        let start = Date()
        try SafeFiles.checkOutput(output, role: "checkpoint")
        let ckpt = try Importer.load(source, preTokenizer: preTokenizer)
        if let spec = ckpt.tokenizer {  // builds, so the written file can tokenize
            do { _ = try tokenizer(spec, path: source) } catch where preTokenizer == nil {
                throw error.adding(advice: "--pre-tokenizer NAME imports with one we implement")
            }
        }
        try ckpt.write(to: output)
        let bytes = (try? FileManager.default.attributesOfItem(atPath: output)[.size] as? Int) ?? 0
        return ImportReport(source: source, output: output, parameters: ckpt.model.parameterCount,
                            tensors: ckpt.model.namedTensors.count, outputBytes: bytes,
                            tokenizer: ckpt.tokenizer != nil, seconds: Date().timeIntervalSince(start),
                            warnings: ckpt.history.last?.objectValue?["warnings"]?.arrayValue?.compactMap(\.stringValue)
                                ?? [])
    }
}
