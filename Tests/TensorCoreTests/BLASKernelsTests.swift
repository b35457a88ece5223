import Foundation
import XCTest
@testable import TensorCore

/// The choice of OpenBLAS kernels from CPU features, and the features read on this machine.
final class BLASKernelsTests: XCTestCase {
    func features(_ vendor: CPUFeatures.Vendor, avx2: Bool = true, avx512: Bool = false, bf16: Bool = false,
                  osAVX: Bool = true, osAVX512: Bool = true) -> CPUFeatures {
        CPUFeatures(vendor: vendor, fma: avx2, avx2: avx2, avx512f: avx512, avx512bw: avx512, avx512vl: avx512,
                    avx512bf16: bf16, osSavesAVX: osAVX, osSavesAVX512: osAVX512)
    }

    func testPreferredCoreForFeatureSets() {
        let cases: [(String, CPUFeatures, String?)] = [
            ("Sapphire Rapids / Cooper Lake", features(.intel, avx512: true, bf16: true), "Cooperlake"),
            ("Skylake-SP / Ice Lake", features(.intel, avx512: true), "SkylakeX"),
            ("AVX-512 the OS does not save", features(.intel, avx512: true, bf16: true, osAVX512: false), "Haswell"),
            ("Haswell .. Alder Lake", features(.intel), "Haswell"),
            ("Zen 1-3", features(.amd), "Zen"),
            ("Zen 4", features(.amd, avx512: true, bf16: true), "Cooperlake"),
            ("AVX2 on another vendor", features(.other), "Haswell"),
            ("AVX2 without OS AVX state", features(.intel, osAVX: false), nil),
            ("no AVX2 (Sandy Bridge, older)", features(.intel, avx2: false), nil),
            ("nothing (not x86)", CPUFeatures(), nil),
        ]
        for (name, f, core) in cases { XCTAssertEqual(BLASKernels.preferredCore(for: f), core, name) }
        var noBW = features(.intel, avx512: true)
        noBW.avx512bw = false  // AVX-512F alone (Knights Landing): not enough for the SkylakeX kernels
        XCTAssertEqual(BLASKernels.preferredCore(for: noBW), "Haswell")
    }

    /// cpuid agrees with the kernel's view of the CPU in /proc/cpuinfo.
    func testCurrentFeaturesMatchProcCpuinfo() throws {
        guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
              let line = info.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) else {
            throw XCTSkip("no /proc/cpuinfo flags")
        }
        let flags = Set(line.split(separator: " ").map(String.init))
        let f = CPUFeatures.current
        XCTAssertEqual(f.fma, flags.contains("fma"))
        XCTAssertEqual(f.avx2, flags.contains("avx2"))
        XCTAssertEqual(f.avx512f, flags.contains("avx512f"))
        XCTAssertEqual(f.avx512bw, flags.contains("avx512bw"))
        XCTAssertEqual(f.avx512vl, flags.contains("avx512vl"))
        XCTAssertEqual(f.avx512bf16, flags.contains("avx512_bf16"))
        // Linux lists AVX flags only when it saves their state.
        if flags.contains("avx2") { XCTAssertTrue(f.osSavesAVX) }
        if flags.contains("avx512f") { XCTAssertTrue(f.osSavesAVX512) }
    }
}
