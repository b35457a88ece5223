import Foundation
import Model
import TensorCore
import XCTest
@testable import Checkpoint

final class CheckpointTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("ckpt-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    func path(_ name: String) -> String { dir.appendingPathComponent(name).path }

    let config = ModelConfig(vocabSize: 32, hiddenSize: 16, intermediateSize: 24, numHiddenLayers: 2, numAttentionHeads: 4,
                             numKeyValueHeads: 2, ropeTheta: 500, tieWordEmbeddings: false)

    func sample() -> Checkpoint {
        let tok = TokenizerSpec(model: "gpt2", pre: "smollm", tokens: ["a", "b", "ab", "Ġ", "é"], merges: ["a b"],
                                tokenTypes: [1, 1, 1, 1, 1], bosTokenID: 0, eosTokenID: 1)
        return Checkpoint(model: DecoderModel.random(config: config, seed: 3), tokenizer: tok,
                          history: [.object(["kind": .string("test"), "n": .int(1)])])
    }

    /// Writes a file tensor by tensor, bypassing the checkpoint writer, to make broken files.
    func writeRaw(_ p: String, format: String = CheckpointFormat.name, version: Int = CheckpointFormat.version,
                  config: JSONValue? = nil, tensors: [(String, [Int], Bool)]) throws {
        let f = try H5File.create(p)
        try f.setString("format", format)
        try f.setInt("format_version", version)
        try f.setString("config", (config ?? self.config.json).text)
        try f.createGroup("tensors")
        for (name, shape, asDouble) in tensors {
            let n = shape.reduce(1, *)
            if asDouble {
                let v = [Double](repeating: 1, count: n)
                try v.withUnsafeBytes { try f.write("tensors/" + name, shape: shape, fileType: h5DoubleType, memType: h5DoubleType, data: $0.baseAddress!) }
            } else {
                let v = [Float](repeating: 1, count: n)
                try v.withUnsafeBytes { try f.write("tensors/" + name, shape: shape, fileType: H5Types.float32File, memType: H5Types.float32, data: $0.baseAddress!) }
            }
        }
        try f.close()
    }

    var specs: [(String, [Int], Bool)] { DecoderModel.tensorSpecs(config).map { ($0.name, $0.shape, false) } }

    func assertReadError(_ p: String, _ expected: CheckpointError, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try Checkpoint.read(p), file: file, line: line) { error in
            XCTAssertEqual(error as? CheckpointError, expected, file: file, line: line)
        }
    }

    func testRoundTrip() throws {
        let c = sample()
        try c.write(to: path("a.h5"))
        let r = try Checkpoint.read(path("a.h5"))
        XCTAssertEqual(r.config, c.config)
        XCTAssertEqual(r.tokenizer, c.tokenizer)
        XCTAssertEqual(r.history, c.history)
        for (a, b) in zip(c.model.namedTensors, r.model.namedTensors) {
            XCTAssertEqual(a.name, b.name)
            XCTAssertEqual(a.tensor.array, b.tensor.array, a.name)
        }
        // Only the final file remains: no temporary left behind.
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), ["a.h5"])
    }

    func testHeterogeneousRoundTrip() throws {
        var c = config
        c.blocks[0].mlp = false
        c.blocks[1].numAttentionHeads = 2
        c.blocks[1].numKeyValueHeads = 1
        c.blocks[1].intermediateSize = 8
        let model = DecoderModel.random(config: c, seed: 5)
        try Checkpoint(model: model).write(to: path("h.h5"))
        let r = try Checkpoint.read(path("h.h5"))
        XCTAssertEqual(r.config.blocks, c.blocks)
        XCTAssertNil(r.model.layers[0].mlp)
        XCTAssertEqual(r.model.layers[1].attention?.q.denseView!.shape, [2 * c.headDim, 16])
        XCTAssertNil(r.tokenizer)
    }

    func testLargeHistoryAttribute() throws {
        // Pass reports can be long: beyond HDF5's 64 KiB compact attribute limit.
        var c = sample()
        c.history = (0..<5000).map { .object(["step": .int($0), "note": .string("importance scores and more")]) }
        try c.write(to: path("big.h5"))
        XCTAssertEqual(try Checkpoint.read(path("big.h5")).history.count, 5000)
    }

    func testOverwriteIsAtomic() throws {
        try sample().write(to: path("o.h5"))
        // A failed write (into a missing directory) leaves nothing behind; the existing file stays valid.
        XCTAssertThrowsError(try sample().write(to: path("missing/o.h5"))) { XCTAssertTrue("\($0)".contains("missing/o.h5"), "\($0)") }
        XCTAssertNoThrow(try Checkpoint.read(path("o.h5")))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), ["o.h5"])
    }

    func testNotFoundAndNotHDF5() throws {
        assertReadError(path("nope.h5"), .notFound(path: path("nope.h5")))
        try Data("this is not an HDF5 file\n".utf8).write(to: URL(fileURLWithPath: path("t.h5")))
        assertReadError(path("t.h5"), .notHDF5(path: path("t.h5")))
        try Data().write(to: URL(fileURLWithPath: path("empty.h5")))
        assertReadError(path("empty.h5"), .notHDF5(path: path("empty.h5")))
    }

    func testTruncatedFile() throws {
        try sample().write(to: path("full.h5"))
        let data = try Data(contentsOf: URL(fileURLWithPath: path("full.h5")))
        for fraction in [0.9, 0.5, 0.1] {
            let p = path("cut\(fraction).h5")
            try data.prefix(Int(Double(data.count) * fraction)).write(to: URL(fileURLWithPath: p))
            XCTAssertThrowsError(try Checkpoint.read(p)) { error in
                guard case .unreadable(let ep, _)? = error as? CheckpointError else { return XCTFail("\(error)") }
                XCTAssertEqual(ep, p)
            }
        }
    }

    /// A file another holder has locked (as h5py holding it open for writing does: HDF5 takes an exclusive
    /// flock) fails with HDF5's own reason and the documented way around it, not a guess about corruption.
    /// flock locks belong to the open file description, so a second open in this process conflicts too.
    func testLockedFileGivesHDF5sReason() throws {
        guard ProcessInfo.processInfo.environment["HDF5_USE_FILE_LOCKING"] == nil else {
            throw XCTSkip("HDF5_USE_FILE_LOCKING is set; HDF5 may not lock")
        }
        try sample().write(to: path("locked.h5"))
        let fd = open(path("locked.h5"), O_RDWR)
        XCTAssertGreaterThanOrEqual(fd, 0)
        defer { close(fd) }
        XCTAssertEqual(flock(fd, LOCK_EX | LOCK_NB), 0)
        XCTAssertThrowsError(try Checkpoint.read(path("locked.h5"))) { error in
            guard case .unreadable(let ep, let detail)? = error as? CheckpointError else { return XCTFail("\(error)") }
            XCTAssertEqual(ep, path("locked.h5"))
            for fragment in ["unable to lock the file", "HDF5_USE_FILE_LOCKING=FALSE"] {
                XCTAssertTrue(detail.contains(fragment), detail)
            }
            XCTAssertFalse(detail.contains("corrupt"), detail)
        }
        flock(fd, LOCK_UN)
        XCTAssertNoThrow(try Checkpoint.read(path("locked.h5")))
    }

    func testMissingTensor() throws {
        try writeRaw(path("m.h5"), tensors: specs.filter { $0.0 != "model.layers.1.mlp.up_proj.weight" })
        assertReadError(path("m.h5"), .missingTensor(path: path("m.h5"), tensor: "model.layers.1.mlp.up_proj.weight", expectedShape: [24, 16]))
    }

    func testWrongShape() throws {
        try writeRaw(path("s.h5"), tensors: specs.map { $0.0 == "model.layers.0.self_attn.k_proj.weight" ? ($0.0, [16, 16], false) : $0 })
        assertReadError(path("s.h5"), .shapeMismatch(path: path("s.h5"), tensor: "model.layers.0.self_attn.k_proj.weight", expected: [8, 16], found: [16, 16]))
    }

    func testUnknownTensorAndWrongType() throws {
        try writeRaw(path("u.h5"), tensors: specs + [("model.layers.0.self_attn.q_proj.bias", [16], false)])
        assertReadError(path("u.h5"), .unknownTensor(path: path("u.h5"), tensor: "model.layers.0.self_attn.q_proj.bias"))
        try writeRaw(path("d.h5"), tensors: specs.map { $0.0 == "model.norm.weight" ? ($0.0, $0.1, true) : $0 })
        assertReadError(path("d.h5"), .wrongType(path: path("d.h5"), tensor: "model.norm.weight", expected: "float32", found: "float64"))
    }

    func testFormatAndVersion() throws {
        try writeRaw(path("v.h5"), version: 4, tensors: specs)
        assertReadError(path("v.h5"), .unsupportedVersion(path: path("v.h5"), found: 4, supported: CheckpointFormat.supportedVersions))
        try writeRaw(path("f.h5"), format: "something-else", tensors: specs)
        assertReadError(path("f.h5"), .wrongFormat(path: path("f.h5"), found: "something-else", expected: CheckpointFormat.name))
        try writeRaw(path("c.h5"), config: .object(["vocab_size": .int(32)]), tensors: specs)
        XCTAssertThrowsError(try Checkpoint.read(path("c.h5"))) { XCTAssertTrue("\($0)".contains("missing required key 'hidden_size'"), "\($0)") }
    }

    func testErrorMessagesNameFileTensorAndShapes() {
        let e = CheckpointError.shapeMismatch(path: "/x/m.h5", tensor: "model.norm.weight", expected: [576], found: [512])
        XCTAssertEqual(e.description, "/x/m.h5: tensor 'model.norm.weight': expected shape [576], found [512]")
    }
}

import CHDF5
let h5DoubleType = h5_native_double()
