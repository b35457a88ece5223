import Foundation
import XCTest
import Model
import Workbench

/// `compress sweep` end to end on the tiny fixture: points, table, resume, refusals, parallel points, Slurm scripts.
extension CLITests {
    func testSweepRunsEveryPointWritesTheTableAndResumes() throws {
        let (dir, text) = try makeRecipeDirectory()
        let r = try recipe(dir, "s.json", text, stages: #"{"stage": "finercut", "remove": 1}, {"stage": "eval"}"#)
        let out = dir.appendingPathComponent("sweep").path
        let a = try launch(["sweep", r, "--set", "stages.0.remove=1,2,3", "-o", out, "--json"])
        XCTAssertEqual(a.status, 0, a.stderr)
        let j = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(a.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(j["points"] as? Int, 3)
        XCTAssertEqual(j["finished"] as? Int, 3)
        let rows = try XCTUnwrap(j["rows"] as? [[String: Any]])
        XCTAssertEqual(rows.map { ($0["values"] as? [String: Any])?["stages.0.remove"] as? Int }, [1, 2, 3])
        let params = rows.compactMap { $0["parameters"] as? Int }
        XCTAssertEqual(params, params.sorted(by: >), "more sublayers removed, fewer parameters")
        XCTAssertTrue(rows.allSatisfy { ($0["ppl"] as? Double ?? 0) > 1 })
        // The analysis was computed once: point 1 computed the FinerCut order, points 2 and 3 extended or reused it.
        XCTAssertTrue(a.stderr.contains("point 1/3") && a.stderr.contains("point 3/3"), a.stderr)
        let csv = try String(contentsOfFile: out + "/results.csv", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(csv.first, "point,stages.0.remove,parameters,bytes,bits_per_weight,ppl,retention,kld,kld_p99,same_top_p,seconds,output")
        // Every point's divergence from the base, from one base reference.
        XCTAssertTrue(rows.allSatisfy { ($0["kld"] as? Double ?? 0) > 0 && ($0["kld_p99"] as? Double ?? 0) > 0 }, "\(rows)")
        XCTAssertTrue(rows.allSatisfy { ($0["same_top_p"] as? Double).map { $0 > 0 && $0 <= 1 } ?? false }, "\(rows)")
        XCTAssertEqual(csv.count, 4)
        // --keep best (default): only the lowest-PPL point keeps its checkpoint.
        let kept = rows.filter { $0["output"] is String }
        XCTAssertEqual(kept.count, 1)
        XCTAssertEqual(kept.first?["point"] as? String, j["best"] as? String)
        for ext in ["svg", "png"] { XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/plot." + ext), "plot.\(ext)") }

        // Killed after a point: the rerun keeps finished points and runs only the rest.
        try FileManager.default.removeItem(atPath: out + "/points/p001.report.json")
        let b = try launch(["sweep", r, "--set", "stages.0.remove=1,2,3", "-o", out, "--json"])
        XCTAssertEqual(b.status, 0, b.stderr)
        XCTAssertTrue(b.stderr.contains("2 of 3 points finished earlier; running the other 1"), b.stderr)
        let j2 = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(b.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(j2["skipped"] as? Int, 2)
        XCTAssertEqual(((j2["rows"] as? [[String: Any]])?[1]["ppl"] as? Double), rows[1]["ppl"] as? Double)

        // Collect and plot from the directory alone.
        let c = try launch(["sweep", "collect", out, "--json"])
        XCTAssertEqual(c.status, 0, c.stderr)
        let p = try launch(["sweep", "plot", out, out, "-o", dir.appendingPathComponent("overlay").path, "--json"])
        XCTAssertEqual(p.status, 0, p.stderr)
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir.appendingPathComponent("overlay.svg").path))
        let k = try launch(["sweep", "plot", out, "--metric", "kld", "-o", dir.appendingPathComponent("kld").path, "--json"])
        XCTAssertEqual(k.status, 0, k.stderr)
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir.appendingPathComponent("kld.png").path))
        XCTAssertEqual(try launch(["sweep", "plot", out, "--metric", "bits", "-o", dir.appendingPathComponent("x").path]).status, 1)
    }

    /// `--set` values split at top-level commas only: lists and objects with commas are single values.
    func testSetValuesMayBeListsAndObjects() throws {
        let axis = try SweepAxis(parsing: #"stages.0.formats=["q3_g32_sym","q4_g32_sym"],["q4_g32_asym"],4.5,{"a": [1, 2]},"x,y",word"#)
        XCTAssertEqual(axis.path, "stages.0.formats")
        XCTAssertEqual(axis.values, [.array([.string("q3_g32_sym"), .string("q4_g32_sym")]), .array([.string("q4_g32_asym")]), .double(4.5),
                                     .object(["a": .array([.int(1), .int(2)])]), .string("x,y"), .string("word")])
        XCTAssertThrowsError(try SweepAxis(parsing: "stages.0.widths=[4],,[5]")) { XCTAssertTrue("\($0)".contains("value 2 is empty"), "\($0)") }
    }

    func testSweepRefusesBadInputBeforeAnyPointRuns() throws {
        let (dir, text) = try makeRecipeDirectory()
        let r = try recipe(dir, "s.json", text, stages: #"{"stage": "finercut", "remove": 1}, {"stage": "eval"}"#)
        let taken = dir.appendingPathComponent("taken").path
        XCTAssertEqual(try launch(["sweep", r, "--set", "stages.0.remove=1", "-o", taken]).status, 0)
        let cases: [([String], String)] = [
            (["--set", "stages.0.removx=1,2"], "unknown key 'removx'"),
            (["--set", "stages.7.remove=1"], "'stages.7': 7 is not an index of a list of 2"),
            (["--set", "calibration.nope.x=1"], "the recipe has no 'calibration.nope'"),
            (["--set", "stages.0.remove=one,2"], "'remove': expected an integer"),
            (["--set", "stages.0.remove="], "the list of values is empty"),
            (["--set", "stages.0.remove=1,,2"], "value 2 is empty"),
            (["--set", "stages.0.remove=1,2", "--set", "stages.0.metric=js", "--zip"], "every --set needs the same number of values"),
            ([], "give at least one --set"),
        ]
        for (i, (args, expected)) in cases.enumerated() {
            let out = dir.appendingPathComponent("bad\(i)").path
            let res = try launch(["sweep", r] + args + ["-o", out, "--json"])
            XCTAssertEqual(res.status, 1, "\(args)")
            let j = try? JSONSerialization.jsonObject(with: Data(res.stdout.utf8)) as? [String: Any]
            XCTAssertTrue((j?["error"] as? String)?.contains(expected) == true, "\(args): \(res.stdout)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: out), "\(args): nothing written")
        }
        let other = try launch(["sweep", r, "--set", "stages.0.remove=2,3", "-o", taken, "--json"])
        XCTAssertEqual(other.status, 1)
        XCTAssertTrue(other.stdout.contains("holds another sweep's results"), other.stdout)
    }

    func testSweepRunsPointsInParallelAndWritesSlurmScripts() throws {
        let (dir, text) = try makeRecipeDirectory()
        let r = try recipe(dir, "s.json", text, stages: #"{"stage": "finercut", "remove": 1}, {"stage": "eval"}"#)
        let out = dir.appendingPathComponent("par").path
        let a = try launch(["sweep", r, "--set", "stages.0.remove=1,2", "--set", "stages.0.metric=js,angular", "-o", out, "--jobs", "2", "--keep", "none", "--json"])
        XCTAssertEqual(a.status, 0, a.stderr)
        let j = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(a.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(j["finished"] as? Int, 4)
        XCTAssertTrue(a.stderr.contains("[p003] stage 2/2 (eval)"), "each point's progress, prefixed: \(a.stderr)")
        let rows = try XCTUnwrap(j["rows"] as? [[String: Any]])
        XCTAssertTrue(rows.allSatisfy { $0["output"] == nil || $0["output"] is NSNull }, "--keep none")
        XCTAssertEqual(Set(rows.compactMap { ($0["values"] as? [String: Any])?["stages.0.metric"] as? String }), ["js", "angular"])
        // The parallel points used the cache the first point filled.
        let reports = try FileManager.default.contentsOfDirectory(atPath: out + "/points").filter { $0.hasSuffix(".report.json") }
        XCTAssertEqual(reports.count, 4)

        let s = dir.appendingPathComponent("slurm").path
        let b = try launch(["sweep", r, "--set", "stages.0.remove=1,2,3", "-o", s, "--slurm", "--dry-run", "--partition", "debug", "--time", "00:10:00"])
        XCTAssertEqual(b.status, 0, b.stderr)
        let array = try String(contentsOfFile: s + "/slurm/array.sh", encoding: .utf8)
        XCTAssertTrue(array.contains("#SBATCH --array=0-2") && array.contains("#SBATCH --partition=debug") && array.contains("#SBATCH --time=00:10:00"), array)
        XCTAssertTrue(array.contains(" apply \"$recipe\" --cache"), array)
        let collect = try String(contentsOfFile: s + "/slurm/collect.sh", encoding: .utf8)
        XCTAssertTrue(collect.contains("sweep collect"), collect)
        XCTAssertEqual(try String(contentsOfFile: s + "/slurm/points.txt", encoding: .utf8).split(separator: "\n").count, 3)
    }
}
