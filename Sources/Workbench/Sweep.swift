import Checkpoint
import Export
import Diagnostics
import Foundation
import Model
import Passes
import Recipes
import SafeFiles
import TensorCore

/// Settings of `compress sweep`.
public struct SweepOptions {
    public enum Keep: String, CaseIterable, Sendable { case none, best, all }
    public var recipe: String
    /// "PATH=V1,V2,..." each; PATH addresses a value of the recipe ("stages.0.fraction").
    public var sets: [String]
    /// Pair the axes' values position by position instead of taking their cartesian product.
    public var zip = false
    public var directory: String
    /// Overrides the recipe's base checkpoint.
    public var checkpoint: String?
    /// Points run at once (each a `compress apply` process with cores / jobs threads when > 1).
    public var jobs = 1
    public var keep = Keep.best
    /// Statistics cache shared by every point (nil: DIR/cache).
    public var cacheDirectory: String?
    public var progress = true
    public var slurm: SlurmOptions?
    public init(recipe: String, sets: [String], directory: String) {
        self.recipe = recipe
        self.sets = sets
        self.directory = directory
    }
}

/// A Slurm job array: one array task per point, plus a collect job that runs when they have all ended.
public struct SlurmOptions: Sendable {
    public var partition: String?
    public var time: String?
    public var cpusPerTask = 2
    public var memory: String?
    /// Only write the scripts (DIR/slurm), do not call sbatch.
    public var dryRun = false
    public init() {}
}

/// One swept variable: a path into the recipe and its values.
public struct SweepAxis: Codable, Equatable, Sendable {
    public var path: String
    public var values: [JSONValue]

    /// Parses "PATH=V1,V2,...": each value is read as JSON (numbers, true/false, null, quoted strings, lists and
    /// objects), and a bare word as a string. Values are split at the commas outside brackets, braces and quotes,
    /// so `formats=["q3_g32_sym","q4_g32_sym"],["q4_g32_sym"]` is two lists.
    public init(parsing text: String) throws {
        guard let eq = text.firstIndex(of: "="), eq != text.startIndex else {
            throw WorkbenchError("--set '\(text)': expected PATH=V1,V2,... (e.g. stages.0.fraction=0.1,0.2)")
        }
        path = String(text[..<eq])
        let list = text[text.index(after: eq)...]
        guard !list.isEmpty else { throw WorkbenchError("--set \(path): the list of values is empty") }
        values = Self.topLevelItems(list).map { raw in
            let s = raw.trimmingCharacters(in: .whitespaces)
            return (try? JSONValue.parse(s)) ?? .string(s)
        }
        if let i = values.firstIndex(where: { $0 == .string("") }) {
            throw WorkbenchError("--set \(path): value \(i + 1) is empty")
        }
    }

    /// The comma-separated items of `list`, with commas inside [...], {...} and "..." (backslash escapes) kept.
    static func topLevelItems(_ list: Substring) -> [Substring] {
        var items: [Substring] = [], depth = 0, quoted = false, escaped = false, start = list.startIndex
        for i in list.indices {
            let c = list[i]
            if quoted {
                if escaped { escaped = false } else if c == "\\" { escaped = true } else if c == "\"" { quoted = false }
                continue
            }
            switch c {
            case "\"": quoted = true
            case "[", "{": depth += 1
            case "]", "}": depth = Swift.max(0, depth - 1)
            case "," where depth == 0: items.append(list[start..<i]); start = list.index(after: i)
            default: break
            }
        }
        items.append(list[start...])
        return items
    }

    /// `json` with the value at `path` set to `value`. Every component but the last must exist (object keys,
    /// array indices); the last may add a key to an object (strict recipe decoding then judges it).
    public static func setting(_ json: JSONValue, path: String, to value: JSONValue) throws -> JSONValue {
        let parts = path.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard !parts.contains(where: \.isEmpty) else { throw WorkbenchError("--set \(path): empty path component") }
        func go(_ node: JSONValue, _ i: Int, _ where_: String) throws -> JSONValue {
            let key = parts[i], last = i == parts.count - 1, here = where_.isEmpty ? key : where_ + "." + key
            switch node {
            case .object(var o):
                guard last || o[key] != nil else { throw WorkbenchError("--set \(path): the recipe has no '\(here)'") }
                o[key] = last ? value : try go(o[key]!, i + 1, here)
                return .object(o)
            case .array(var a):
                guard let idx = Int(key), a.indices.contains(idx) else {
                    throw WorkbenchError("--set \(path): '\(here)': \(key) is not an index of a list of \(a.count)")
                }
                a[idx] = last ? value : try go(a[idx], i + 1, here)
                return .array(a)
            default:
                throw WorkbenchError("--set \(path): '\(where_)' holds \(node.text), which has no '\(key)'")
            }
        }
        return try go(json, 0, "")
    }
}

