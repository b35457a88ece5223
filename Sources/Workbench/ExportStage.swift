import Checkpoint
import Export
import Foundation
import Model
import Recipes

/// `export`: writes the model at this point for an inference server (`Exporter`), as the recipe's last
/// stage(s). Settings: `format` ("hf" or "gguf", required), `output` (required), `dtype` ("f32", "f16",
/// "bf16"; default f32), `requantize` (GGUF only: a ggml type for quantized weights without a lossless
/// one), `force` (replace an existing output), `name` (the model's name in the metadata). Takes every
/// representation; what a format cannot hold is refused with an error naming the tensors, before anything
/// is written.
public struct ExportStage: OutputStage {
    public static let name = "export"
    public static let accepts = Set(WeightKind.allCases)
    public static var isTerminal: Bool { true }
    public var options: ExportOptions

    public init(config s: StrictObject) throws {
        let format = ExportFormat(rawValue: try s.string("format", oneOf: ExportFormat.allCases.map(\.rawValue)))!
        let output = try s.string("output")
        guard !output.isEmpty else {
            let kind = format == .hf ? "directory" : "file"
            throw s.fail("output", "empty (expected a \(kind) path)")
        }
        options = ExportOptions(format: format, output: output)
        options.dtype = try s.choice("dtype", default: ExportDType.f32)
        if s.has("requantize") {
            guard format == .gguf else { throw s.fail("requantize", "applies to format gguf only") }
            let name = try s.string("requantize", oneOf: RequantizeType.allCases.map(\.rawValue))
            options.requantize = RequantizeType(rawValue: name)!
        }
        options.force = try s.bool("force", default: false)
        options.name = try s.optionalString("name")
    }

    public var work: StageWork { .write(self) }
    public var outputPath: String { options.output }

    /// `Exporter.checkOutput` for this stage's settings; `ExportError` naming the path.
    public func checkOutput(inputs: [(role: String, path: String)]) throws {
        try Exporter.checkOutput(options.output, format: options.format, inputs: inputs, force: options.force)
    }

    /// Exports `model` with the base's tokenizer and history (`Exporter.export`); the report is the `ExportReport`.
    public func write(_ model: DecoderModel, base: Checkpoint, basePath: String) throws
        -> (report: JSONValue, warnings: [String]) {
        let ckpt = Checkpoint(model: model, tokenizer: base.tokenizer, history: base.history)
        let r = try Exporter.export(ckpt, source: basePath, options: options)
        return (try JSONValue(encoding: r), r.warnings)
    }
}
