// libFuzzer harness: a Hugging Face tokenizer.json (model, normalizer, pre-tokenizer, added tokens, post-processor)
// as `import` reads it, then the tokenizer it yields on a short text. Seeds: Fuzz/corpus/tokenizer and the
// tokenizer.json test fixtures (README, "Fuzzing").
import FuzzSupport
@testable import Import
import Workbench

let sample = "Hello, world! 123 émigré — 日本語\n\tTabs  and  spaces <s></s> <|endoftext|>"

func fuzzOne(_ bytes: UnsafeRawBufferPointer) {
    let path = FuzzSupport.file("tokenizer.json", bytes)
    guard let spec = try? HFTokenizerJSON.read(path), let t = try? Workbench.tokenizer(spec, path: path) else { return }
    _ = t.decode(t.encode(sample))
}

#if FUZZING
/// Runs once before any input: globals are made here, so that libFuzzer's per-input leak check does not count them.
@_cdecl("LLVMFuzzerInitialize")
public func LLVMFuzzerInitialize(_ argc: OpaquePointer?, _ argv: OpaquePointer?) -> CInt {
    _ = FuzzSupport.scratch
    _ = sample
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func LLVMFuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    fuzzOne(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
#else
@main enum Replay {
    static func main() { FuzzSupport.replay(Array(CommandLine.arguments.dropFirst()), fuzzOne) }
}
#endif