/// One point of a sweep: the values it sets, its files.
public struct SweepPoint: Codable, Equatable, Sendable {
    public var index: Int
    public var name: String
    /// Path → value, one per axis.
    public var values: [String: JSONValue]
    public var recipe: String
    public var output: String
    public var report: String
}

/// One row of results.csv / results.json. The columns are stable: point, the swept paths (in --set order),
/// then the fixed ones below.
public struct SweepRow: Codable, Sendable {
    public var point: String
    public var values: [String: JSONValue]
    public var parameters: Int
    public var bytes: Int
    /// 8 × bytes / parameters: storage bits per stored value (scales, minimums and mask bits included).
    public var bitsPerWeight: Double
    /// The point's last eval stage (nil without one).
    public var ppl: Double?
    public var retention: Double?
    /// The point's last eval stage's divergence from the base: mean KLD (nats per token), its 99th percentile, and
    /// the share of positions with the base's top-1 token (nil without one).
    public var kld: Double?
    public var kldP99: Double?
    public var sameTopP: Double?
    public var seconds: Double
    /// The checkpoint, when kept.
    public var output: String?
}

/// What `compress sweep` (and `sweep collect`) reports; also DIR/results.json.
public struct SweepReport: Codable {
    public var recipe: String
    public var name: String?
    public var directory: String
    public var axes: [SweepAxis]
    public var zip: Bool
    public var points: Int
    public var finished: Int
    /// Points found finished from an earlier run and not run again.
    public var skipped: Int
    public var basePpl: Double?
    public var baseParameters: Int?
    public var baseBytes: Int?
    public var rows: [SweepRow]
    public var best: String?
    public var seconds: Double
    public var csv: String
    public var plots: [String]
    public var warnings: [String]
    public var slurmJobs: [String]?

    public var text: String {
        var s = "sweep \(name ?? recipe): \(finished)/\(points) points in \(directory)"
            + (skipped > 0 ? " (\(skipped) from an earlier run)" : "") + String(format: ", %.1f s\n", seconds)
        if let b = basePpl {
            s += String(format: "base: ppl %.4f, %d parameters, %@\n", b, baseParameters ?? 0,
                        formatBytes(baseBytes ?? 0))
        }
        let paths = axes.map(\.path)
        s += (["point"] + paths
              + ["parameters", "bytes", "bits/w", "ppl", "retention", "kld", "kld_p99", "same_top_p", "seconds"])
            .joined(separator: "\t") + "\n"
        for r in rows {
            s += ([r.point] + paths.map { r.values[$0]?.text ?? "" }
                  + [String(r.parameters), String(r.bytes), String(format: "%.3f", r.bitsPerWeight),
                   r.ppl.map { String(format: "%.4f", $0) } ?? "", r.retention.map { String(format: "%.4f", $0) } ?? "",
                   r.kld.map { String(format: "%.5f", $0) } ?? "", r.kldP99.map { String(format: "%.5f", $0) } ?? "",
                   r.sameTopP.map { String(format: "%.4f", $0) } ?? "",
                   String(format: "%.1f", r.seconds)]).joined(separator: "\t") + "\n"
        }
        if let best { s += "best (lowest PPL): \(best)\n" }
        s += "table: \(csv)\n"
        for p in plots { s += "plot: \(p)\n" }
        for w in warnings { s += "warning: \(w)\n" }
        if let j = slurmJobs, !j.isEmpty { s += "slurm jobs: \(j.joined(separator: ", ")) (array, collect)\n" }
        return s
    }
}

