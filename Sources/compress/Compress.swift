import ArgumentParser
import Export
import Evaluation
import Recipes
import Foundation
import TensorCore
import Training
import Workbench

@main
struct Compress: ParsableCommand {
    /// Picks OpenBLAS's kernels for this CPU (re-executing with OPENBLAS_CORETYPE set) before any BLAS work.
    static func main() {
        BLASKernels.reexecWithPreferredCore()
        let arguments = Array(CommandLine.arguments.dropFirst())
        do {
            var command = try parseAsRoot(arguments)
            try command.run()
        } catch {
            // Under --json every failure is one JSON object and exit status 1, argument errors included.
            if arguments.contains("--json"), !(error is CleanExit), !(error is ExitCode) {
                let message = fullMessage(for: error).trimmingCharacters(in: .whitespacesAndNewlines)
                let report = ErrorReport(message: message, error: error)
                print((try? encodeJSON(report)) ?? #"{"error":"could not encode the error"}"#)
                FileHandle.standardError.write(Data("error: \(message)\n".utf8))
                Foundation.exit(1)
            }
            exit(withError: error)
        }
    }

    static let configuration = CommandConfiguration(
        commandName: "compress",
        abstract: "A model-compression workbench for transformer language models (CPU, Float32, OpenBLAS).",
        subcommands: [Apply.self, Sweep.self, Import.self, ExportCommand.self, Eval.self, Tokenize.self, Inspect.self,
                      Formats.self, Distill.self, DropLayers.self, Bench.self, BenchTrain.self])
}

/// Runs a command body; on failure prints the error (and with --json a JSON error object: `ErrorReport`, the message
/// and the error's fields) and exits 1. The one place an error's message is formatted for the user.
func reportingErrors(json: Bool, _ body: () throws -> Void) throws {
    do { try body() } catch {
        let message = (error as? DecodingError).map { "invalid JSON: \($0)" }
            ?? (error as? EncodingError).map { "could not encode the report: \($0)" } ?? String(describing: error)
        if json { print(try encodeJSON(ErrorReport(message: message, error: error))) }
        FileHandle.standardError.write(Data("error: \(message)\n".utf8))
        throw ExitCode.failure
    }
}

extension PerplexityProtocol.Kind: ExpressibleByArgument {}
extension ReferenceOptions.Kind: ExpressibleByArgument {}

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Perplexity of a checkpoint on a text or token stream, and with --reference its divergence from a " +
                  "base.",
        discussion: """
            Protocols (--protocol): pinned (default): non-overlapping windows of --window (2048), every position \
            scored, BOS + W-1 tokens each when the tokenizer adds BOS; llamacpp: llama-perplexity's, chunks of \
            --window (512 by default), BOS first when the tokenizer adds one, only the second half of each chunk \
            scored.
            With --reference BASE: mean KL(base || model) per token with percentiles, the reverse KL, the share of \
            positions with the same top-1 token, Δp of the correct token, the PPL ratio and correlations, on the full \
            vocabulary from a reference of the base's hidden states (computed once per base, text and protocol, kept \
            in --cache); --reference-kind topk keeps only the base's top-k (--top-k) and reports KL_k with its bound; \
            alongside runs the base next to the model.
            """)

    @Argument(help: "Checkpoint (.h5).") var checkpoint: String
    @Option(help: "Text file, tokenized with the checkpoint's tokenizer.") var text: String?
    @Option(help: "File of whitespace-separated token ids.") var tokens: String?
    @Option(help: "Scoring protocol: pinned or llamacpp.") var `protocol`: PerplexityProtocol.Kind = .pinned
    @Option(parsing: .unconditional,
            help: "Window length in tokens (default 2048; 512 for --protocol llamacpp).") var window: Int?
    @Option(parsing: .unconditional,
            help: "Score only the first N tokens of the stream (stream tokens; an added BOS does not count).")
    var maxTokens: Int?
    @Option(help: "Override the checkpoint's pre-tokenizer for --text (gpt2, smollm, llama3, qwen2).")
    var preTokenizer: String?
    @Option(help: "Also write the first window's logits (W × V float32, little-endian) to this file.")
    var logitsOut: String?
    @Option(help: "Base checkpoint to measure the divergence from (same vocabulary).") var reference: String?
    @Option(help: """
        How the base's distributions are had: hidden (a reference of its hidden states, exact), topk, alongside.
        """)
    var referenceKind: ReferenceOptions.Kind = .hidden
    @Option(parsing: .unconditional, help: "k of a top-k reference (--reference-kind topk).") var topK: Int?
    @Option(parsing: .unconditional, help: """
        With --reference-kind hidden or alongside: also measure what top-k references of these k (comma-separated) \
        would give on the same positions.
        """)
    var topKStudy: String?
    @Option(help: "Directory of cached base references.") var cache = ".cache/compress"
    @Flag(help: "Neither read nor write cached base references.") var noCache = false
    @Option(help: "Precision of the matrix products: fp32 or bf16 (oneDNN, AMX or AVX512-BF16; float32 accumulation).")
    var precision: Precision = .fp32
    @Flag(help: "Print one JSON object.") var json = false

    var W: Int { window ?? (`protocol` == .llamacpp ? 512 : 2048) }
    var studied: [Int]? {
        guard let s = topKStudy else { return [] }
        let ks = s.split(separator: ",", omittingEmptySubsequences: false).map {
            Int($0.trimmingCharacters(in: .whitespaces))
        }
        guard !ks.isEmpty, ks.allSatisfy({ ($0 ?? 0) >= 1 }) else { return nil }
        return ks.map { $0! }
    }

    func validate() throws {
        guard (text == nil) != (tokens == nil) else {
            throw ValidationError("give exactly one of --text FILE or --tokens FILE")
        }
        guard (2...(1 << 17)).contains(W) else {
            throw ValidationError("--window must lie in 2...\(1 << 17), got \(W)")
        }
        if `protocol` == .llamacpp && W < 4 {
            throw ValidationError("--window must be at least 4 for --protocol llamacpp, got \(W)")
        }
        // One window holds W stream tokens, or W − 1 after a BOS (the protocol, from the checkpoint's tokenizer).
        if let m = maxTokens, m < W - 1 {
            throw ValidationError("--max-tokens \(m) is less than one window of \(W) (\(W - 1) stream tokens after a " +
                                  "BOS)")
        }
        if let k = topK {
            guard (1...(1 << 20)).contains(k) else {
                throw ValidationError("--top-k must lie in 1...\(1 << 20), got \(k)")
            }
            guard referenceKind == .topk else {
                throw ValidationError("--top-k needs --reference BASE --reference-kind topk")
            }
        }
        if reference == nil && referenceKind != .hidden {
            throw ValidationError("--reference-kind needs --reference BASE")
        }
        if topKStudy != nil && (reference == nil || referenceKind == .topk) {
            throw ValidationError("--top-k-study needs --reference BASE with --reference-kind hidden or alongside " +
                                  "(the full vocabulary)")
        }
        if let s = topKStudy, studied == nil {
            throw ValidationError("--top-k-study: expected positive integers separated by commas, got '\(s)'")
        }
    }

    func run() throws {
        try reportingErrors(json: json) {
            try MatrixProduct.select(precision)
            let source: TokenSource = text.map { .text($0) } ?? .tokens(tokens ?? "")
            var ref: ReferenceOptions? = nil
            if let reference {
                ref = ReferenceOptions(base: reference)
                ref!.kind = referenceKind
                ref!.topK = topK ?? BaseReference.defaultTopK
                ref!.cacheDirectory = noCache ? nil : cache
                ref!.topKStudy = studied ?? []
            }
            let r = try Workbench.evaluate(checkpoint: checkpoint, source: source, window: W, maxTokens: maxTokens,
                                           preTokenizer: preTokenizer, logitsOut: logitsOut, progress: true,
                                           protocol: `protocol`, reference: ref)
            if json { print(try encodeJSON(r)) } else {
                let how: String
                if r.firstScored > 0 {
                    how = "llama.cpp's protocol: \(r.windows) chunks of \(r.window)"
                        + (r.bosTokenId.map { ", BOS \($0) first" } ?? ", no BOS")
                        + ", positions \(r.firstScored)..\(r.window - 2) scored"
                } else {
                    how = "\(r.windows) windows of \(r.window)"
                        + (r.bosTokenId.map { ", each BOS \($0) + \(r.window - 1) stream tokens" } ?? ", no BOS")
                }
                print(String(format: "ppl %.4f  nll %.6f  predicted tokens %d  (%@; stream %d tokens)  %.2f s  %.1f " +
                                     "tok/s",
                             r.ppl, r.nll, r.predictedTokens, how, r.streamTokens, r.seconds, r.tokensPerSecond))
                if let d = r.divergence { print(formatDivergence(d), terminator: "") }
            }
        }
    }
}

