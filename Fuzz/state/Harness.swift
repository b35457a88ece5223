// libFuzzer harness: a distillation training state (`distill --resume`, MaskLLM / VTrans / DSFormer training)
// as `Distillation.loadState` reads it: the tensor archive, its JSON metadata and every check against the run
// (settings, student, step, inputs, tensors). Teacher and student are the tiny Llama fixture; the run is 4 steps
// of batch 1 x window 8 training two norms. What loads then takes one training step (a state that loads must
// train).
// Seeds: Fuzz/corpus/state (`fuzz-state --seeds DIR` writes the states after 0 and 2 steps).
import Checkpoint
import Foundation
import FuzzSupport
import Model
import Training

let model: DecoderModel = {
    do { return try Checkpoint.read(FuzzSupport.fixture("tiny-llama.h5")).model } catch { fatalError("\(error)") }
}()
let config: DistillConfig = {
    var c = DistillConfig()
    c.steps = 4
    c.batch = 1
    c.window = 8
    c.warmup = 1
    // Two norms train, the rest is frozen: the state stays about 2 KB, small enough to mutate quickly.
    c.groups = [ParameterGroup(match: "model.norm.weight"),
                ParameterGroup(match: "model.layers.1.input_layernorm.weight"),
                ParameterGroup(match: "*", frozen: true)]
    return c
}()
let tokens = (0..<64).map { Int32(($0 * 7) % model.config.vocabSize) }

func run() -> Distiller {
    do { return try Distiller(teacher: model, student: model.copy(), config: config, trainTokens: tokens) } catch {
        fatalError("the fuzz run's own settings are refused: \(error)")
    }
}

func fuzzOne(_ bytes: UnsafeRawBufferPointer) {
    let path = FuzzSupport.file("state.bin", bytes)
    let d = run()
    guard (try? d.loadState(from: path)) != nil else { return }
    if d.step < config.steps { _ = d.trainStep() }
}

func writeSeeds(_ dir: String) throws {
    let d = run()
    try d.saveState(to: dir + "/step0")
    _ = d.trainStep()
    _ = d.trainStep()
    try d.saveState(to: dir + "/step2")
}

#if FUZZING
/// Runs once before any input: globals are made here, so that libFuzzer's per-input leak check does not count them.
@_cdecl("LLVMFuzzerInitialize")
public func LLVMFuzzerInitialize(_ argc: OpaquePointer?, _ argv: OpaquePointer?) -> CInt {
    _ = FuzzSupport.scratch
    _ = model; _ = config; _ = tokens
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func LLVMFuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    fuzzOne(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
#else
@main enum Replay {
    static func main() throws {
        let args = Array(CommandLine.arguments.dropFirst())
        if args.first == "--seeds", args.count == 2 { try writeSeeds(args[1]); return }
        FuzzSupport.replay(args, fuzzOne)
    }
}
#endif
