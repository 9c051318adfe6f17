/* A small FMA-throughput probe: how many fp32 FLOP/s this machine can do.
 * Used by `fastnn bench kernels` to express every figure as a fraction of the
 * measured peak.  Twelve independent accumulator chains hide the FMA latency
 * (4 cycles x 2 pipes on Zen 3 need >= 8 chains). */
#include "cpu.h"
#include <stddef.h>

#if FNN_X86
#include <immintrin.h>

FNN_TARGET_AVX2
static float fma_loop_avx2(long iters, float seed)
{
    __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
    /* distinct seeds: identical chains would be merged by the compiler into
     * one latency-bound chain, and the probe would over-report the peak */
    __m256 c0 = _mm256_set1_ps(seed), c1 = _mm256_set1_ps(seed + 1.0f);
    __m256 c2 = _mm256_set1_ps(seed + 2.0f), c3 = _mm256_set1_ps(seed + 3.0f);
    __m256 c4 = _mm256_set1_ps(seed + 4.0f), c5 = _mm256_set1_ps(seed + 5.0f);
    __m256 c6 = _mm256_set1_ps(seed + 6.0f), c7 = _mm256_set1_ps(seed + 7.0f);
    __m256 c8 = _mm256_set1_ps(seed + 8.0f), c9 = _mm256_set1_ps(seed + 9.0f);
    __m256 c10 = _mm256_set1_ps(seed + 10.0f), c11 = _mm256_set1_ps(seed + 11.0f);
    for (long i = 0; i < iters; i++) {
        c0 = _mm256_fmadd_ps(c0, a, b); c1 = _mm256_fmadd_ps(c1, a, b);
        c2 = _mm256_fmadd_ps(c2, a, b); c3 = _mm256_fmadd_ps(c3, a, b);
        c4 = _mm256_fmadd_ps(c4, a, b); c5 = _mm256_fmadd_ps(c5, a, b);
        c6 = _mm256_fmadd_ps(c6, a, b); c7 = _mm256_fmadd_ps(c7, a, b);
        c8 = _mm256_fmadd_ps(c8, a, b); c9 = _mm256_fmadd_ps(c9, a, b);
        c10 = _mm256_fmadd_ps(c10, a, b); c11 = _mm256_fmadd_ps(c11, a, b);
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(c0, c1), _mm256_add_ps(c2, c3)),
                             _mm256_add_ps(_mm256_add_ps(c4, c5), _mm256_add_ps(c6, c7)));
    s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(c8, c9), _mm256_add_ps(c10, c11)));
    float out[8];
    _mm256_storeu_ps(out, s);
    return out[0] + out[7];
}
#endif

static float fma_loop_scalar(long iters, float seed)
{
    float c[8];
    for (int j = 0; j < 8; j++) c[j] = seed + j;
    for (long i = 0; i < iters; i++)
        for (int j = 0; j < 8; j++) c[j] = c[j] * 0.999999f + 1e-7f;
    return c[0] + c[7];
}

#if FNN_X86
/* vdpbf16ps: each instruction adds 16 lanes x 2 bf16 products (64 FLOPs).
 * The inputs are the bf16 pairs of ~1.0 and ~1e-7, so the sums stay finite. */
FNN_TARGET_AVX512BF16
static float bf16_loop(long iters, float seed)
{
    __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f803f80), b = (__m512bh)_mm512_set1_epi32(0x33d633d6);
    __m512 c[12];
    for (int j = 0; j < 12; j++)
        c[j] = _mm512_set1_ps(seed + (float)j);
    for (long i = 0; i < iters; i++) {
#pragma GCC unroll 12
        for (int j = 0; j < 12; j++)
            c[j] = _mm512_dpbf16_ps(c[j], a, b);
    }
    __m512 s = c[0];
    for (int j = 1; j < 12; j++)
        s = _mm512_add_ps(s, c[j]);
    return _mm512_reduce_add_ps(s);
}
#endif

/* The bf16 peak probe: like fnn_fma_probe with vdpbf16ps (12 x 64 FLOPs per
 * iteration); returns 0 without running when the level is below avx512_bf16. */
double fnn_bf16_probe(long iters, int nthreads, float *sink)
{
    if (!fnn_use_avx512bf16())
        return 0.0;
    float acc = 0.0f;
    if (nthreads < 1) nthreads = 1;
#ifdef FASTNN_HAVE_OPENMP
#pragma omp parallel num_threads(nthreads) reduction(+:acc)
#else
    nthreads = 1;
#endif
    {
#if FNN_X86
        acc += bf16_loop(iters, 1.0f);
#endif
    }
    *sink = acc;
    return 12.0 * 64.0 * (double)iters * (double)nthreads;
}

/* Runs `iters` iterations on each of `nthreads` threads; returns the FLOPs
 * executed in total (the caller times it).  *sink defeats dead-code removal. */
double fnn_fma_probe(long iters, int nthreads, float *sink)
{
    int avx2 = fnn_use_avx2();
    double per_iter = avx2 ? 12.0 * 8.0 * 2.0 : 8.0 * 2.0;
    float acc = 0.0f;
    if (nthreads < 1) nthreads = 1;
#ifdef FASTNN_HAVE_OPENMP
#pragma omp parallel num_threads(nthreads) reduction(+:acc)
#endif
    {
#if FNN_X86
        if (avx2) acc += fma_loop_avx2(iters, 1.0f);
        else
#endif
        acc += fma_loop_scalar(iters, 1.0f);
    }
    *sink = acc;
#ifdef FASTNN_HAVE_OPENMP
    return per_iter * (double)iters * (double)nthreads;
#else
    return per_iter * (double)iters;
#endif
}