/// The divergence block of `compress eval --reference` (llama.cpp's figures and ours), one figure per line.
func formatDivergence(_ d: DivergenceReport) -> String {
    let how = d.topK.map { "top-\($0) reference" }
        ?? (d.referenceKind == "alongside"
            ? "full vocabulary, base alongside" : "full vocabulary, hidden-state reference")
    var s = "divergence from \(d.base) (\(how), \(d.positions) positions)\n"
    s += String(format: "  PPL base %.4f  model %.4f  ratio %.5f  mean ln(PPL ratio) %.6f ± %.6f\n", d.pplBase,
                d.pplModel, d.pplRatio,
                d.meanLnPplRatio, d.meanLnPplRatioStandardError)
    s += String(format: "  Cor(NLL per token) %.4f   Cor(ln PPL per window) %.4f\n", d.nllCorrelation,
                d.windowLnPplCorrelation)
    s += String(format: "  mean KLD %.6f ± %.6f", d.kld.mean, d.kld.standardError)
        + (d.topK != nil ? String(format: "  (top-k: true mean within +%.6f)", d.kldBoundMean) : "") + "\n"
    s += String(format: "  max KLD %.6f", d.kld.max)
    for (name, _) in DivergenceReport.Summary.levels {
        s += String(format: "  %@%% %.6f", name, d.kld.percentiles[name] ?? .nan)
    }
    s += String(format: "  min %.6f\n", d.kld.min)
    s += String(format: "  reverse KLD %.6f%@\n", d.reverseKldMean, d.topK != nil ? " (lower bound, top-k)" : "")
    s += String(format: "  same top p %.3f ± %.3f %%\n", 100 * d.sameTopP, 100 * d.sameTopPStandardError)
    for e in d.topKErrors ?? [] {
        s += String(format: "  top-%d reference: mean KLD %.6f (%+.3f %%), bound +%.6f, %d bytes per position (%.4f " +
                            "of 16-bit full)\n",
                    e.k, e.kldMean, 100 * e.relativeError, e.boundMean, e.bytesPerPosition, e.fractionOfFull16Bit)
    }
    s += String(format: "  mean Δp %.3f ± %.3f %%  RMS Δp %.3f %%  max %.3f %%", 100 * d.deltaP.mean,
                100 * d.deltaP.standardError,
                100 * d.deltaP.rms, 100 * d.deltaP.max)
    for (name, _) in DivergenceReport.Summary.levels {
        s += String(format: "  %@%% %.3f", name, 100 * (d.deltaP.percentiles[name] ?? .nan))
    }
    s += String(format: "  min %.3f %%\n", 100 * d.deltaP.min)
    return s
}

