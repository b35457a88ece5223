import Diagnostics
import Foundation
import Model

/// Why an export was refused or failed: names the checkpoint, tensor or path and what was expected.
public struct ExportError: ContextualError {
    /// What is wrong; the file, when `context` names one, is prefixed when rendered.
    public let message: String
    /// Where and what: the file, key, tensor, expected and found value, as far as the thrower knows them.
    public let context: ErrorContext
    /// An error whose message says everything (it names its file itself, if any).
    public init(_ description: String) { message = description; context = ErrorContext() }
    /// An error with fields; `description` is "FILE: MESSAGE" when `context` names a file.
    public init(_ message: String, _ context: ErrorContext) { self.message = message; self.context = context }
    public var description: String { context.prefixingFile(message) }
}

/// Where an export goes: a Hugging Face directory or a GGUF file for llama.cpp.
public enum ExportFormat: String, Codable, CaseIterable, Sendable {
    case hf, gguf
}

/// The float type of tensors that are not stored in a quantized form (dense, sparse, factorized weights and
/// norms): float32 (exact), float16 or bfloat16 (rounded to nearest even; the error is reported). GGUF keeps
/// norms in float32 always (llama.cpp expects them so).
public enum ExportDType: String, Codable, CaseIterable, Sendable {
    case f32, f16, bf16
    /// config.json's `torch_dtype` spelling.
    var torchName: String {
        switch self {
        case .f32: "float32"
        case .f16: "float16"
        case .bf16: "bfloat16"
        }
    }
}

/// A ggml type a quantized weight that has no lossless ggml form may be re-quantized to (`--requantize`).
public enum RequantizeType: String, Codable, CaseIterable, Sendable {
    case q4_0, q4_1, q5_0, q5_1, q8_0, f16, f32
}

/// What to export and how.
public struct ExportOptions: Sendable {
    public var format: ExportFormat
    public var output: String
    public var dtype: ExportDType = .f32
    /// GGUF only: re-quantize weights without a lossless ggml form to this type (nil: refuse them).
    public var requantize: RequantizeType? = nil
    /// Replace an existing output (a non-empty directory, or a file).
    public var force = false
    /// The model's name in the metadata (`general.name`, config `_name_or_path`).
    public var name: String? = nil
    public init(format: ExportFormat, output: String) { self.format = format; self.output = output }
}

/// One exported tensor.
public struct ExportedTensor: Codable, Sendable {
    /// Name in the output (Hugging Face or GGUF).
    public var name: String
    /// Our representation it came from ("dense", "sparse 2:4", "q4_g32_sym", "factorized", "norm").
    public var source: String
    /// Stored type ("F32", "BF16", "Q4_0", "pack-quantized int4 g32", ...).
    public var type: String
    /// Row-major shape as stored (after padding, if any).
    public var shape: [Int]
    public var bytes: Int
    /// Whether every value the output holds equals ours (bit for bit after conversion back to float32).
    public var lossless: Bool
    /// Largest |exported − ours| over the tensor, when lossy.
    public var maxAbsError: Double?
    /// Root-mean-square error relative to the tensor's RMS, when lossy.
    public var relativeRMSError: Double?
}

/// What `compress export` reports.
public struct ExportReport: Codable, Sendable {
    public var checkpoint: String
    public var output: String
    public var format: String
    /// "LlamaForCausalLM", "DeciLMForCausalLM", GGUF "llama" or "deci".
    public var architecture: String
    public var dtype: String
    public var files: [String]
    public var bytes: Int
    public var tensors: [ExportedTensor]
    /// Tensors converted with loss (names with their error), for a quick look.
    public var lossy: [String]
    /// Size advantages lost, zero padding added, metadata decisions.
    public var warnings: [String]
    public var seconds: Double
}

/// Error of a conversion: max |a − b| and RMS(a − b) / RMS(b).
struct ConversionError {
    var maxAbs: Double = 0
    var sumSquaredDiff: Double = 0
    var sumSquared: Double = 0
    var isExact: Bool { maxAbs == 0 }
    mutating func add(exported a: Float, ours b: Float) {
        let d = Double(a) - Double(b)
        maxAbs = max(maxAbs, abs(d))
        sumSquaredDiff += d * d
        sumSquared += Double(b) * Double(b)
    }
    var relativeRMS: Double {
        sumSquared > 0 ? (sumSquaredDiff / sumSquared).squareRoot() : (sumSquaredDiff > 0 ? .infinity : 0)
    }
}