/// The manifest a sweep directory holds (DIR/sweep.json): what was swept, so a rerun resumes the same sweep and
/// refuses another's.
struct SweepManifest: Codable, Equatable {
    var format = 1
    var recipe: String
    var recipeJSON: String
    var base: String
    var axes: [SweepAxis]
    var zip: Bool
    var points: [SweepPoint]
}

extension Workbench {
    /// Runs (or submits) every point of a sweep and collects the results. Every point's recipe is built and
    /// decoded before any runs; finished points of an earlier run of the same sweep are kept and skipped.
    public static func sweep(_ o: SweepOptions) throws -> SweepReport {
        let started = Date()
        let say: (String) -> Void = { if o.progress { progressLine($0) } }
        let (manifest, recipes, lock) = try planSweep(o)
        defer { lock.release() }
        let dir = o.directory
        let cache = o.cacheDirectory ?? (dir as NSString).appendingPathComponent("cache")
        let done = manifest.points.filter { FileManager.default.fileExists(atPath: $0.report) }
        let pending = manifest.points.filter { !FileManager.default.fileExists(atPath: $0.report) }
        if !done.isEmpty {
            say("sweep: \(done.count) of \(manifest.points.count) points finished earlier; running the " +
                "other \(pending.count)")
        }

        if let slurm = o.slurm {
            let jobs = try submitSlurm(manifest: manifest, pending: pending, directory: dir, cache: cache,
                                       options: slurm, say: say)
            var r = try collectSweep(directory: dir, keep: o.keep, progress: o.progress)
            r.slurmJobs = jobs
            r.seconds = Date().timeIntervalSince(started)
            return r
        }

        if o.jobs <= 1 {
            // In process, on one session: the base, its hash, tokenizer, calibration windows, test tokens, base PPL
            // and every pass's analysis are computed once for all points.
            var session: Session?
            var times: [Double] = []
            for (k, p) in pending.enumerated() {
                let t0 = Date()
                if session == nil {
                    session = try Session(checkpoint: manifest.base, cacheDirectory: cache, progress: o.progress)
                }
                guard let session, let recipe = recipes[p.name] else { continue }
                say("sweep: point \(k + 1)/\(pending.count) (\(p.name): \(describe(p.values))) starts"
                    + eta(times, left: pending.count - k, jobs: 1))
                try MatrixProduct.select(recipe.precision ?? .fp32)
                let r = try session.run(recipe, label: p.recipe, statePrefix: p.output, resume: hasState(p))
                let report = try writePoint(session: session, recipe: recipe, point: p, result: r, started: t0)
                for s in r.statePaths { try? FileManager.default.removeItem(atPath: s) }
                times.append(Date().timeIntervalSince(t0))
                say(String(format: "sweep: point %d/%d (%@) done in %@", k + 1, pending.count, p.name,
                           formatDuration(times.last!))
                    + (report.pplAfter.map { String(format: ", ppl %.4f", $0) } ?? ""))
            }
        } else {
            try runPointsInProcesses(pending, jobs: o.jobs, cache: cache, progress: o.progress, say: say)
        }
        var r = try collectSweep(directory: dir, keep: o.keep, progress: o.progress)
        r.skipped = done.count
        r.seconds = Date().timeIntervalSince(started)
        return r
    }

    /// Whether a killed run of the point left a distill stage's training state (then it resumes from it).
    static func hasState(_ p: SweepPoint) -> Bool {
        let prefix = (p.output as NSString).lastPathComponent + ".stage"
        return (try? FileManager.default.contentsOfDirectory(atPath: (p.output as NSString).deletingLastPathComponent))?
            .contains { $0.hasPrefix(prefix) && $0.hasSuffix(".state.h5") } == true
    }

    static func describe(_ values: [String: JSONValue]) -> String {
        values.keys.sorted().map { "\($0)=\(values[$0]!.text)" }.joined(separator: ", ")
    }

    static func eta(_ times: [Double], left: Int, jobs: Int) -> String {
        guard !times.isEmpty else { return "" }
        return ", ETA " + formatDuration(times.reduce(0, +) / Double(times.count) * Double(left) / Double(max(jobs, 1)))
    }

    /// The lock file a running sweep holds in its directory (`DirectoryLock`).
    static let lockName = ".sweep.lock"