struct Import: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Import a GGUF file or a Hugging Face directory (config.json, *.safetensors, tokenizer.json) as a " +
                  "checkpoint.")

    @Argument(help: "GGUF file or Hugging Face model directory.") var source: String
    @Option(name: .shortAndLong, help: "Output checkpoint (.h5), written atomically.") var output: String
    @Option(help: """
        Use this pre-tokenizer (gpt2, smollm, llama3, qwen2; for a SentencePiece tokenizer a spacing rule, e.g. \
        prefix-first) instead of the source's, when it names none or one we do not implement.
        """)
    var preTokenizer: String?
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        try reportingErrors(json: json) {
            let r = try Workbench.importModel(source: source, output: output, preTokenizer: preTokenizer)
            if json { print(try encodeJSON(r)) } else {
                print(String(format: "imported %@ -> %@: %d parameters, %d tensors, %@, tokenizer %@, %.2f s",
                             r.source, r.output, r.parameters, r.tensors, formatBytes(r.outputBytes),
                             r.tokenizer ? "yes" : "no", r.seconds))
                for w in r.warnings { print("warning: \(w)") }
            }
        }
    }
}

extension ExportFormat: ExpressibleByArgument {}
extension ExportDType: ExpressibleByArgument {}
extension RequantizeType: ExpressibleByArgument {}

struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Export a checkpoint for an inference server: a Hugging Face directory (the family's class, or " +
                  "DeciLM) or a GGUF file (the family's architecture, or deci).",
        discussion: """
            Written atomically (built in memory, written beside OUT, renamed into place): a failed export leaves \
            nothing.
            The report lists every tensor's stored type and bytes, and every conversion with loss and its error.
            GGUF: quantized weights are repacked without loss where a ggml type holds them (group 32: q4/q5/q8 \
            symmetric ->
            Q4_0/Q5_0/Q8_0, q4/q5 asymmetric -> Q4_1/Q5_1, f16 -> F16); others are refused unless --requantize names a \
            type.
            """)

    @Argument(help: "Checkpoint (.h5).") var checkpoint: String
    @Option(help: "hf (directory) or gguf (file).") var format: ExportFormat
    @Option(name: .shortAndLong, help: "Output directory (hf) or file (gguf).") var output: String
    @Option(help: "Float type of weights not stored quantized: f32, f16 or bf16 (GGUF norms stay f32).")
    var dtype: ExportDType = .f32
    @Option(help: """
        GGUF only: re-quantize quantized weights that have no lossless ggml type to q4_0, q4_1, q5_0, q5_1, q8_0, f16 \
        or f32 (the error is reported).
        """)
    var requantize: RequantizeType?
    @Option(help: "Model name for the metadata.") var name: String?
    @Flag(help: "Replace an existing output (file, or non-empty directory).") var force = false
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        try reportingErrors(json: json) {
            var o = ExportOptions(format: format, output: output)
            o.dtype = dtype
            o.requantize = requantize
            o.force = force
            o.name = name
            let r = try Exporter.export(checkpoint: checkpoint, options: o)
            if json { print(try encodeJSON(r)); return }
            print(String(format: "exported %@ -> %@: %@ %@, %d tensors, %@, %.2f s", r.checkpoint, r.output, r.format,
                         r.architecture,
                         r.tensors.count, formatBytes(r.bytes), r.seconds))
            var types: [String: Int] = [:]
            for t in r.tensors { types[t.type, default: 0] += 1 }
            print("tensor types: "
                  + types.sorted { $0.key < $1.key }.map { "\($0.key) ×\($0.value)" }.joined(separator: ", "))
            if r.lossy.isEmpty { print("lossless: every exported value equals the checkpoint's") }
            for l in r.lossy.prefix(20) { print("lossy: \(l)") }
            if r.lossy.count > 20 { print("lossy: … \(r.lossy.count - 20) more (see --json)") }
            for w in r.warnings { print("warning: \(w)") }
        }
    }
}

struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Encode a text file with the checkpoint's tokenizer " +
                                                              "and print the ids.")

    @Argument(help: "Checkpoint (.h5).") var checkpoint: String
    @Option(help: "Text file (UTF-8).") var text: String
    @Option(help: "Override the checkpoint's pre-tokenizer (gpt2, smollm, llama3, qwen2).") var preTokenizer: String?
    @Flag(help: "Print one JSON object (with ids, counts and timing).") var json = false

    func run() throws {
        try reportingErrors(json: json) {
            let r = try Workbench.tokenize(checkpoint: checkpoint, textFile: text, preTokenizer: preTokenizer)
            print(json ? try encodeJSON(r) : r.ids.map(String.init).joined(separator: " "))
        }
    }
}

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Describe a checkpoint: config, layers, tensors, " +
                                                              "tokenizer, history.")

    @Argument(help: "Checkpoint (.h5).") var checkpoint: String
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        try reportingErrors(json: json) {
            let r = try Workbench.inspect(checkpoint: checkpoint)
            print(json ? try encodeJSON(r) : r.text, terminator: json ? "\n" : "")
        }
    }
}

struct Formats: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The quantization formats table: bits, group size, bytes per group and bits per weight of every " +
                  "format.")

    @Option(name: .customLong("group-size"), parsing: .unconditional,
            help: "Weights per group (along the input dimension).") var groupSize = 64
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        try reportingErrors(json: json) {
            let r = try Workbench.formats(groupSize: groupSize)
            print(json ? try encodeJSON(r) : r.text, terminator: json ? "\n" : "")
        }
    }
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Forward throughput and sgemm share on a random-weight model (SmolLM2-135M shape by default).")

    @Option(parsing: .unconditional, help: "Window length in tokens.") var window = 2048
    @Option(parsing: .unconditional, help: "Timed windows.") var windows = 1
    @Option(parsing: .unconditional, help: "Decoder layers.") var layers = 30
    @Option(help: "Precision of the matrix products: fp32 or bf16 (oneDNN, AMX or AVX512-BF16; float32 accumulation).")
    var precision: Precision = .fp32
    @Flag(help: "Instead: time each linear-layer product shape (and the LM head) in fp32 and bf16, best of 5.")
    var products = false
    @Flag(help: "Print one JSON object.") var json = false

    func validate() throws {
        guard (2...(1 << 15)).contains(window) else {
            throw ValidationError("--window must lie in 2...\(1 << 15), got \(window)")
        }
        guard (1...1000).contains(windows) else {
            throw ValidationError("--windows must lie in 1...1000, got \(windows)")
        }
        guard (1...256).contains(layers) else { throw ValidationError("--layers must lie in 1...256, got \(layers)") }
    }

    func run() throws {
        try reportingErrors(json: json) {
            try MatrixProduct.select(precision)
            if products {
                let t = Workbench.benchProducts(config: Workbench.smolLM2Config(layers: layers), rows: window)
                if json { print(try encodeJSON(t)); return }
                print("GFLOP/s, best of 5     (m × k · k × n)   OpenBLAS fp32  oneDNN fp32   oneDNN bf16   bf16/fp32")
                for p in t {
                    let shape = "\(p.what) (\(p.m)×\(p.k)·\(p.k)×\(p.n))"
                        .padding(toLength: 34, withPad: " ", startingAt: 0)
                    let bf = p.bf16GflopPerSecond.map {
                        String(format: "%12.1f   %.2f×", $0, $0 / p.fp32GflopPerSecond)
                    }
                    print(shape + String(format: " %12.1f %12.1f", p.fp32GflopPerSecond, p.oneDNNFloat32GflopPerSecond)
                          + (bf ?? "   (no bf16 units)"))
                }
                return
            }
            let r = try Workbench.bench(config: Workbench.smolLM2Config(layers: layers), window: window,
                                        windows: windows)
            print(json ? try encodeJSON(r) : r.text)
        }
    }
}

