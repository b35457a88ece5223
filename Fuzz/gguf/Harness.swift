// libFuzzer harness: GGUF import (header, metadata, tensor table, dequantization, tokenizer) and the tokenizer
// it yields, run on a short text. Seeds: Fuzz/corpus/gguf and the GGUF test fixtures (README, "Fuzzing").
import FuzzSupport
import Import
import Workbench

let sample = "Hello, world! 123 émigré — 日本語\n\tTabs  and  spaces <s></s>"

func fuzzOne(_ bytes: UnsafeRawBufferPointer) {
    let path = FuzzSupport.file("input.gguf", bytes)
    guard let checkpoint = try? Importer.fromGGUF(path: path) else { return }
    if let spec = checkpoint.tokenizer, let t = try? Workbench.tokenizer(spec, path: path) {
        _ = t.decode(t.encode(sample))
    }
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
