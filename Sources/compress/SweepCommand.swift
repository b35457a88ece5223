import ArgumentParser
import Foundation
import TensorCore
import Workbench

struct Sweep: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a recipe at many settings (a sweep), locally or as a Slurm job array, with the table and the " +
                  "plot.",
        discussion: """
            Example: compress sweep RECIPE --set stages.0.fraction=0.05,0.1,0.2 [--set PATH=...] [--zip] -o DIR

            Each --set addresses a recipe value by its path (object keys and list indices joined by dots); the points \
            are the cartesian product of the values (or, with --zip, the values paired in order). DIR receives one \
            recipe, report and (with --keep) checkpoint per point under DIR/points, plus results.csv, results.json and \
            plot.svg / plot.png. Running the same command again resumes: finished points are kept.
            """,
        subcommands: [SweepRun.self, SweepCollect.self, SweepPlot.self],
        defaultSubcommand: SweepRun.self)
}

struct SweepRun: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "run",
                                                    abstract: "Run or submit every point of a sweep (the default).")

    @Argument(help: "Recipe (.json).") var recipe: String
    @Option(name: .customLong("set"),
            help: "PATH=V1,V2,...: a recipe value and the values it takes (repeatable).") var sets: [String] = []
    @Flag(help: "Pair the --set values position by position instead of taking their product.") var zip = false
    @Option(name: .shortAndLong, help: "Sweep directory.") var output: String
    @Option(help: "Base checkpoint; overrides the recipe's 'base'.") var checkpoint: String?
    @Option(parsing: .unconditional, help: "Points run at once (each with cores / jobs threads; 1...64).") var jobs = 1
    @Option(help: "Checkpoints kept: none, best (lowest PPL) or all.") var keep = "best"
    @Option(help: "Statistics cache shared by the points (default DIR/cache).") var cache: String?
    @Flag(help: "Submit a Slurm job array (one task per point) and a collect job instead of running here.")
    var slurm = false
    @Option(help: "Slurm partition.") var partition: String?
    @Option(help: "Slurm time limit per point (e.g. 01:00:00).") var time: String?
    @Option(parsing: .unconditional, help: "Slurm CPUs per task (1...4096).") var cpusPerTask = 2
    @Option(help: "Slurm memory per task (e.g. 8G).") var mem: String?
    @Flag(help: "With --slurm: write the scripts, do not submit.") var dryRun = false
    @Option(help: "Precision of every point's matrix products (fp32 or bf16): sets the recipe's 'precision'.")
    var precision: Precision?
    @Flag(help: "Print one JSON object.") var json = false

    func validate() throws {
        guard (1...64).contains(jobs) else { throw ValidationError("--jobs must lie in 1...64, got \(jobs)") }
        guard (1...4096).contains(cpusPerTask) else {
            throw ValidationError("--cpus-per-task must lie in 1...4096, got \(cpusPerTask)")
        }
    }

    func run() throws {
        try reportingErrors(json: json) {
            if let precision, sets.contains(where: { $0.hasPrefix("precision=") }) {
                throw WorkbenchError("--precision \(precision.rawValue) and --set precision=...: give one of them")
            }
            var o = SweepOptions(recipe: recipe, sets: sets + (precision.map { ["precision=\($0.rawValue)"] } ?? []),
                                 directory: output)
            o.zip = zip
            o.checkpoint = checkpoint
            o.jobs = jobs
            guard let k = SweepOptions.Keep(rawValue: keep) else {
                throw WorkbenchError("--keep: expected none, best or all, got '\(keep)'")
            }
            o.keep = k
            o.cacheDirectory = cache
            if slurm {
                var s = SlurmOptions()
                s.partition = partition; s.time = time; s.cpusPerTask = cpusPerTask; s.memory = mem; s.dryRun = dryRun
                o.slurm = s
            }
            let r = try Workbench.sweep(o)
            print(json ? try encodeJSON(r) : r.text, terminator: json ? "\n" : "")
        }
    }
}

struct SweepCollect: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "collect",
                                                    abstract: "Build the table and plot of a sweep from whatever " +
                                                              "points finished.")
    @Argument(help: "Sweep directory.") var directory: String
    @Option(help: "Checkpoints kept: none, best or all.") var keep = "all"
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        try reportingErrors(json: json) {
            guard let k = SweepOptions.Keep(rawValue: keep) else {
                throw WorkbenchError("--keep: expected none, best or all, got '\(keep)'")
            }
            let r = try Workbench.collectSweep(directory: directory, keep: k)
            print(json ? try encodeJSON(r) : r.text, terminator: json ? "\n" : "")
        }
    }
}

struct SweepPlot: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "plot",
                                                    abstract: "Overlay several sweeps: PPL or KLD (log) or " +
                                                              "same-top-p against size, Pareto fronts marked.")
    @Argument(help: "Sweep directories.") var directories: [String]
    @Option(help: "The y axis: ppl, kld, kld_p99 or same_top_p (the columns of results.csv).") var metric = "ppl"
    @Option(name: .shortAndLong, help: "Output path without extension (writes .svg and .png).") var output = "sweeps"
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        try reportingErrors(json: json) {
            guard !directories.isEmpty else { throw WorkbenchError("sweep plot: give at least one sweep directory") }
            for d in directories
                where !FileManager.default.fileExists(atPath: (d as NSString).appendingPathComponent("results.json")) {
                throw WorkbenchError("\(d): no results.json (run `compress sweep collect \(d)` first)")
            }
            guard ["ppl", "kld", "kld_p99", "same_top_p"].contains(metric) else {
                throw WorkbenchError("--metric: expected ppl, kld, kld_p99 or same_top_p, found '\(metric)'")
            }
            let files = try Workbench.plotSweeps(directories, output: output, metric: metric)
            print(json ? try encodeJSON(["plots": files]) : files.joined(separator: "\n"))
        }
    }
}
