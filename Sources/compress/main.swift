import ArgumentParser
import Foundation
import Workbench

@main
struct Compress: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compress",
        abstract: "A model-compression workbench for transformer language models (CPU, Float32, OpenBLAS).",
        subcommands: [Import.self, Eval.self, Tokenize.self, Inspect.self, Bench.self])
}

/// Runs a command body; on failure prints the error (and a JSON error object with --json) and exits 1.
func reportingErrors(json: Bool, _ body: () throws -> Void) throws {
    do { try body() } catch {
        let message = String(describing: error)
        if json { print(encodeJSON(["error": message])) }
        FileHandle.standardError.write(Data("error: \(message)\n".utf8))
        throw ExitCode.failure
    }
}

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Perplexity of a checkpoint on a text or token stream (non-overlapping windows, no BOS).")

    @Argument(help: "Checkpoint (.h5).") var checkpoint: String
    @Option(help: "Text file, tokenized with the checkpoint's tokenizer.") var text: String?
    @Option(help: "File of whitespace-separated token ids.") var tokens: String?
    @Option(help: "Window length in tokens.") var window = 2048
    @Option(help: "Score only the first N tokens of the stream.") var maxTokens: Int?
    @Option(help: "Override the checkpoint's pre-tokenizer for --text (gpt2, smollm, llama3).") var preTokenizer: String?
    @Option(help: "Also write the first window's logits (W × V float32, little-endian) to this file.") var logitsOut: String?
    @Flag(help: "Print one JSON object.") var json = false

    func validate() throws {
        guard (text == nil) != (tokens == nil) else { throw ValidationError("give exactly one of --text FILE or --tokens FILE") }
        guard window >= 2 else { throw ValidationError("--window must be at least 2, got \(window)") }
        if let m = maxTokens, m < window { throw ValidationError("--max-tokens \(m) is less than one window of \(window)") }
    }

    func run() throws {
        try reportingErrors(json: json) {
            let source: TokenSource = text.map { .text($0) } ?? .tokens(tokens ?? "")
            let r = try Workbench.evaluate(checkpoint: checkpoint, source: source, window: window, maxTokens: maxTokens,
                                           preTokenizer: preTokenizer, logitsOut: logitsOut, progress: true)
            if json { print(encodeJSON(r)) } else {
                print(String(format: "ppl %.4f  nll %.6f  predicted tokens %d  (%d windows of %d; stream %d tokens)  %.2f s  %.1f tok/s",
                             r.ppl, r.nll, r.predictedTokens, r.windows, r.window, r.streamTokens, r.seconds, r.tokensPerSecond))
            }
        }
    }
}

struct Import: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Import a GGUF file or a Hugging Face directory (config.json, *.safetensors, tokenizer.json) as a checkpoint.")

    @Argument(help: "GGUF file or Hugging Face model directory.") var source: String
    @Option(name: .shortAndLong, help: "Output checkpoint (.h5), written atomically.") var output: String
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        try reportingErrors(json: json) {
            let r = try Workbench.importModel(source: source, output: output)
            if json { print(encodeJSON(r)) } else {
                print(String(format: "imported %@ -> %@: %d parameters, %d tensors, %@, tokenizer %@, %.2f s",
                             r.source, r.output, r.parameters, r.tensors, formatBytes(r.outputBytes), r.tokenizer ? "yes" : "no", r.seconds))
            }
        }
    }
}

struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Encode a text file with the checkpoint's tokenizer and print the ids.")

    @Argument(help: "Checkpoint (.h5).") var checkpoint: String
    @Option(help: "Text file (UTF-8).") var text: String
    @Option(help: "Override the checkpoint's pre-tokenizer (gpt2, smollm, llama3).") var preTokenizer: String?
    @Flag(help: "Print one JSON object (with ids, counts and timing).") var json = false

    func run() throws {
        try reportingErrors(json: json) {
            let r = try Workbench.tokenize(checkpoint: checkpoint, textFile: text, preTokenizer: preTokenizer)
            print(json ? encodeJSON(r) : r.ids.map(String.init).joined(separator: " "))
        }
    }
}

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Describe a checkpoint: config, layers, tensors, tokenizer, history.")

    @Argument(help: "Checkpoint (.h5).") var checkpoint: String
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        try reportingErrors(json: json) {
            let r = try Workbench.inspect(checkpoint: checkpoint)
            print(json ? encodeJSON(r) : r.text, terminator: json ? "\n" : "")
        }
    }
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Forward throughput and sgemm share on a random-weight model (SmolLM2-135M shape by default).")

    @Option(help: "Window length in tokens.") var window = 2048
    @Option(help: "Timed windows.") var windows = 1
    @Option(help: "Decoder layers.") var layers = 30
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        try reportingErrors(json: json) {
            let r = try Workbench.bench(config: Workbench.smolLM2Config(layers: layers), window: window, windows: windows)
            print(json ? encodeJSON(r) : r.text)
        }
    }
}
