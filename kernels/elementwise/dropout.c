/* Inverted dropout (see elementwise.h and fastnn/kernels/elementwise/reference.py).
 *
 * Element i is kept when hash(i, key) >= threshold, a 32-bit hash of the
 * element's index keyed by a 64-bit key that the layer draws from its numpy
 * Generator once per forward.  So the mask depends on (key, i) only: not on
 * the thread count, the chunking or the SIMD level, and the numpy reference
 * reproduces it bit for bit.  The layer used to draw a float per element with
 * numpy and build the scaled mask in two more passes (~1.35 ms per convnet
 * step at 128x1600, issue 11); this is one pass that writes y and a byte mask.
 *
 * The hash: two rounds of a 32-bit xorshift-multiply finaliser (the
 * "lowbias32" constants), the key's low word xored in before the first round,
 * the high word added before the second; the index's high word (arrays of
 * more than 2**32 elements) is folded into the first round.  Plain uint32
 * arithmetic: eight lanes of vpmulld per step in the AVX2 path (gcc does not vectorise
 * the plain loop: the byte store and the select defeat it).
 */
#include <stdint.h>
#include <string.h>

#include "cpu.h"
#if FNN_X86
#include <immintrin.h>
#endif
#include "elementwise.h"

#define DO_CHUNK 16384     /* elements per OpenMP work item */
/* Below this, one thread: ~0.7 ns per element on one core, so 1M elements is
 * ~0.7 ms.  A convnet's 128x1600 dropout (~0.14 ms for forward and backward)
 * gains at most 0.07 ms from a second thread, and loses milliseconds whenever
 * the partner thread is descheduled on a shared machine (measured: a 24 ms
 * median at load average 7). */
#define DO_PAR_MIN (1 << 20)

#define INLINE static inline __attribute__((always_inline))

INLINE uint32_t mix32(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x21f0aaadu;
    x ^= x >> 15;
    x *= 0xd35a2d97u;
    x ^= x >> 15;
    return x;
}

INLINE uint32_t drop_hash(uint64_t i, uint64_t key)
{
    uint32_t x = (uint32_t)i ^ (uint32_t)key ^ ((uint32_t)(i >> 32) * 0x9e3779b9u);
    x = mix32(x);
    x += (uint32_t)(key >> 32);
    return mix32(x);
}

#define DEFINE_DROPOUT(REAL, SFX)                                                              \
INLINE void fwd_body_##SFX(ptrdiff_t lo, ptrdiff_t n, const REAL *x, REAL *y, uint8_t *mask,  \
                           uint64_t key, uint32_t threshold, REAL scale)                      \
{                                                                                             \
    for (ptrdiff_t i = lo; i < lo + n; i++) {                                                 \
        uint8_t keep = drop_hash((uint64_t)i, key) >= threshold;                              \
        mask[i] = keep;                                                                       \
        y[i] = keep ? x[i] * scale : (REAL)0;                                                 \
    }                                                                                         \
}                                                                                             \
INLINE void bwd_body_##SFX(ptrdiff_t lo, ptrdiff_t n, const REAL *dy, const uint8_t *mask,    \
                           REAL *dx, REAL scale)                                              \
{                                                                                             \
    for (ptrdiff_t i = lo; i < lo + n; i++)                                                   \
        dx[i] = mask[i] ? dy[i] * scale : (REAL)0;                                            \
}                                                                                             \
static void fwd_base_##SFX(ptrdiff_t lo, ptrdiff_t n, const REAL *x, REAL *y, uint8_t *mask,  \
                           uint64_t key, uint32_t threshold, REAL scale)                      \
{ fwd_body_##SFX(lo, n, x, y, mask, key, threshold, scale); }                                 \
static void bwd_base_##SFX(ptrdiff_t lo, ptrdiff_t n, const REAL *dy, const uint8_t *mask,    \
                           REAL *dx, REAL scale)                                              \
{ bwd_body_##SFX(lo, n, dy, mask, dx, scale); }

#define DEFINE_DRIVERS(REAL, SFX)                                                              \
void fnn_dropout_forward_##SFX(ptrdiff_t n, const REAL *x, REAL *y, uint8_t *mask,            \
                               uint64_t key, uint32_t threshold, REAL scale, int nthreads)    \
{                                                                                             \
    void (*f)(ptrdiff_t, ptrdiff_t, const REAL *, REAL *, uint8_t *, uint64_t, uint32_t,      \
              REAL) = PICK_AVX2(fwd_avx2_##SFX, fwd_base_##SFX);                              \
    ptrdiff_t chunks = (n + DO_CHUNK - 1) / DO_CHUNK;                                         \
    if (nthreads < 1)                                                                         \
        nthreads = 1;                                                                         \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1 && n >= DO_PAR_MIN)") \
    for (ptrdiff_t k = 0; k < chunks; k++) {                                                  \
        ptrdiff_t lo = k * DO_CHUNK, len = n - lo < DO_CHUNK ? n - lo : DO_CHUNK;             \
        f(lo, len, x, y, mask, key, threshold, scale);                                        \
    }                                                                                         \
}                                                                                             \
void fnn_dropout_backward_##SFX(ptrdiff_t n, const REAL *dy, const uint8_t *mask, REAL *dx,   \
                                REAL scale, int nthreads)                                     \
{                                                                                             \
    void (*f)(ptrdiff_t, ptrdiff_t, const REAL *, const uint8_t *, REAL *, REAL) =            \
        PICK_AVX2(bwd_avx2_##SFX, bwd_base_##SFX);                                            \
    ptrdiff_t chunks = (n + DO_CHUNK - 1) / DO_CHUNK;                                         \
    if (nthreads < 1)                                                                         \
        nthreads = 1;                                                                         \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1 && n >= DO_PAR_MIN)") \
    for (ptrdiff_t k = 0; k < chunks; k++) {                                                  \
        ptrdiff_t lo = k * DO_CHUNK, len = n - lo < DO_CHUNK ? n - lo : DO_CHUNK;             \
        f(lo, len, dy, mask, dx, scale);                                                      \
    }                                                                                         \
}

