import Checkpoint
import Foundation
import Model
import TensorCore
import XCTest
@testable import Training

/// A training state is checked whole before anything is restored from it (finite values, AdamW second moments
/// >= 0, shapes, the step), and a state holding an unsound value is never written.
final class StateValidationTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("state-validation-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { [dir] in try? FileManager.default.removeItem(at: dir!) }
    }

    func distiller() throws -> Distiller {
        var c = DistillConfig()
        c.steps = 4; c.batch = 2; c.window = 16; c.lr = 2e-3; c.warmup = 2; c.seed = 11
        var rng = SplitMix64(seed: 9)
        let stream = (0..<400).map { _ in Int32(rng.next() % 256) }
        return try Distiller(teacher: try Fixtures.model("tiny-llama-tied"), student: try Fixtures.model("tiny-llama"),
                             config: c, trainTokens: stream)
    }

    /// A state after two steps: its meta text and tensors by key.
    func goodState() throws -> (path: String, meta: String, tensors: [String: Tensor]) {
        let d = try distiller()
        d.trainStep(); d.trainStep()
        let path = dir.appendingPathComponent("good.h5").path
        try d.saveState(to: path)
        let (meta, tensors) = try TensorArchive.read(path, format: Distiller.stateFormat,
                                                     version: Distiller.stateVersion)
        return (path, meta, tensors)
    }

    /// Writes `tensors` (with `meta`) as a state named `name`.
    func write(_ name: String, meta: String, _ tensors: [String: Tensor]) throws -> String {
        let path = dir.appendingPathComponent(name).path
        try TensorArchive.write(to: path, format: Distiller.stateFormat, version: Distiller.stateVersion, meta: meta,
                                tensors: tensors.keys.sorted().map { ($0, tensors[$0]!) })
        return path
    }

    /// The case: a negative AdamW second moment (sqrt of it is NaN in the next update) is refused on load,
    /// naming the file, the tensor, its slot and the value; nothing is restored from the state.
    func testNegativeSecondMomentIsRefusedNamingFileTensorAndValue() throws {
        let good = try goodState()
        let keys = good.tensors.keys.sorted()
        let key = try XCTUnwrap(keys.first { $0.hasPrefix("adam_v:") && $0.contains("down_proj") })
        var edited = good.tensors
        edited[key] = good.tensors[key]!.copy()
        edited[key]![5] = -0.25
        let bad = try write("negative-v.h5", meta: good.meta, edited)
        let d = try distiller()
        let before = d.student.namedTensors.map { $0.tensor.array }
        XCTAssertThrowsError(try d.loadState(from: bad)) { e in
            let m = "\(e)"
            for fragment in [bad, "'\(key)'", "second moment", "-0.25", "index 5", ">= 0"] {
                XCTAssertTrue(m.contains(fragment), "\(fragment): \(m)")
            }
        }
        XCTAssertEqual(d.step, 0)
        XCTAssertEqual(d.student.namedTensors.map { $0.tensor.array }, before, "nothing restored from a refused state")
        XCTAssertNoThrow(try distiller().loadState(from: good.path))
    }

    /// NaN in a first moment or in a parameter, a tensor of the wrong shape and a step outside the run are refused,
    /// each naming the file and what was found.
    func testDamagedStatesAreRefusedNamingWhatWasFound() throws {
        let good = try goodState()
        let keys = good.tensors.keys.sorted()
        let m = try XCTUnwrap(keys.first { $0.hasPrefix("adam_m:") })
        let p = try XCTUnwrap(keys.first { $0.hasPrefix("param:") })
        var cases: [(String, [String: Tensor], String, [String])] = []
        for (name, key) in [("nan-m.h5", m), ("nan-param.h5", p)] {
            var t = good.tensors
            t[key] = good.tensors[key]!.copy()
            t[key]![0] = .nan
            cases.append((name, t, good.meta, ["nan", key]))
        }
        var shaped = good.tensors
        shaped[p] = Tensor(shape: [3])
        cases.append(("shape.h5", shaped, good.meta, ["'\(p)'", "expected shape", "found [3]"]))
        let absurd = good.meta.replacingOccurrences(of: "\"step\":2", with: "\"step\":1000000000000")
        XCTAssertNotEqual(absurd, good.meta)
        cases.append(("step.h5", good.tensors, absurd, ["step 1000000000000", "0...4"]))
        for (name, tensors, meta, fragments) in cases {
            let path = try write(name, meta: meta, tensors)
            XCTAssertThrowsError(try distiller().loadState(from: path), name) { e in
                XCTAssertTrue("\(e)".contains(path), "\(name): \(e)")
                for f in fragments {
                    XCTAssertTrue("\(e)".lowercased().contains(f.lowercased()), "\(name): \(f): \(e)")
                }
            }
        }
    }

    /// A distiller whose trained tensors hold an unsound value reports it (`unsoundValue`) and refuses to save:
    /// an earlier state at the path stays as it was.
    func testUnsoundStateIsNeverSaved() throws {
        let d = try distiller()
        d.trainStep()
        let path = dir.appendingPathComponent("kept.h5").path
        try d.saveState(to: path)
        let kept = try Data(contentsOf: URL(fileURLWithPath: path))
        XCTAssertNil(d.unsoundValue())
        let p = d.optimizer.parameters[1]
        p.v[3] = -1
        let found = try XCTUnwrap(d.unsoundValue())
        XCTAssertTrue(found.contains("adam_v:\(p.name)") && found.contains("-1.0"), found)
        XCTAssertThrowsError(try d.saveState(to: path)) { XCTAssertTrue("\($0)".contains("not saved"), "\($0)") }
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path)), kept, "the earlier state is untouched")
        p.v[3] = 0
        p.value[2] = .infinity
        XCTAssertTrue(try XCTUnwrap(d.unsoundValue()).contains("param:\(p.name)"))
    }
}