struct Distill: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Distill a student checkpoint from a teacher (KL on logits, optional CE and intermediate losses; " +
                  "AdamW).",
        discussion: """
            Windows are drawn deterministically from --train; the state (student, AdamW moments, step) is saved every
            --save-every steps to OUT.state.h5 and --resume continues from it to the same final weights. At the end the
            teacher and the student are evaluated on --test (before too, with --eval-before) and the student is written
            to -o atomically.
            """)

    @Option(help: "Teacher checkpoint (.h5).") var teacher: String
    @Option(help: "Student checkpoint (.h5).") var student: String
    @Option(name: .shortAndLong, help: "Output student checkpoint (.h5).") var output: String
    @Option(parsing: .unconditional, help: "Optimizer steps.") var steps: Int
    @Option(parsing: .unconditional, help: "Windows per micro-batch.") var batch = 4
    @Option(parsing: .unconditional, help: "Tokens per window.") var window = 512
    @Option(parsing: .unconditional, help: "Micro-batches accumulated per step.") var accumulation = 1
    @Option(parsing: .unconditional, help: "Peak learning rate.") var lr = 1e-4
    @Option(parsing: .unconditional, help: "Learning-rate floor as a fraction of --lr.") var minLrRatio = 0.1
    @Option(parsing: .unconditional, help: "Warm-up steps.") var warmup = 10
    @Option(help: "Decay after warm-up: cosine, linear or constant.") var decay = "cosine"
    @Option(parsing: .unconditional, help: "AdamW weight decay of matrices.") var weightDecay = 0.0
    @Option(parsing: .unconditional, help: "AdamW beta1.") var beta1 = 0.9
    @Option(parsing: .unconditional, help: "AdamW beta2.") var beta2 = 0.95
    @Option(parsing: .unconditional, help: "Clip the global gradient norm to this value (0 = off).") var clip = 1.0
    @Option(parsing: .unconditional, help: "Softmax temperature of the KL loss.") var temperature = 1.0
    @Option(parsing: .unconditional, help: "Weight of KL(teacher || student) on logits.") var klWeight = 1.0
    @Option(parsing: .unconditional, help: "Weight of the LM cross-entropy on the training tokens.") var ceWeight = 0.0
    @Option(parsing: .unconditional, help: "Intermediate-state pairs 'student:teacher,...' (0-based layer outputs).")
    var intermediate: String?
    @Option(help: "Intermediate loss: cosine or mse.") var intermediateLoss = "cosine"
    @Option(parsing: .unconditional, help: "Weight of the intermediate loss.") var intermediateWeight = 1.0
    @Flag(help: "Scale the intermediate loss to the logit loss each step.") var balance = false
    @Option(help: """
        Parameter groups as JSON: [{\"match\": \"glob\", \"lr\": x, \"weight_decay\": y, \"frozen\": true}].
        """)
    var groups: String?
    @Option(help: "Freeze parameters matching these comma-separated globs (e.g. 'model.embed_tokens.*').")
    var freeze: String?
    @Option(parsing: .unconditional, help: "Seed of the window draws (0...2^64-1).") var seed: UInt64 = 0
    @Option(help: "Training text (tokenized with the teacher's tokenizer).") var train = "data/wiki.train.txt"
    @Option(help: "Test text for the final perplexities.") var test = "data/wiki.test.txt"
    @Option(parsing: .unconditional, help: "Evaluation window.") var evalWindow = 2048
    @Option(parsing: .unconditional,
            help: "Evaluate on the first N test tokens only (0 = skip evaluation).") var evalTokens: Int?
    @Flag(inversion: .prefixedNo, help: "Also evaluate the student before training.") var evalBefore = true
    @Option(parsing: .unconditional, help: "Progress line every N steps.") var logEvery = 10
    @Option(parsing: .unconditional, help: "Save the training state every N steps (0 = never).") var saveEvery = 50
    @Option(help: "Training-state file (default OUTPUT.state.h5).") var state: String?
    @Flag(help: "Resume from the training state.") var resume = false
    @Option(parsing: .unconditional, help: .hidden) var killAfterStep: Int?
    @Flag(help: "Allow -o to name the student or the teacher (replacing it).") var force = false
    @Flag(help: """
        Train factorized weights with the Straight-Through Factorizer (DSFormer): a dense latent S, its top-s entries \
        per column in the forward, the gradient passed straight through.
        """)
    var stf = false
    @Option(help: "Precision of the matrix products: fp32 or bf16 (oneDNN; float32 accumulation and master weights).")
    var precision: Precision = .fp32
    @Flag(help: "Print one JSON object.") var json = false

    func validate() throws {
        guard (2...(1 << 17)).contains(evalWindow) else {
            throw ValidationError("--eval-window must lie in 2...\(1 << 17), got \(evalWindow)")
        }
        if let e = evalTokens, e < 0 {
            throw ValidationError("--eval-tokens must be >= 0 (0 = skip evaluation), got \(e)")
        }
        guard logEvery >= 1 else { throw ValidationError("--log-every must be at least 1, got \(logEvery)") }
        guard saveEvery >= 0 else { throw ValidationError("--save-every must be >= 0 (0 = never), got \(saveEvery)") }
        if let k = killAfterStep, k < 1 { throw ValidationError("--kill-after-step must be at least 1, got \(k)") }
        try validateTraining()
    }

    /// The training settings' ranges (`DistillConfig.validate`'s: its `integerLimits`, `realLimits`, lr and the betas),
    /// named by their options and as that check names them, before any file is read.
    func validateTraining() throws {
        typealias C = DistillConfig
        let c = numericSettings()
        func option(_ s: C.Setting) -> String { "--" + s.rawValue.replacingOccurrences(of: "_", with: "-") }
        for l in C.integerLimits where !l.range.contains(c[keyPath: l.value]) {
            throw ValidationError("\(option(l.setting)) must lie in \(l.range.lowerBound)...\(l.range.upperBound), " +
                                  "got \(c[keyPath: l.value])")
        }
        guard lr > 0 && lr <= C.maxLR else { throw ValidationError("--lr must lie in (0, \(C.maxLR)], got \(lr)") }
        for l in C.realLimits where !l.range.contains(c[keyPath: l.value]) {
            throw ValidationError("\(option(l.setting)): \(l.name) must lie " +
                                  "in \(l.range.lowerBound)...\(l.range.upperBound), got \(c[keyPath: l.value])")
        }
        for (name, v) in [("--beta1", beta1), ("--beta2", beta2)] where !(0..<1).contains(v) {
            throw ValidationError("\(name) must lie in [0, 1), got \(v)")
        }
    }

    /// The options' numeric training settings (every setting but the decay, the intermediate pairs, their loss and
    /// the groups, which are parsed from text).
    func numericSettings() -> DistillConfig {
        var c = DistillConfig()
        c.steps = steps; c.batch = batch; c.window = window; c.accumulation = accumulation; c.seed = seed
        c.lr = lr; c.minLRRatio = minLrRatio; c.warmup = warmup
        c.weightDecay = weightDecay; c.beta1 = beta1; c.beta2 = beta2; c.clip = clip
        c.temperature = temperature; c.klWeight = klWeight; c.ceWeight = ceWeight
        c.intermediateWeight = intermediateWeight; c.balance = balance
        return c
    }

    func run() throws {
        try reportingErrors(json: json) {
            try MatrixProduct.select(precision)
            var o = DistillOptions(teacher: teacher, student: student, output: output)
            o.force = force
            var c = numericSettings()
            guard let d = LRSchedule.Decay(rawValue: decay) else {
                throw WorkbenchError("--decay: expected cosine, linear or constant, got '\(decay)'")
            }
            c.decay = d
            if let intermediate {
                c.intermediate = try intermediate.split(separator: ",").map { pair in
                    let p = pair.split(separator: ":")
                    guard p.count == 2, let s = Int(p[0]), let t = Int(p[1]) else {
                        throw WorkbenchError("--intermediate: expected 'student:teacher' layer pairs, got '\(pair)'")
                    }
                    return DistillConfig.LayerPair(student: s, teacher: t)
                }
            }
            guard let il = DistillConfig.FeatureLoss(rawValue: intermediateLoss) else {
                throw WorkbenchError("--intermediate-loss: expected cosine or mse, got '\(intermediateLoss)'")
            }
            c.intermediateLoss = il
            if let groups {
                c.groups = try ParameterGroup.strictList(groups, source: "--groups")
            }
            if let freeze {
                c.groups = freeze.split(separator: ",").map { ParameterGroup(match: String($0), frozen: true) }
                    + c.groups
            }
            o.config = c
            o.trainText = train
            o.testText = test
            o.evalWindow = evalWindow
            o.evalTokens = evalTokens
            o.evalBefore = evalBefore
            o.logEvery = logEvery
            o.saveEvery = saveEvery
            o.statePath = state
            o.resume = resume
            o.killAfterStep = killAfterStep
            o.stf = stf
            let r = try Workbench.distill(o)
            if json { print(try encodeJSON(r)) } else {
                print(String(format: "distilled %@ -> %@: %d steps, %d tokens, %.1f s, %.0f tok/s, loss %.4f -> %.4f",
                             r.student, r.output, r.steps, r.steps * r.tokensPerStep, r.seconds, r.tokensPerSecond,
                             r.firstLoss, r.finalLoss))
                if let t = r.teacherPpl, let s = r.studentPpl {
                    print(String(format: "ppl teacher %.4f  student before %@  after %.4f  retention %.4f",
                                 t, r.studentPplBefore.map { String(format: "%.4f", $0) } ?? "-", s,
                                 r.retention ?? .nan))
                }
            }
        }
    }
}

