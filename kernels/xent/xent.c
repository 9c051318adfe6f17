/* xent kernels: row-wise softmax / log-softmax and the fused softmax
 * cross-entropy (see xent.h for the math).
 *
 * Per row, three sweeps while the row sits in L1: (1) max (and a NaN/inf
 * check), (2) e = exp(z - max) stored into the output row and summed,
 * (3) the output row rescaled in place.  The loss comes out of sweep (2)'s
 * sums, so loss and gradient cost one kernel call.
 *
 * Paths: float32 has an AVX2/FMA path (vector exp from fnn_vexp.h, float
 * lane sums, masked loads for the row tail); float64 and the fallback use
 * the plain-C rows in xent_scalar.inc (libm exp, double sums).
 */
#include <math.h>

#include "cpu.h"
#include "xent.h"
#include "../elementwise/fnn_vexp.h"

/* below this many elements a parallel region costs more than it saves */
#define XENT_PAR_MIN 16384

#define REAL float
#define SFX f32
#define EXP expf
#include "xent_scalar.inc"
#undef REAL
#undef SFX
#undef EXP

#define REAL double
#define SFX f64
#define EXP exp
#include "xent_scalar.inc"
#undef REAL
#undef SFX
#undef EXP

#if FNN_X86
/* max of a row; returns 0 (caller takes the scalar path) if it holds NaN or the max is not finite */
FNN_TARGET_AVX2 static int row_max_avx2(const float *x, ptrdiff_t C, float *m_out)
{
    __m256 vm = _mm256_set1_ps(-INFINITY), bad = _mm256_setzero_ps();
    ptrdiff_t c = 0;
    for (; c + 8 <= C; c += 8) {
        __m256 v = _mm256_loadu_ps(x + c);
        vm = _mm256_max_ps(vm, v);
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    }
    float m = fnn_hmax256_ps(vm);
    int nan = _mm256_movemask_ps(bad) != 0;
    for (; c < C; c++) {
        if (x[c] > m)
            m = x[c];
        nan |= x[c] != x[c];
    }
    *m_out = m;
    return !nan && isfinite(m);
}

FNN_TARGET_AVX2 static float xent_row_avx2(const float *x, ptrdiff_t C, int64_t y, const float *t,
                                           float *d, double scale, double ls)
{
    float m;
    if (!row_max_avx2(x, C, &m))
        return xent_row_scalar_f32(x, C, y, t, d, scale, ls);
    const __m256 vmax = _mm256_set1_ps(m);
    __m256 vs = _mm256_setzero_ps(), vsz = _mm256_setzero_ps();
    __m256 vst = _mm256_setzero_ps(), vstz = _mm256_setzero_ps();
    ptrdiff_t c = 0;
    for (; c + 8 <= C; c += 8) {
        __m256 z = _mm256_sub_ps(_mm256_loadu_ps(x + c), vmax);
        __m256 e = fnn_exp256_ps(z);
        if (d)
            _mm256_storeu_ps(d + c, e);
        vs = _mm256_add_ps(vs, e);
        vsz = _mm256_add_ps(vsz, z);
        if (t) {
            __m256 tt = _mm256_loadu_ps(t + c);
            vst = _mm256_add_ps(vst, tt);
            vstz = _mm256_fmadd_ps(tt, z, vstz);
        }
    }
    if (c < C) {
        __m256i mi = fnn_tail_mask(C - c);
        __m256 mk = _mm256_castsi256_ps(mi);
        /* masked-off lanes load 0: zero their z and e so they add nothing */
        __m256 z = _mm256_and_ps(_mm256_sub_ps(_mm256_maskload_ps(x + c, mi), vmax), mk);
        __m256 e = _mm256_and_ps(fnn_exp256_ps(z), mk);
        if (d)
            _mm256_maskstore_ps(d + c, mi, e);
        vs = _mm256_add_ps(vs, e);
        vsz = _mm256_add_ps(vsz, z);
        if (t) {
            __m256 tt = _mm256_maskload_ps(t + c, mi);
            vst = _mm256_add_ps(vst, tt);
            vstz = _mm256_fmadd_ps(tt, z, vstz);
        }
    }
    double s = fnn_hsum256_ps(vs), sz = fnn_hsum256_ps(vsz), st, stz;
    if (t) {
        st = fnn_hsum256_ps(vst);
        stz = fnn_hsum256_ps(vstz);
    } else {
        st = 1.0;
        stz = (double)(x[y] - m);
    }
    const double u = ls / (double)C;
    if (d) {
        const float inv = (float)(1.0 / s);
        const __m256 vinv = _mm256_set1_ps(inv), vu = _mm256_set1_ps((float)u);
        const __m256 vhot = _mm256_set1_ps((float)(1.0 - ls)), vscale = _mm256_set1_ps((float)scale);
        const float e_y = t ? 0.0f : d[y];
        c = 0;
        for (; c + 8 <= C; c += 8) {
            __m256 tc = t ? _mm256_fmadd_ps(vhot, _mm256_loadu_ps(t + c), vu) : vu;
            __m256 g = _mm256_fmsub_ps(_mm256_loadu_ps(d + c), vinv, tc);
            _mm256_storeu_ps(d + c, _mm256_mul_ps(g, vscale));
        }
        for (; c < C; c++) {
            float tc = t ? (float)(1.0 - ls) * t[c] + (float)u : (float)u;
            d[c] = (d[c] * inv - tc) * (float)scale;
        }
        if (!t)
            d[y] = (e_y * inv - (float)(1.0 - ls + u)) * (float)scale;
    }
    return (float)(log(s) * ((1.0 - ls) * st + ls) - ((1.0 - ls) * stz + u * sz));
}

