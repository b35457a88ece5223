// libFuzzer harness: a safetensors file's header (JSON, dtypes, shapes, offsets) and every tensor it lists,
// read as float32. Seeds: Fuzz/corpus/safetensors and the safetensors test fixtures (README, "Fuzzing").
import FuzzSupport
import Safetensors

func fuzzOne(_ bytes: UnsafeRawBufferPointer) {
    let path = FuzzSupport.file("input.safetensors", bytes)
    guard let file = try? SafetensorsFile(path: path) else { return }
    for name in file.tensorNames { _ = try? file.floats(name) }
}

#if FUZZING
/// Runs once before any input: globals are made here, so that libFuzzer's per-input leak check does not count them.
@_cdecl("LLVMFuzzerInitialize")
public func LLVMFuzzerInitialize(_ argc: OpaquePointer?, _ argv: OpaquePointer?) -> CInt {
    _ = FuzzSupport.scratch
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
