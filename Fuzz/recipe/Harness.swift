// libFuzzer harness: the recipe reader (strict keys, ranges, stage order) with every stage this build registers.
// Seeds: Fuzz/corpus/recipe and recipes/*.json (README, "Fuzzing").
import FuzzSupport
import Recipes
import Workbench

let registry = StageRegistry.standard()

func fuzzOne(_ bytes: UnsafeRawBufferPointer) {
    let path = FuzzSupport.file("recipe.json", bytes)
    _ = try? Recipe.read(path, registry: registry)
    _ = try? Recipe.read(path, registry: registry, baseKinds: [.dense, .quantized])
}

#if FUZZING
/// Runs once before any input: globals are made here, so that libFuzzer's per-input leak check does not count them.
@_cdecl("LLVMFuzzerInitialize")
public func LLVMFuzzerInitialize(_ argc: OpaquePointer?, _ argv: OpaquePointer?) -> CInt {
    _ = FuzzSupport.scratch
    _ = registry
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
