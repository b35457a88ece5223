// The CPU's own peak for the two matrix-product instructions our precisions use (issue 29): AVX-512 float32 FMA
// (vfmadd231ps, what OpenBLAS's sgemm runs) and AVX512-BF16's dot product (vdpbf16ps, what oneDNN's bf16 kernels
// run without AMX). Each thread runs a loop of independent register-only instructions (12 accumulators, enough to
// hide the latency), so the figure is the instruction throughput, the ceiling any GEMM can reach.
//
//   cc -O3 -pthread -o /tmp/cpu_peak benchmarks/cpu_peak.c && /tmp/cpu_peak [threads]
//
// Flops: one vfmadd231ps zmm = 16 lanes × 2 = 32; one vdpbf16ps zmm = 16 lanes × 2 pairs × 2 = 64.
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define ITERATIONS 100000000L
#define ACC 12

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

__attribute__((target("avx512f"))) static void *fp32_loop(void *sink) {
    __m512 acc[ACC];
    for (int i = 0; i < ACC; i++) acc[i] = _mm512_setzero_ps();
    __m512 a = _mm512_set1_ps(1.0f), b = _mm512_set1_ps(1e-9f);
    for (long i = 0; i < ITERATIONS / ACC; i++) {
#pragma GCC unroll 12
        for (int j = 0; j < ACC; j++) acc[j] = _mm512_fmadd_ps(a, b, acc[j]);
        __asm__ volatile("" : "+v"(a));
    }
    float s = 0;
    for (int i = 0; i < ACC; i++) s += _mm512_reduce_add_ps(acc[i]);
    *(float *)sink = s;
    return NULL;
}

__attribute__((target("avx512f,avx512bf16"))) static void *bf16_loop(void *sink) {
    __m512 acc[ACC];
    for (int i = 0; i < ACC; i++) acc[i] = _mm512_setzero_ps();
    __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3080);
    for (long i = 0; i < ITERATIONS / ACC; i++) {
#pragma GCC unroll 12
        for (int j = 0; j < ACC; j++) acc[j] = _mm512_dpbf16_ps(acc[j], a, b);
        __asm__ volatile("" : "+v"(a));
    }
    float s = 0;
    for (int i = 0; i < ACC; i++) s += _mm512_reduce_add_ps(acc[i]);
    *(float *)sink = s;
    return NULL;
}

/// GFLOP/s of `threads` threads each running `loop` (flops per instruction `flops`), best of 3.
static double measure(void *(*loop)(void *), int threads, double flops) {
    double best = 0;
    for (int round = 0; round < 3; round++) {
        pthread_t t[64];
        float sink[64];
        double start = now();
        for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, loop, &sink[i]);
        for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
        double seconds = now() - start;
        double g = (double)(ITERATIONS / ACC * ACC) * flops * threads / seconds / 1e9;
        if (g > best) best = g;
    }
    return best;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    if (threads < 1 || threads > 64) threads = 1;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f")) {
        printf("no AVX-512 on this CPU\n");
        return 0;
    }
    double f = measure(fp32_loop, threads, 32);
    printf("float32 FMA (vfmadd231ps zmm), %d thread(s): %.1f GFLOP/s\n", threads, f);
    if (__builtin_cpu_supports("avx512bf16")) {
        double b = measure(bf16_loop, threads, 64);
        printf("bf16 dot product (vdpbf16ps zmm), %d thread(s): %.1f GFLOP/s (%.2fx float32)\n", threads, b, b / f);
    } else {
        printf("no AVX512-BF16 on this CPU\n");
    }
    return 0;
}