struct Apply: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a compression recipe (passes, distill, eval stages) on a checkpoint; see recipes/README.md.")

    @Argument(help: "Recipe (.json).") var recipe: String
    @Argument(help: "Base checkpoint (.h5); overrides the recipe's 'base'.") var checkpoint: String?
    @Option(name: .shortAndLong, help: "Output checkpoint (.h5); overrides the recipe's 'output'.") var output: String?
    @Option(help: "Directory of cached calibration statistics.") var cache = ".cache/compress"
    @Flag(help: "Neither read nor write cached calibration statistics.") var noCache = false
    @Flag(help: "Continue an interrupted distill stage from its saved state.") var resume = false
    @Flag(help: "Print one JSON object.") var json = false
    @Flag(help: "Allow the output to be the base checkpoint (replacing it).") var force = false
    @Option(help: "Precision of the matrix products (fp32 or bf16); overrides the recipe's 'precision'.")
    var precision: Precision?
    @Option(parsing: .unconditional, help: .hidden) var killAfterStep: Int?

    func validate() throws {
        if let k = killAfterStep, k < 1 { throw ValidationError("--kill-after-step must be at least 1, got \(k)") }
    }

    func run() throws {
        try reportingErrors(json: json) {
            var o = ApplyOptions(recipe: recipe)
            o.force = force
            o.checkpoint = checkpoint
            o.output = output
            o.cacheDirectory = noCache ? nil : cache
            o.resume = resume
            o.killAfterStep = killAfterStep
            o.precision = precision
            let r = try Workbench.apply(o)
            if json { print(try encodeJSON(r)); return }
            print("\(r.recipe): \(r.base) -> \(r.output)  (\(formatDuration(r.seconds)))")
            for s in r.stages {
                var line = String(format: "  %2d %@ %11d -> %11d params  %@ -> %@  %8.1fs", s.index,
                                  s.stage.padding(toLength: 9, withPad: " ", startingAt: 0), s.parametersBefore,
                                  s.parametersAfter, formatBytes(s.bytesBefore), formatBytes(s.bytesAfter), s.seconds)
                if let p = s.ppl { line += String(format: "  ppl %.4f  retention %.4f", p, s.retention ?? .nan) }
                print(line)
            }
            var total = "  parameters \(r.parametersBefore) -> \(r.parametersAfter), \(formatBytes(r.bytesBefore)) " +
                        "-> \(formatBytes(r.bytesAfter))"
            if let b = r.pplBefore, let a = r.pplAfter {
                total += String(format: "; ppl %.4f -> %.4f, retention %.4f", b, a, r.retention ?? .nan)
            }
            print(total)
            print(beforeAfter(r), terminator: "")
        }
    }
}

