import CBLAS
import Foundation

/// The x86 features that decide which OpenBLAS kernels can run: cpuid bits, and whether the OS saves the
/// wider registers on a context switch (XCR0), without which AVX / AVX-512 instructions fault.
public struct CPUFeatures: Equatable, Sendable {
    public enum Vendor: Sendable { case intel, amd, other }
    public var vendor = Vendor.other
    public var fma = false
    public var avx2 = false
    public var avx512f = false
    public var avx512bw = false
    public var avx512vl = false
    public var avx512bf16 = false
    /// AMX tiles with bf16 products (cpuid leaf 7: amx_tile, amx_bf16).
    public var amxBF16 = false
    /// XCR0 bits 1-2: the OS saves SSE and AVX (ymm) state.
    public var osSavesAVX = false
    /// XCR0 bits 5-7: the OS saves AVX-512 state (opmask, upper zmm0-15, zmm16-31).
    public var osSavesAVX512 = false
    /// XCR0 bits 17-18: the OS supports AMX tile state (a process still asks for it: `MatrixProduct.select`).
    public var osSavesAMX = false

    public init(vendor: Vendor = .other, fma: Bool = false, avx2: Bool = false, avx512f: Bool = false,
                avx512bw: Bool = false, avx512vl: Bool = false, avx512bf16: Bool = false,
                osSavesAVX: Bool = false, osSavesAVX512: Bool = false, amxBF16: Bool = false,
                osSavesAMX: Bool = false) {
        self.vendor = vendor; self.fma = fma; self.avx2 = avx2; self.avx512f = avx512f; self.avx512bw = avx512bw
        self.avx512vl = avx512vl; self.avx512bf16 = avx512bf16; self.osSavesAVX = osSavesAVX
        self.osSavesAVX512 = osSavesAVX512; self.amxBF16 = amxBF16; self.osSavesAMX = osSavesAMX
    }

    /// This machine's features, read with cpuid and xgetbv (all false off x86).
    public static var current: CPUFeatures {
        func cpuid(_ leaf: UInt32, _ subleaf: UInt32 = 0) -> [UInt32] {
            var r = [UInt32](repeating: 0, count: 4)
            r.withUnsafeMutableBufferPointer { compress_cpuid(leaf, subleaf, $0.baseAddress) }
            return r
        }
        func bit(_ word: UInt32, _ i: Int) -> Bool { word & (1 << UInt32(i)) != 0 }
        let l0 = cpuid(0), l1 = cpuid(1), l7 = cpuid(7), l71 = cpuid(7, 1)
        let vendorBytes = [l0[1], l0[3], l0[2]].flatMap { w in
            (0..<4).map { UInt8(truncatingIfNeeded: w >> (8 * $0)) }
        }
        let vendor: Vendor
        switch String(decoding: vendorBytes, as: UTF8.self) {
        case "GenuineIntel": vendor = .intel
        case "AuthenticAMD", "HygonGenuine": vendor = .amd
        default: vendor = .other
        }
        let xcr0 = compress_xcr0()
        return CPUFeatures(
            vendor: vendor, fma: bit(l1[2], 12), avx2: bit(l7[1], 5), avx512f: bit(l7[1], 16), avx512bw: bit(l7[1], 30),
            avx512vl: bit(l7[1], 31), avx512bf16: l0[0] >= 7 && l7[0] >= 1 && bit(l71[0], 5),
            osSavesAVX: bit(l1[2], 28) && xcr0 & 0x6 == 0x6, osSavesAVX512: xcr0 & 0xE0 == 0xE0,
            amxBF16: bit(l7[3], 22) && bit(l7[3], 24), osSavesAMX: xcr0 & 0x60000 == 0x60000)
    }
}

/// Which OpenBLAS kernels run, chosen before OpenBLAS starts.
///
/// Debian's OpenBLAS 0.3.21 is a DYNAMIC_ARCH build that picks its kernels from the CPU model number when the
/// library loads. It does not know recent CPUs (our Sapphire Rapids machines among them) and then falls back to
/// its Prescott (SSE3) kernels: a third of the speed (benchmarks/README.md). `OPENBLAS_CORETYPE` overrides that
/// choice, but only when set before the library loads, so the CLI's entry point calls `reexecWithPreferredCore()`
/// first: with the variable unset it sets it from the CPU's features and re-executes the program.
public enum BLASKernels {
    /// OpenBLAS's override of its kernel choice.
    public static let variable = "OPENBLAS_CORETYPE"
    /// Set to the same value as `variable` when we chose it (so a report can tell, and we never re-exec twice).
    public static let marker = "COMPRESS_AUTO_OPENBLAS_CORETYPE"

    /// The best OpenBLAS 0.3.21 kernels for these features, or nil to leave OpenBLAS's own choice.
    /// AVX-512 (F, BW, VL, saved by the OS): Cooperlake with BF16, else SkylakeX (their sgemm measured equal
    /// within noise, both well ahead of Haswell in `compress bench`: benchmarks/README.md). AVX2 + FMA: Zen on
    /// AMD, Haswell otherwise. Older CPUs: nil.
    public static func preferredCore(for f: CPUFeatures) -> String? {
        guard f.avx2, f.fma, f.osSavesAVX else { return nil }
        if f.avx512f, f.avx512bw, f.avx512vl, f.osSavesAVX512 { return f.avx512bf16 ? "Cooperlake" : "SkylakeX" }
        return f.vendor == .amd ? "Zen" : "Haswell"
    }

    /// Who chose the kernels this process runs.
    public enum Choice: String, Sendable {
        case automatic = "automatic"
        case user = "OPENBLAS_CORETYPE"
        case openBLAS = "OpenBLAS's detection"
    }

    public static var choice: Choice {
        let env = ProcessInfo.processInfo.environment
        guard let value = env[variable], !value.isEmpty else { return .openBLAS }
        return env[marker] == value ? .automatic : .user
    }

    /// When `OPENBLAS_CORETYPE` is unset (or empty) and the CPU has better kernels than OpenBLAS may detect,
    /// sets it and re-executes this program (/proc/self/exe, same arguments); returns otherwise, and if the
    /// exec fails. Call before any BLAS work. A value set by the user is left alone; `marker` prevents loops.
    public static func reexecWithPreferredCore() {
        let env = ProcessInfo.processInfo.environment
        guard (env[variable] ?? "").isEmpty, env[marker] == nil, let core = preferredCore(for: .current) else { return }
        setenv(variable, core, 1)
        setenv(marker, core, 1)
        execv("/proc/self/exe", CommandLine.unsafeArgv)
        unsetenv(variable)
        unsetenv(marker)
    }
}
