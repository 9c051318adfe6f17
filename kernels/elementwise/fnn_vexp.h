/* Vectorised exp for the AVX2 paths of the xent and elementwise kernels.
 *
 * fnn_exp256_ps(x): exp of 8 floats, about 1-2 ulp (Cody-Waite range
 * reduction r = x - n*ln2 with ln2 split in two parts, then a degree-6
 * polynomial for exp(r) on [-ln2/2, ln2/2], then scaling by 2^n through the
 * exponent bits).  Edge cases, chosen to match what the callers need:
 *   x < ln(FLT_MIN) (about -87.34)  -> 0   (the true value is subnormal or 0)
 *   x > 88.72                       -> +inf
 *   NaN                             -> NaN
 * The callers only pass x <= 0 (exp(z - max z), exp(-|x|)), where the result
 * lies in [0, 1].
 *
 * Also: horizontal sum / max of a __m256, and a load mask for the last
 * n < 8 elements of a row (so tails use the same vector code).
 */
#ifndef FNN_VEXP_H
#define FNN_VEXP_H

#include "cpu.h"

#if FNN_X86
#include <immintrin.h>

FNN_TARGET_AVX2 static inline __m256 fnn_exp256_ps(__m256 x)
{
    const __m256 lo = _mm256_set1_ps(-87.3365447505531f);   /* ln(FLT_MIN) */
    const __m256 hi = _mm256_set1_ps(88.3762626647949f);    /* keeps n <= 127 */
    const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
    const __m256 ln2_hi = _mm256_set1_ps(0.693359375f);      /* exact in 9 bits */
    const __m256 ln2_lo = _mm256_set1_ps(-2.12194440e-4f);
    __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, log2e),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, ln2_hi, xc);
    r = _mm256_fnmadd_ps(n, ln2_lo, r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    __m256 r2 = _mm256_mul_ps(r, r);
    __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0f));
    /* 2^n: n in [-126, 127] after the clamp, so the biased exponent is in [1, 254] */
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
    y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
    y = _mm256_blendv_ps(y, _mm256_set1_ps(__builtin_inff()),
                         _mm256_cmp_ps(x, _mm256_set1_ps(88.72283905206835f), _CMP_GT_OQ));
    return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

FNN_TARGET_AVX2 static inline float fnn_hsum256_ps(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

FNN_TARGET_AVX2 static inline float fnn_hmax256_ps(__m256 v)
{
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* lanes [0, n) set (n in 0..8), for _mm256_maskload_ps / _mm256_maskstore_ps */
FNN_TARGET_AVX2 static inline __m256i fnn_tail_mask(long n)
{
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), idx);
}
#endif /* FNN_X86 */

#endif