    /// Builds the points, takes the directory's lock (a second sweep into it is refused at once), writes the
    /// recipes and the manifest; refuses a directory holding another sweep.
    static func planSweep(_ o: SweepOptions) throws -> (SweepManifest, [String: Recipe], DirectoryLock) {
        guard !o.sets.isEmpty else { throw WorkbenchError("sweep: give at least one --set PATH=V1,V2,...") }
        guard (1...64).contains(o.jobs) else { throw WorkbenchError("--jobs: expected 1...64, got \(o.jobs)") }
        let axes = try o.sets.map(SweepAxis.init(parsing:))
        if let dup = Dictionary(grouping: axes, by: \.path).first(where: { $0.value.count > 1 })?.key {
            throw WorkbenchError("--set \(dup): given twice")
        }
        guard let data = FileManager.default.contents(atPath: o.recipe) else {
            throw WorkbenchError("cannot read the recipe file", ErrorContext(file: o.recipe))
        }
        let json: JSONValue
        // The recipe's own reader checks the same bytes again per point; this one must be as strict (UTF-8 with the
        // byte offset, repeated keys, numbers past a 64-bit float), naming the file.
        json = try strictJSON(data, path: o.recipe)
        guard let base = o.checkpoint ?? json.objectValue?["base"]?.stringValue else {
            throw WorkbenchError("no base checkpoint: give --checkpoint or 'base' in the recipe",
                ErrorContext(file: o.recipe))
        }
        // Points: the cartesian product (last axis fastest) or the axes zipped.
        var combos: [[JSONValue]] = [[]]
        if o.zip {
            let n = axes[0].values.count
            if let bad = axes.first(where: { $0.values.count != n }) {
                throw WorkbenchError("--zip: every --set needs the same number of values (\(axes[0].path) " +
                                     "has \(n), \(bad.path) has \(bad.values.count))")
            }
            combos = (0..<n).map { i in axes.map { $0.values[i] } }
        } else {
            for a in axes { combos = combos.flatMap { c in a.values.map { c + [$0] } } }
        }
        guard combos.count <= 10_000 else { throw WorkbenchError("sweep: \(combos.count) points; at most 10,000") }
        let dir = o.directory
        let pointsDir = (dir as NSString).appendingPathComponent("points")
        var points: [SweepPoint] = [], texts: [String: String] = [:], recipes: [String: Recipe] = [:]
        for (i, combo) in combos.enumerated() {
            let name = String(format: "p%03d", i)
            var j = json
            for (a, v) in zip(axes, combo) { j = try SweepAxis.setting(j, path: a.path, to: v) }
            let recipePath = (pointsDir as NSString).appendingPathComponent(name + ".recipe.json")
            let output = (pointsDir as NSString).appendingPathComponent(name + ".h5")
            guard case .object(var obj) = j else {
                throw WorkbenchError("a recipe is a JSON object", ErrorContext(file: o.recipe))
            }
            obj["base"] = .string(base)
            obj["output"] = .string(output)
            j = .object(obj)
            do { recipes[name] = try Recipe(json: j, path: recipePath, registry: .standard()) } catch {
                let settings = zip(axes, combo).map { "\($0.path)=\($1.text)" }.joined(separator: ", ")
                throw error.adding(place: "sweep point \(name) (\(settings))")
            }
            if let i = recipes[name]?.stages.firstIndex(where: { $0.stage.work.writes }) {
                throw WorkbenchError("\(o.recipe), stage \(i + 1) (export): export stages are not run in sweeps " +
                                     "(every point would write the same output); export the point you choose with " +
                                     "`compress export`")
            }
            texts[name] = j.text
            points.append(SweepPoint(index: i, name: name,
                                     values: Dictionary(uniqueKeysWithValues: zip(axes.map(\.path), combo)),
                                     recipe: recipePath, output: output,
                                     report: (pointsDir as NSString).appendingPathComponent(name + ".report.json")))
        }
        let manifest = SweepManifest(recipe: o.recipe, recipeJSON: json.text, base: base, axes: axes, zip: o.zip,
                                     points: points)
        let manifestPath = (dir as NSString).appendingPathComponent("sweep.json")
        let fm = FileManager.default
        func foreign() -> Bool {  // a non-empty directory without a manifest: not a sweep's
            guard !fm.fileExists(atPath: manifestPath),
                let entries = try? fm.contentsOfDirectory(atPath: dir) else { return false }
            return entries.contains { $0 != lockName }
        }
        if foreign() {
            throw WorkbenchError("exists, is not empty and holds no sweep; use another -o", ErrorContext(file: dir))
        }
        let lock = try lockSweepDirectory(dir)
        do {
            if foreign() {
                throw WorkbenchError("exists, is not empty and holds no sweep; use another -o", ErrorContext(file: dir))
            }
            if let old = fm.contents(atPath: manifestPath) {
                guard let m = try? JSONDecoder().decode(SweepManifest.self, from: old) else {
                    throw WorkbenchError("\(manifestPath): unreadable sweep manifest; use another -o")
                }
                guard m == manifest else {
                    let axes = m.axes.map { "\($0.path)=\($0.values.map(\.text).joined(separator: ","))" }
                        .joined(separator: " ")
                    throw WorkbenchError("holds another sweep's results (recipe \(m.recipe), \(axes)); use another -o",
                                         ErrorContext(file: dir))
                }
            }
            try fm.createDirectory(atPath: pointsDir, withIntermediateDirectories: true)
            let e = JSONEncoder()
            e.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
            try writeFileAtomically(manifestPath, try e.encode(manifest))
            for p in points { try writeFileAtomically(p.recipe, Data((texts[p.name]! + "\n").utf8)) }
        } catch {
            lock.release()
            throw error
        }
        return (manifest, recipes, lock)
    }