DEFINE_DROPOUT(float, f32)
DEFINE_DROPOUT(double, f64)

#if FNN_X86
/* AVX2: eight elements per step, the same hash in 32-bit lanes.  An 8-aligned
 * block never crosses a multiple of 2**32, so the index's high word is one
 * value per block.  Tails go through the plain bodies. */
FNN_TARGET_AVX2 static inline __m256i mix32_256(__m256i x)
{
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
    x = _mm256_mullo_epi32(x, _mm256_set1_epi32((int)0x21f0aaadu));
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 15));
    x = _mm256_mullo_epi32(x, _mm256_set1_epi32((int)0xd35a2d97u));
    return _mm256_xor_si256(x, _mm256_srli_epi32(x, 15));
}

/* all-ones lanes where element lo+0..7 is dropped (hash < threshold) */
FNN_TARGET_AVX2 static inline __m256i drop_lanes(ptrdiff_t lo, uint64_t key, __m256i thr_s)
{
    const __m256i step = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i sign = _mm256_set1_epi32((int)0x80000000u);
    uint64_t i = (uint64_t)lo;
    uint32_t base = (uint32_t)i ^ (uint32_t)key ^ ((uint32_t)(i >> 32) * 0x9e3779b9u);
    /* (i + j) ^ k == (i ^ k) + j only without carries; keep the xor exact instead */
    __m256i idx = _mm256_add_epi32(_mm256_set1_epi32((int)(uint32_t)i), step);
    __m256i x = _mm256_xor_si256(idx, _mm256_set1_epi32((int)(base ^ (uint32_t)i)));
    x = mix32_256(x);
    x = _mm256_add_epi32(x, _mm256_set1_epi32((int)(uint32_t)(key >> 32)));
    x = mix32_256(x);
    /* unsigned x < thr  <=>  signed (x ^ sign) < (thr ^ sign) */
    return _mm256_cmpgt_epi32(thr_s, _mm256_xor_si256(x, sign));
}

FNN_TARGET_AVX2 static void fwd_avx2_f32(ptrdiff_t lo, ptrdiff_t n, const float *x, float *y,
                                         uint8_t *mask, uint64_t key, uint32_t threshold,
                                         float scale)
{
    const __m256i thr_s = _mm256_set1_epi32((int)(threshold ^ 0x80000000u));
    const __m256i one = _mm256_set1_epi32(1);
    const __m256 vs = _mm256_set1_ps(scale);
    ptrdiff_t i = lo, end = lo + n;
    for (; i + 8 <= end; i += 8) {
        __m256i drop = drop_lanes(i, key, thr_s);
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), vs);
        _mm256_storeu_ps(y + i, _mm256_andnot_ps(_mm256_castsi256_ps(drop), v));
        /* 0/1 per lane, packed to bytes: lanes 0-3 land in the low 128 bits, 4-7 in the high */
        __m256i keep = _mm256_andnot_si256(drop, one);
        keep = _mm256_packus_epi32(keep, keep);
        keep = _mm256_packus_epi16(keep, keep);
        uint32_t lo4 = (uint32_t)_mm_cvtsi128_si32(_mm256_castsi256_si128(keep));
        uint32_t hi4 = (uint32_t)_mm_cvtsi128_si32(_mm256_extracti128_si256(keep, 1));
        memcpy(mask + i, &lo4, 4);
        memcpy(mask + i + 4, &hi4, 4);
    }
    if (i < end)
        fwd_body_f32(i, end - i, x, y, mask, key, threshold, scale);
}

FNN_TARGET_AVX2 static void bwd_avx2_f32(ptrdiff_t lo, ptrdiff_t n, const float *dy,
                                         const uint8_t *mask, float *dx, float scale)
{
    const __m256 vs = _mm256_set1_ps(scale);
    ptrdiff_t i = lo, end = lo + n;
    for (; i + 8 <= end; i += 8) {
        __m256i m = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(mask + i)));
        __m256 dropped = _mm256_castsi256_ps(_mm256_cmpeq_epi32(m, _mm256_setzero_si256()));
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(dy + i), vs);
        _mm256_storeu_ps(dx + i, _mm256_andnot_ps(dropped, v));
    }
    if (i < end)
        bwd_body_f32(i, end - i, dy, mask, dx, scale);
}

/* float64 is rare (the training default is float32): the plain bodies, compiled for AVX2 */
FNN_TARGET_AVX2 static void fwd_avx2_f64(ptrdiff_t lo, ptrdiff_t n, const double *x, double *y,
                                         uint8_t *mask, uint64_t key, uint32_t threshold,
                                         double scale)
{ fwd_body_f64(lo, n, x, y, mask, key, threshold, scale); }
FNN_TARGET_AVX2 static void bwd_avx2_f64(ptrdiff_t lo, ptrdiff_t n, const double *dy,
                                         const uint8_t *mask, double *dx, double scale)
{ bwd_body_f64(lo, n, dy, mask, dx, scale); }
#define PICK_AVX2(a, s) (fnn_use_avx2() ? (a) : (s))
#else
#define PICK_AVX2(a, s) (s)
#endif

DEFINE_DRIVERS(float, f32)
DEFINE_DRIVERS(double, f64)
