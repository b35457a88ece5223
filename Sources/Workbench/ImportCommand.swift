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
    /// Imports a GGUF file or Hugging Face directory and writes it (atomically) as our checkpoint.
    public static func importModel(source: String, output: String) throws -> ImportReport {
        let start = Date()
        do { try SafeFiles.checkOutput(output, role: "checkpoint") } catch let e as FileError { throw WorkbenchError(e.description) }
        let ckpt = try Importer.load(source)
        if let spec = ckpt.tokenizer { _ = try tokenizer(spec, path: source) }  // builds, so the written file can tokenize
        try ckpt.write(to: output)
        let bytes = (try? FileManager.default.attributesOfItem(atPath: output)[.size] as? Int) ?? 0
        return ImportReport(source: source, output: output, parameters: ckpt.model.parameterCount,
                            tensors: ckpt.model.namedTensors.count, outputBytes: bytes,
                            tokenizer: ckpt.tokenizer != nil, seconds: Date().timeIntervalSince(start),
                            warnings: ckpt.history.last?.objectValue?["warnings"]?.arrayValue?.compactMap(\.stringValue) ?? [])
    }
}