/// The before/after table of `compress apply`: size, bits per weight, PPL and its ratio to the base's, mean KLD and
/// same-top-1 share (the base against itself: 0 and 100 %), and the files an export stage wrote.
func beforeAfter(_ r: ApplyReport) -> String {
    func bits(_ bytes: Int, _ params: Int) -> String {
        String(format: "%.2f", 8 * Double(bytes) / Double(max(params, 1)))
    }
    func cell(_ x: Double?, _ f: String) -> String { x.map { String(format: f, $0) } ?? "-" }
    let rows = [
        ["", "size", "bits/weight", "PPL", "PPL ratio", "mean KLD", "KLD p99", "same top-1"],
        ["before (base)", formatBytes(r.bytesBefore), bits(r.bytesBefore, r.parametersBefore),
         cell(r.pplBefore, "%.4f"),
         r.pplBefore == nil ? "-" : "1.0000", r.kldAfter == nil ? "-" : "0", r.kldAfter == nil ? "-" : "0",
         r.kldAfter == nil ? "-" : "100.00 %"],
        ["after", formatBytes(r.bytesAfter), bits(r.bytesAfter, r.parametersAfter), cell(r.pplAfter, "%.4f"),
         cell(r.pplAfter.flatMap { a in r.pplBefore.map { a / $0 } }, "%.4f"), cell(r.kldAfter, "%.5f"),
         cell(r.kldP99After, "%.5f"),
         cell(r.sameTopPAfter.map { 100 * $0 }, "%.2f %%")],
    ]
    let widths = (0..<rows[0].count).map { c in rows.map { $0[c].count }.max()! }
    var s = ""
    if r.pplBefore != nil {
        s += "  (\(r.evalProtocol ?? "pinned") " +
             "protocol, \(r.evalTokens.map { "\($0) test tokens" } ?? "the test text"); stored bytes "
            + String(format: "%.1f %% of the base's)\n", 100 * Double(r.bytesAfter) / Double(max(r.bytesBefore, 1)))
        for row in rows {
            s += "  "
                + zip(row, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: "  ")
                + "\n"
        }
    }
    for st in r.stages where st.stage == "export" {
        if let o = st.diagnostics.objectValue, let files = o["files"]?.arrayValue, let bytes = o["bytes"]?.intValue {
            s += "  exported \(files.compactMap(\.stringValue).joined(separator: ", ")) " +
                 "(\(formatBytes(bytes)), \(o["format"]?.stringValue ?? ""))\n"
        }
    }
    return s
}