    /// Creates the sweep directory if needed and takes its lock: refused at once, naming the directory and the
    /// process holding it, when another sweep runs there; a path through a regular file names that file.
    static func lockSweepDirectory(_ dir: String) throws -> DirectoryLock {
        try SafeFiles.checkName(dir, role: "sweep directory", temporary: false)
        if let blocker = SafeFiles.firstNonDirectory(dir) {
            throw WorkbenchError(
                "'\(blocker)' is not a directory (expected a sweep directory, or a new name for one)",
                ErrorContext(file: dir, expected: "a sweep directory, or a new name for one", found: "'\(blocker)'"))
        }
        do { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) } catch {
            throw WorkbenchError("cannot create the sweep directory (\(error.localizedDescription))",
                ErrorContext(file: dir))
        }
        return try DirectoryLock(directory: dir, name: lockName, role: "sweep")
    }

    /// Writes the point's checkpoint and its report (the report last: it marks the point finished).
    static func writePoint(session: Session, recipe: Recipe, point p: SweepPoint, result r: Session.Result,
                           started: Date) throws -> ApplyReport {
        let report = try session.write(r, recipe: recipe, recipePath: p.recipe, output: p.output, started: started)
        try writeFileAtomically(p.report, Data(try encodeJSON(report).utf8))
        return report
    }

    /// Runs points as `compress apply` processes, `jobs` at a time, the cores split between them; the first
    /// point runs alone so that the others read its analysis from the shared cache.
    static func runPointsInProcesses(_ points: [SweepPoint], jobs: Int, cache: String, progress: Bool,
                                     say: (String) -> Void) throws {
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        let cores = max(1, ProcessInfo.processInfo.activeProcessorCount)
        func start(_ p: SweepPoint, threads: Int) throws -> Process {
            let proc = Process()
            proc.executableURL = URL(fileURLWithPath: exe)
            proc.arguments = ["apply", p.recipe, "--cache", cache, "--json"] + (hasState(p) ? ["--resume"] : [])
            var env = ProcessInfo.processInfo.environment
            env["OPENBLAS_NUM_THREADS"] = String(threads)
            env["COMPRESS_THREADS"] = String(threads)
            proc.environment = env
            FileManager.default.createFile(atPath: p.report + ".part", contents: nil)
            proc.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: p.report + ".part"))
            // The point's progress (its current stage, steps, windows), each line prefixed with the point's name.
            let err = Pipe()
            proc.standardError = err
            let name = p.name, show = progress
            err.fileHandleForReading.readabilityHandler = { h in
                let data = h.availableData
                guard !data.isEmpty else { h.readabilityHandler = nil; return }
                guard show else { return }
                for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
                    progressLine("[\(name)] \(line)")
                }
            }
            try proc.run()
            return proc
        }
        func finish(_ proc: Process, _ p: SweepPoint) throws {
            proc.waitUntilExit()
            guard proc.terminationReason == .exit, proc.terminationStatus == 0 else {
                let text = (try? String(contentsOfFile: p.report + ".part", encoding: .utf8)) ?? ""
                throw WorkbenchError("sweep point \(p.name) (\(p.recipe)) " +
                                     "failed: \(text.trimmingCharacters(in: .whitespacesAndNewlines))")
            }
            guard rename(p.report + ".part", p.report) == 0 else {
                throw WorkbenchError("\(p.report): cannot move the report into place")
            }
        }
        var queue = points[...], times: [Double] = [], doneCount = 0
        if let first = queue.popFirst() {
            let t0 = Date()
            say("sweep: point 1/\(points.count) (\(first.name)) runs alone (its analysis is cached for the rest)")
            try finish(try start(first, threads: cores), first)
            times.append(Date().timeIntervalSince(t0)); doneCount = 1
        }
        let threads = max(1, cores / jobs)
        var running: [(Process, SweepPoint, Date)] = []
        while !queue.isEmpty || !running.isEmpty {
            while running.count < jobs, let p = queue.popFirst() {
                running.append((try start(p, threads: threads), p, Date()))
            }
            let (proc, p, t0) = running.removeFirst()
            try finish(proc, p)
            times.append(Date().timeIntervalSince(t0)); doneCount += 1
            say("sweep: \(doneCount)/\(points.count) points done (\(p.name))"
                + eta(times, left: points.count - doneCount, jobs: jobs))
        }
    }

    /// Builds results.csv, results.json and the plot from whatever points have finished (their reports).
    public static func collectSweep(directory dir: String, keep: SweepOptions.Keep = .all,
                                    progress: Bool = true) throws -> SweepReport {
        let manifestPath = (dir as NSString).appendingPathComponent("sweep.json")
        guard let data = FileManager.default.contents(atPath: manifestPath),
              let m = try? JSONDecoder().decode(SweepManifest.self, from: data) else {
            throw WorkbenchError("no sweep here (\(manifestPath) is missing or unreadable)", ErrorContext(file: dir))
        }
        var rows: [SweepRow] = []
        var base: (ppl: Double?, params: Int, bytes: Int)?
        var name: String?
        for p in m.points {
            guard let d = FileManager.default.contents(atPath: p.report) else { continue }
            let j: JSONValue
            do { j = try JSONValue.parse(String(decoding: d, as: UTF8.self)) } catch {
                throw WorkbenchError("\(p.report): unreadable report (\(error))")
            }
            guard let o = j.objectValue, let params = o["parameters_after"]?.intValue,
                let bytes = o["bytes_after"]?.intValue else {
                throw WorkbenchError("\(p.report): not a report of compress apply")
            }
            if base == nil, let bp = o["parameters_before"]?.intValue, let bb = o["bytes_before"]?.intValue {
                base = (o["ppl_before"]?.doubleValue, bp, bb)
            }
            name = name ?? o["name"]?.stringValue
            rows.append(SweepRow(point: p.name, values: p.values, parameters: params, bytes: bytes,
                                 bitsPerWeight: Double(8 * bytes) / Double(max(params, 1)),
                                 ppl: o["ppl_after"]?.doubleValue,
                                 retention: o["retention"]?.doubleValue, kld: o["kld_after"]?.doubleValue,
                                 kldP99: o["kld_p99_after"]?.doubleValue, sameTopP: o["same_top_p_after"]?.doubleValue,
                                 seconds: o["seconds"]?.doubleValue ?? 0,
                                 output: FileManager.default.fileExists(atPath: p.output) ? p.output : nil))
        }
        let best = rows.filter { $0.ppl != nil }.min { $0.ppl! < $1.ppl! }?.point
        // Checkpoints: keep all, the best, or none.
        for i in rows.indices where keep == .none || (keep == .best && rows[i].point != best) {
            if let out = rows[i].output { try? FileManager.default.removeItem(atPath: out); rows[i].output = nil }
        }
        let csvPath = (dir as NSString).appendingPathComponent("results.csv")
        let paths = m.axes.map(\.path)
        func field(_ s: String) -> String {
            s.contains(where: { ",\"\n".contains($0) })
                ? "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : s
        }
        var csv = (["point"] + paths
                   + ["parameters", "bytes", "bits_per_weight", "ppl", "retention", "kld", "kld_p99", "same_top_p",
                      "seconds", "output"])
            .map(field).joined(separator: ",") + "\n"
        for r in rows {
            func cell(_ x: Double?) -> String { x.map { String($0) } ?? "" }
            let values: [String] = paths.map { v in
                r.values[v].map { if case .string(let s) = $0 { return s }; return $0.text } ?? ""
            }
            let figures: [String] = [String(r.parameters), String(r.bytes), String(r.bitsPerWeight), cell(r.ppl),
                                     cell(r.retention),
                                     cell(r.kld), cell(r.kldP99), cell(r.sameTopP), String(format: "%.3f", r.seconds),
                                     r.output ?? ""]
            let cells = [r.point] + values + figures
            csv += cells.map(field).joined(separator: ",") + "\n"
        }
        try writeFileAtomically(csvPath, Data(csv.utf8))
        var report = SweepReport(recipe: m.recipe, name: name, directory: dir, axes: m.axes, zip: m.zip,
                                 points: m.points.count,
                                 finished: rows.count, skipped: 0, basePpl: base?.ppl, baseParameters: base?.params,
                                 baseBytes: base?.bytes,
                                 rows: rows, best: best, seconds: 0, csv: csvPath, plots: [], warnings: [],
                                 slurmJobs: nil)
        try writeFileAtomically((dir as NSString).appendingPathComponent("results.json"),
                                Data(try encodeJSON(report, pretty: true).utf8))
        if rows.contains(where: { $0.ppl != nil }) {
            do {
                report.plots = try plotSweeps([dir], output: (dir as NSString).appendingPathComponent("plot"))
            } catch let e as WorkbenchError {
                report.warnings.append(e.description)
            }
        } else {
            report.warnings.append("no finished point has a PPL yet (an eval stage); no plot")
        }
        try writeFileAtomically((dir as NSString).appendingPathComponent("results.json"),
                                Data(try encodeJSON(report, pretty: true).utf8))
        return report
    }

    /// Draws PPL (log scale) against size for one or more sweep directories with tools/plot_sweep.py
    /// (matplotlib): one series per sweep, the Pareto front marked, the base model marked. Returns the files
    /// written (OUTPUT.svg and OUTPUT.png).
    public static func plotSweeps(_ dirs: [String], output: String, metric: String = "ppl") throws -> [String] {
        let candidates = [
            FileManager.default.currentDirectoryPath + "/tools/plot_sweep.py",
            URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
                .appendingPathComponent("../../tools/plot_sweep.py").standardized.path,
        ]
        guard let script = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) else {
            throw WorkbenchError("plot skipped: tools/plot_sweep.py not found (run from the repository root)")
        }
        let proc = Process()
        proc.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        proc.arguments = ["python3", script, "-o", output, "--metric", metric] + dirs
        let err = Pipe()
        proc.standardError = err
        proc.standardOutput = FileHandle.nullDevice
        do { try proc.run() } catch { throw WorkbenchError("plot skipped: cannot run python3 (\(error))") }
        let message = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        proc.waitUntilExit()
        guard proc.terminationStatus == 0 else {
            throw WorkbenchError("plot skipped: \(script) " +
                                 "failed: \(message.trimmingCharacters(in: .whitespacesAndNewlines)) (matplotlib: " +
                                 "tools/ensure_packages.sh installs python3-matplotlib)")
        }
        return [output + ".svg", output + ".png"]
    }

    /// Writes the job-array and collect scripts and submits them with sbatch (unless a dry run).
    static func submitSlurm(manifest m: SweepManifest, pending: [SweepPoint], directory dir: String, cache: String,
                            options s: SlurmOptions, say: (String) -> Void) throws -> [String] {
        let fm = FileManager.default
        let slurmDir = (dir as NSString).appendingPathComponent("slurm")
        try fm.createDirectory(atPath: slurmDir, withIntermediateDirectories: true)
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        let cwd = fm.currentDirectoryPath
        guard !pending.isEmpty else { say("sweep: every point has finished; nothing to submit"); return [] }
        let list = (slurmDir as NSString).appendingPathComponent("points.txt")
        try writeFileAtomically(
            list, Data((pending.map { "\($0.recipe)\t\($0.report)" }.joined(separator: "\n") + "\n").utf8))
        var header = "#!/bin/bash\n"
        if let p = s.partition { header += "#SBATCH --partition=\(p)\n" }
        if let t = s.time { header += "#SBATCH --time=\(t)\n" }
        if let mem = s.memory { header += "#SBATCH --mem=\(mem)\n" }
        header += "#SBATCH --cpus-per-task=\(s.cpusPerTask)\n"
        let array = header + """
            #SBATCH --job-name=compress-sweep
            #SBATCH --array=0-\(pending.count - 1)
            #SBATCH --output=\(slurmDir)/task-%a.log
            # One sweep point per array task: `compress apply` on its recipe, the statistics cache shared by all.
            set -euo pipefail
            cd '\(cwd)'
            line=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" '\(list)')
            recipe=${line%%$'\\t'*}; report=${line#*$'\\t'}
            export COMPRESS_THREADS=${SLURM_CPUS_PER_TASK:-\(s.cpusPerTask)} \
            OPENBLAS_NUM_THREADS=${SLURM_CPUS_PER_TASK:-\(s.cpusPerTask)}
            resume=""; ls "${recipe%.recipe.json}.h5.stage"* >/dev/null 2>&1 && resume=--resume
            '\(exe)' apply "$recipe" --cache '\(cache)' --json $resume > "$report.part"
            mv "$report.part" "$report"

            """
        let collect = header.replacingOccurrences(of: "--cpus-per-task=\(s.cpusPerTask)",
                                                  with: "--cpus-per-task=1") + """
            #SBATCH --job-name=compress-sweep-collect
            #SBATCH --output=\(slurmDir)/collect.log
            # Runs when every array task has ended (afterany): the table and the plot from whatever finished.
            cd '\(cwd)'
            '\(exe)' sweep collect '\(dir)'

            """
        let arrayPath = (slurmDir as NSString).appendingPathComponent("array.sh"),
            collectPath = (slurmDir as NSString).appendingPathComponent("collect.sh")
        try writeFileAtomically(arrayPath, Data(array.utf8))
        try writeFileAtomically(collectPath, Data(collect.utf8))
        guard !s.dryRun else { say("sweep: wrote \(arrayPath) and \(collectPath) (dry run: not submitted)"); return [] }
        func sbatch(_ args: [String]) throws -> String {
            let proc = Process()
            proc.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            proc.arguments = ["sbatch", "--parsable"] + args
            let out = Pipe(), err = Pipe()
            proc.standardOutput = out; proc.standardError = err
            do { try proc.run() } catch {
                throw WorkbenchError("--slurm: cannot run sbatch (\(error)); is Slurm installed?")
            }
            let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            let e = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            proc.waitUntilExit()
            guard proc.terminationStatus == 0,
                let id = text.split(separator: ";").first.map({ $0.trimmingCharacters(in: .whitespacesAndNewlines) }),
                !id.isEmpty else {
                throw WorkbenchError("--slurm: sbatch failed: \(e.trimmingCharacters(in: .whitespacesAndNewlines))")
            }
            return id
        }
        let arrayID = try sbatch([arrayPath])
        let collectID = try sbatch(["--dependency=afterany:\(arrayID)", collectPath])
        say("sweep: submitted job array \(arrayID) (\(pending.count) points) and collect job \(collectID); `compress " +
            "sweep collect \(dir)` builds the table from whatever finished")
        return [arrayID, collectID]
    }
}

/// Writes `data` to a temporary file beside `path` and renames it into place.
func writeFileAtomically(_ path: String, _ data: Data) throws {
    let tmp = path + ".tmp-\(getpid())"
    do { try data.write(to: URL(fileURLWithPath: tmp)) } catch {
        throw WorkbenchError("cannot write (\(error.localizedDescription))", ErrorContext(file: path))
    }
    guard rename(tmp, path) == 0 else {
        try? FileManager.default.removeItem(atPath: tmp)
        throw WorkbenchError("cannot move the file into place", ErrorContext(file: path))
    }
}
