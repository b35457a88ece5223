#include <cblas.h>
#include <stdint.h>
#include <stddef.h>

// LAPACK routines OpenBLAS ships (Debian's libopenblas includes LAPACK); column-major, Fortran calling
// convention (the trailing length is Fortran's hidden string length of `uplo`).
void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info, size_t uplo_len);
void dpotri_(const char *uplo, const int *n, double *a, const int *lda, int *info, size_t uplo_len);

// CPU feature probes for choosing OpenBLAS's kernels (TensorCore/BLASKernels.swift); zero off x86.
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

/// Registers (eax, ebx, ecx, edx) of cpuid leaf `leaf`, sub-leaf `subleaf`; all zero if the leaf is absent.
static inline void compress_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4]) {
    out[0] = out[1] = out[2] = out[3] = 0;
    if (__get_cpuid_max(leaf & 0x80000000u, 0) < leaf) return;
    __cpuid_count(leaf, subleaf, out[0], out[1], out[2], out[3]);
}

/// XCR0, the register states the OS saves on context switch (bits 1-2 SSE/AVX, 5-7 AVX-512); 0 without OSXSAVE.
static inline uint64_t compress_xcr0(void) {
    uint32_t r[4];
    compress_cpuid(1, 0, r);
    if (!(r[2] & (1u << 27))) return 0;
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
#else
static inline void compress_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4]) {
    (void)leaf; (void)subleaf;
    out[0] = out[1] = out[2] = out[3] = 0;
}
static inline uint64_t compress_xcr0(void) { return 0; }
#endif
