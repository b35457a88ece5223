// swift-tools-version:6.0
import PackageDescription

// Module graph, lowest layer first; a module depends only on modules in layers below its own
// (`python3 tools/code_metrics.py --check` enforces it on imports and on the dependencies below):
//  10 compress (CLI)
//   9 Workbench (the runner, sweeps, commands; the stage registry with ExportStage)
//   8 Passes
//   7 Recipes (recipe format, stage contract, distill stage), Export (server formats)
//   6 Training (its state file is a Checkpoint tensor archive), Import (foreign formats into checkpoints)
//   5 Checkpoint, Evaluation
//   4 Model (ModelConfig, Families/, LinearWeight, TransformerDecoder)
//   3 Quantization, GGUF, Safetensors
//   2 TensorCore, MappedIO, Tokenizer
//   1 CBLAS, CHDF5, DNNLBridge (oneDNN bf16 matmul), CKernels (AVX-512 / AVX2 kernels), SafeFiles, JSONKeys
//   0 Diagnostics (ErrorContext: the file, stage, key, tensor, expected and found of an error)
let package = Package(
    name: "compress",
    products: [
        .executable(name: "compress", targets: ["compress"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-numerics", from: "1.0.0"),
    ],
    targets: [
        .systemLibrary(name: "CBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CHDF5", pkgConfig: "hdf5", providers: [.apt(["libhdf5-dev"])]),
        .target(name: "DNNLBridge", linkerSettings: [.linkedLibrary("dnnl"), .linkedLibrary("gomp")]),
        .target(name: "CKernels"),
        .target(name: "TensorCore", dependencies: [
            "CBLAS", "DNNLBridge", "CKernels", .product(name: "Numerics", package: "swift-numerics"),
        ]),
        .target(name: "Model", dependencies: ["Diagnostics", "TensorCore", "Quantization", "JSONKeys"]),
        .target(name: "Checkpoint", dependencies: ["Diagnostics", "Model", "CHDF5", "Quantization", "SafeFiles"]),
        .target(name: "Evaluation", dependencies: ["Diagnostics", "Model", "MappedIO", "SafeFiles"]),
        .target(name: "Diagnostics"),
        .target(name: "SafeFiles", dependencies: ["Diagnostics"]),
        .target(name: "MappedIO", dependencies: ["Diagnostics", "SafeFiles"]),
        .target(name: "JSONKeys", dependencies: ["Diagnostics"]),
        .target(name: "GGUF", dependencies: ["Diagnostics", "MappedIO"]),
        .target(name: "Safetensors", dependencies: ["Diagnostics", "MappedIO", "JSONKeys", "SafeFiles"]),
        .target(name: "Tokenizer", dependencies: ["Diagnostics"]),
        .target(name: "Import", dependencies: [
            "Diagnostics", "Checkpoint", "GGUF", "Safetensors", "JSONKeys", "SafeFiles", "Quantization",
        ]),
        .target(name: "Export", dependencies: [
            "Diagnostics", "Checkpoint", "GGUF", "Safetensors", "Import", "Quantization", "SafeFiles", "Tokenizer",
        ]),
        .target(name: "Training", dependencies: ["Diagnostics", "Checkpoint"]),
        .target(name: "Recipes", dependencies: ["Diagnostics", "Training", "Checkpoint", "SafeFiles"]),
        .target(name: "Passes", dependencies: ["Diagnostics", "Recipes", "Quantization"]),
        .target(name: "Quantization", dependencies: ["Diagnostics", "TensorCore", "CKernels"]),
        .target(name: "Workbench", dependencies: [
            "Diagnostics", "Import", "Export", "Evaluation", "Tokenizer", "Training", "Passes", "Quantization",
            "SafeFiles",
        ]),
        .executableTarget(name: "compress", dependencies: [
            "Diagnostics", "Workbench", "Training", "Export", "Evaluation",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // Fuzz harnesses (README, "Fuzzing"): libFuzzer entry points under `-DFUZZING --sanitize=fuzzer`, replay tools
        // otherwise (so `swift build` and `swift test` compile them too).
        .target(name: "FuzzSupport", path: "Fuzz/FuzzSupport"),
        .executableTarget(name: "fuzz-gguf", dependencies: ["FuzzSupport", "Import", "Workbench"], path: "Fuzz/gguf"),
        .executableTarget(name: "fuzz-safetensors", dependencies: ["FuzzSupport", "Safetensors"], path: "Fuzz/safetensors"),
        .executableTarget(name: "fuzz-checkpoint", dependencies: ["FuzzSupport", "Checkpoint", "CHDF5", "Model", "Workbench"],
                          path: "Fuzz/checkpoint"),
        .executableTarget(name: "fuzz-tokenizer", dependencies: ["FuzzSupport", "Import", "Workbench"], path: "Fuzz/tokenizer"),
        .executableTarget(name: "fuzz-recipe", dependencies: ["FuzzSupport", "Workbench", "Recipes"], path: "Fuzz/recipe"),
        .executableTarget(name: "fuzz-state", dependencies: ["FuzzSupport", "Checkpoint", "Model", "Training"], path: "Fuzz/state"),
        .testTarget(name: "DiagnosticsTests", dependencies: ["Diagnostics"]),
        .testTarget(name: "TensorCoreTests", dependencies: ["TensorCore"]),
        .testTarget(name: "ModelTests", dependencies: ["Model", "Checkpoint", "Evaluation"]),
        .testTarget(name: "QuantizationTests", dependencies: ["Quantization", "Checkpoint", "Model"]),
        .testTarget(name: "RecipesTests", dependencies: [
            "Diagnostics", "Recipes", "Passes", "Evaluation", "Import", "Workbench",
        ]),
        .testTarget(name: "TrainingTests", dependencies: ["Training", "Checkpoint", "Import"]),
        .testTarget(name: "CheckpointTests", dependencies: ["Diagnostics", "Checkpoint", "CHDF5", "Quantization"]),
        .testTarget(name: "ImportersTests", dependencies: [
            "Diagnostics", "GGUF", "Safetensors", "JSONKeys", "Quantization", "Model",
        ], exclude: ["Fixtures"]),
        .testTarget(name: "ImportTests", dependencies: ["Import"]),
        .testTarget(name: "ExportTests", dependencies: ["Export", "Import", "Checkpoint", "GGUF", "Safetensors", "Recipes", "Quantization", "Model", "TensorCore", "Tokenizer", "Workbench"]),
        .testTarget(name: "TokenizerTests", dependencies: ["Tokenizer", "GGUF"], resources: [.copy("Fixtures")]),
        .testTarget(name: "CLITests", dependencies: [
            "Diagnostics", "compress", "Workbench", "Checkpoint", "CHDF5", "TensorCore",
        ]),
    ],
    swiftLanguageModes: [.v5]
)