FNN_TARGET_AVX2 static void softmax_row_avx2(const float *x, ptrdiff_t C, float *out, int lg)
{
    float m;
    if (C == 0)
        return;
    if (!row_max_avx2(x, C, &m)) {
        softmax_row_scalar_f32(x, C, out, lg);
        return;
    }
    const __m256 vmax = _mm256_set1_ps(m);
    __m256 vs = _mm256_setzero_ps();
    ptrdiff_t c = 0;
    for (; c + 8 <= C; c += 8) {
        __m256 e = fnn_exp256_ps(_mm256_sub_ps(_mm256_loadu_ps(x + c), vmax));
        if (!lg)
            _mm256_storeu_ps(out + c, e);
        vs = _mm256_add_ps(vs, e);
    }
    float s = fnn_hsum256_ps(vs);
    for (; c < C; c++) {
        float e = expf(x[c] - m);
        if (!lg)
            out[c] = e;
        s += e;
    }
    if (lg) {
        const float lz = logf(s);
        const __m256 vlz = _mm256_set1_ps(lz);
        for (c = 0; c + 8 <= C; c += 8)
            _mm256_storeu_ps(out + c, _mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(x + c), vmax), vlz));
        for (; c < C; c++)
            out[c] = (x[c] - m) - lz;
    } else {
        const float inv = 1.0f / s;
        const __m256 vinv = _mm256_set1_ps(inv);
        for (c = 0; c + 8 <= C; c += 8)
            _mm256_storeu_ps(out + c, _mm256_mul_ps(_mm256_loadu_ps(out + c), vinv));
        for (; c < C; c++)
            out[c] *= inv;
    }
}
#endif

void fnn_softmax_xent_f32(ptrdiff_t B, ptrdiff_t C, const float *logits, const int64_t *idx,
                          const float *probs, float *losses, float *dlogits,
                          double grad_scale, double ls, int nthreads)
{
    const int avx2 = fnn_use_avx2();
    if (nthreads < 1)
        nthreads = 1;
    (void)avx2;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1 && B * C >= XENT_PAR_MIN)
    for (ptrdiff_t b = 0; b < B; b++) {
        const float *x = logits + b * C;
        const float *t = probs ? probs + b * C : NULL;
        float *d = dlogits ? dlogits + b * C : NULL;
        int64_t y = idx ? idx[b] : 0;
#if FNN_X86
        if (avx2) {
            losses[b] = xent_row_avx2(x, C, y, t, d, grad_scale, ls);
            continue;
        }
#endif
        losses[b] = xent_row_scalar_f32(x, C, y, t, d, grad_scale, ls);
    }
}

void fnn_softmax_xent_f64(ptrdiff_t B, ptrdiff_t C, const double *logits, const int64_t *idx,
                          const double *probs, double *losses, double *dlogits,
                          double grad_scale, double ls, int nthreads)
{
    if (nthreads < 1)
        nthreads = 1;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1 && B * C >= XENT_PAR_MIN)
    for (ptrdiff_t b = 0; b < B; b++) {
        losses[b] = xent_row_scalar_f64(logits + b * C, C, idx ? idx[b] : 0,
                                        probs ? probs + b * C : NULL,
                                        dlogits ? dlogits + b * C : NULL, grad_scale, ls);
    }
}

void fnn_softmax_rows_f32(ptrdiff_t B, ptrdiff_t C, const float *x, float *out, int lg,
                          int nthreads)
{
    const int avx2 = fnn_use_avx2();
    if (nthreads < 1)
        nthreads = 1;
    (void)avx2;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1 && B * C >= XENT_PAR_MIN)
    for (ptrdiff_t b = 0; b < B; b++) {
#if FNN_X86
        if (avx2) {
            softmax_row_avx2(x + b * C, C, out + b * C, lg);
            continue;
        }
#endif
        softmax_row_scalar_f32(x + b * C, C, out + b * C, lg);
    }
}

void fnn_softmax_rows_f64(ptrdiff_t B, ptrdiff_t C, const double *x, double *out, int lg,
                          int nthreads)
{
    if (nthreads < 1)
        nthreads = 1;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1 && B * C >= XENT_PAR_MIN)
    for (ptrdiff_t b = 0; b < B; b++)
        softmax_row_scalar_f64(x + b * C, C, out + b * C, lg);
}
