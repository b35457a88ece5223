// libFuzzer harness: a checkpoint's metadata as `Checkpoint.read` sees it. The input is up to five fields
// separated by NUL bytes, written over a copy of a real quantized checkpoint fixture
// (Tests/Fixtures/tiny-llama-sym-before-full-range.h5): the root attributes `config`, `history` and
// `quantization` (JSON text), the `tokenizer` dataset (JSON bytes) and `format_version` (an int64 from the
// field's first 8 bytes, little-endian). Fields absent keep the fixture's value; an empty field removes it.
// What reads successfully then runs one 4-token forward and its tokenizer on a short text. Fuzzing the raw
// HDF5 bytes instead would mostly exercise libhdf5's own parser, which is not instrumented and not ours.
// Seeds: Fuzz/corpus/checkpoint (`fuzz-checkpoint --seeds DIR` writes the fixture's own fields).
import CHDF5
@testable import Checkpoint
import Foundation
import FuzzSupport
import Model
import Workbench

let basePath = FuzzSupport.fixture("tiny-llama-sym-before-full-range.h5")
// An array, not `Data`: Data keeps its storage behind an enum whose tag bits hide the pointer from LeakSanitizer,
// which then reports the global as leaked.
let base: [UInt8] = {
    guard let d = FileManager.default.contents(atPath: basePath) else { fatalError("fixture \(basePath) is missing") }
    return Array(d)
}()
let fields = ["config", "history", "quantization", "tokenizer", "format_version"]

/// Replaces (or with empty bytes removes) one field in the open file `fid`.
func set(_ fid: hid_t, field: String, _ bytes: [UInt8]) {
    if field == "tokenizer" {
        if H5Lexists(fid, field, h5p_default()) > 0 { H5Ldelete(fid, field, h5p_default()) }
        guard !bytes.isEmpty else { return }
        var dims = [hsize_t(bytes.count)]
        let space = H5Screate_simple(1, &dims, nil)
        defer { H5Sclose(space) }
        let d = H5Dcreate2(fid, field, h5_std_u8le(), space, h5p_default(), h5p_default(), h5p_default())
        guard d >= 0 else { return }
        defer { H5Dclose(d) }
        _ = bytes.withUnsafeBytes {
            H5Dwrite(d, h5_native_uint8(), h5s_all(), h5s_all(), h5p_default(), $0.baseAddress)
        }
        return
    }
    if H5Aexists(fid, field) > 0 { H5Adelete(fid, field) }
    guard !bytes.isEmpty else { return }
    let space = H5Screate(H5S_SCALAR)
    defer { H5Sclose(space) }
    if field == "format_version" {
        var v: Int64 = 0
        for (i, b) in bytes.prefix(8).enumerated() { v |= Int64(b) << (8 * i) }
        let a = H5Acreate2(fid, field, h5_std_i64le(), space, h5p_default(), h5p_default())
        guard a >= 0 else { return }
        defer { H5Aclose(a) }
        H5Awrite(a, h5_native_int64(), &v)
        return
    }
    let type = H5Tcopy(h5_c_s1())
    defer { H5Tclose(type) }
    H5Tset_size(type, h5t_variable())
    H5Tset_cset(type, H5T_CSET_UTF8)
    let a = H5Acreate2(fid, field, type, space, h5p_default(), h5p_default())
    guard a >= 0 else { return }
    defer { H5Aclose(a) }
    // A C string ends at the first NUL; the split already made every field NUL-free.
    var text = bytes
    text.append(0)
    text.withUnsafeBufferPointer { buffer in
        buffer.baseAddress!.withMemoryRebound(to: CChar.self, capacity: buffer.count) { cstr in
            var p: UnsafePointer<CChar>? = cstr
            _ = H5Awrite(a, type, &p)
        }
    }
}

func fuzzOne(_ bytes: UnsafeRawBufferPointer) {
    let parts = FuzzSupport.split(bytes, parts: fields.count)
    let path = base.withUnsafeBytes { FuzzSupport.file("checkpoint.h5", $0) }
    _ = H5File.isHDF5(path)  // initializes the library as the reader does (errors silenced)
    let fid = H5Fopen(path, 1 /* H5F_ACC_RDWR */, h5p_default())
    guard fid >= 0 else { fatalError("the fixture copy \(path) does not open for writing") }
    for (field, value) in zip(fields, parts) { set(fid, field: field, value) }
    H5Fclose(fid)
    guard let checkpoint = try? Checkpoint.read(path) else { return }
    let model = checkpoint.model
    let ids = (0..<4).map { Int32($0 % max(1, model.config.vocabSize)) }
    _ = TransformerDecoder(model: model, window: ids.count).logits(ids)
    if let spec = checkpoint.tokenizer, let t = try? Workbench.tokenizer(spec, path: path) {
        _ = t.decode(t.encode("Hello, world! 123 émigré"))
    }
}

/// Writes the fixture's own fields, NUL-separated, as the seed `DIR/fixture`.
func writeSeeds(_ dir: String) throws {
    let file = try H5File.openReadOnly(basePath)
    var seed: [UInt8] = []
    for field in fields.prefix(3) { seed += Array(try file.string(field).utf8) + [0] }
    let info = try file.datasetInfo("tokenizer")
    var tokenizer = [UInt8](repeating: 0, count: info.shape.reduce(1, *))
    try tokenizer.withUnsafeMutableBytes {
        try file.read("tokenizer", memType: h5_native_uint8(), into: $0.baseAddress!)
    }
    seed += tokenizer + [0]
    var version = Int64(try file.int("format_version"))
    seed += withUnsafeBytes(of: &version) { Array($0) }
    try Data(seed).write(to: URL(fileURLWithPath: dir + "/fixture"))
}

#if FUZZING
/// Runs once before any input: globals are made here, so that libFuzzer's per-input leak check does not count them.
@_cdecl("LLVMFuzzerInitialize")
public func LLVMFuzzerInitialize(_ argc: OpaquePointer?, _ argv: OpaquePointer?) -> CInt {
    _ = FuzzSupport.scratch
    _ = base
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