struct DropLayers: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "drop-layers",
                                                    abstract: "Remove decoder layers from a checkpoint.")

    @Argument(help: "Checkpoint (.h5).") var checkpoint: String
    @Option(parsing: .unconditional, help: "Comma-separated 0-based layer indices to remove.") var drop: String
    @Option(name: .shortAndLong, help: "Output checkpoint (.h5).") var output: String
    @Flag(help: "Allow -o to name the input checkpoint (replacing it).") var force = false
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        try reportingErrors(json: json) {
            let layers = try drop.split(separator: ",").map { s -> Int in
                guard let i = Int(s.trimmingCharacters(in: .whitespaces)), i >= 0 else {
                    throw WorkbenchError("--drop: '\(s)' is not a layer index (expected 0-based indices, 0 or more)")
                }
                return i
            }
            let r = try Workbench.dropLayers(checkpoint: checkpoint, drop: layers, output: output, force: force)
            if json {
                print(try encodeJSON(["parameters_before": r.before, "parameters_after": r.after, "layers": r.layers]))
            } else {
                print("\(checkpoint) -> \(output): \(r.layers) layers, \(r.before) -> \(r.after) parameters")
            }
        }
    }
}

struct BenchTrain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-train",
        abstract: "Training throughput (forward + backward + clip + AdamW) on SmolLM2-shaped weights (random, or " +
                  "--checkpoint).")

    @Option(help: "Checkpoint whose weights to train (default: random SmolLM2-135M shape).") var checkpoint: String?
    @Option(parsing: .unconditional, help: "Windows per step.") var batch = 4
    @Option(parsing: .unconditional, help: "Tokens per window.") var window = 512
    @Option(parsing: .unconditional, help: "Timed steps.") var steps = 5
    @Option(parsing: .unconditional, help: "Untimed warm-up steps.") var warmup = 2
    @Option(help: "Precision of the matrix products: fp32 or bf16 (oneDNN; float32 accumulation and master weights).")
    var precision: Precision = .fp32
    @Flag(help: "Print one JSON object.") var json = false

    func validate() throws {
        guard (1...64).contains(batch) else { throw ValidationError("--batch must lie in 1...64, got \(batch)") }
        guard (2...(1 << 14)).contains(window) else {
            throw ValidationError("--window must lie in 2...\(1 << 14), got \(window)")
        }
        guard (1...10_000).contains(steps), (0...10_000).contains(warmup) else {
            throw ValidationError("--steps must lie in 1...10000 and --warmup in 0...10000, got \(steps) and \(warmup)")
        }
    }

    func run() throws {
        try reportingErrors(json: json) {
            try MatrixProduct.select(precision)
            let r = try Workbench.benchTrain(checkpoint: checkpoint, batch: batch, window: window, steps: steps,
                                             warmup: warmup)
            print(json ? try encodeJSON(r) : r.text)
        }
    }
}

extension Precision: ExpressibleByArgument {}
