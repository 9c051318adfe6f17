/* Max pooling for one dtype (included by conv_tmpl.h with REAL, SFX, FN, VW and,
 * for float32, CONV_F32 defined).
 *
 * Forward, one output row (n, oh) per task: each window's maximum and the flat
 * index h*W + w of its first maximum (strictly greater replaces, a NaN replaces
 * a number, never the reverse: the first NaN wins, as np.argmax).  float32 has
 * explicit AVX2 and AVX-512 code: a window folded in registers per channel
 * vector (masked channel tails), the 2x2 window an instance with the window
 * size a constant, so the fold unrolls into 4 loads, 3 compare/blend steps and
 * one store of y and of argmax (the running maximum kept in the output row, 4
 * passes over it, ran the speedrun convnet's 26x26x16 pool at ~12 GB/s).
 * float64 and the scalar level keep that compiled loop (vectorised by GCC).
 *
 * Backward, one image per task.  The kernel is given the shapes only; when
 * OH = H/2 and OW = W/2 (rounded down: a 2x2 stride 2 pool's) the float32
 * AVX2/AVX-512 code treats the windows as that pool's, which are disjoint: each
 * window's 4 elements are written once, dy at the argmax and 0 elsewhere, after a
 * memset of the image (see mp2_zero) instead of a scatter.  An argmax entry
 * that is not in its own 2x2 window (another pool's, or not from
 * maxpool2d_forward) stops that and the image is redone by the scatter: dx = 0,
 * then dx[argmax] += dy in output order, entries outside [0, H*W) skipped and
 * counted.  When every entry lies in its window the two agree bit for bit
 * (each dx element gets 0 + dy or 0 once: a -0.0 gradient lands as +0.0).
 * mask (dy's shape): dy is kept where mask > 0, else 0 (the fused ReLU
 * backward, see conv.h).
 */

/* ---- plain C bodies ---------------------------------------------------------------------- */

/* any window: the running maximum and index kept in the output row, the window's
 * elements visited in row-major order, channels innermost */
INLINE void FN(mp_row_body)(const fnn_pool_shape *s, const REAL *restrict xn, ptrdiff_t oh,
                            REAL *restrict yr, int *restrict ar)
{
    const ptrdiff_t W = s->W, C = s->C;
    for (ptrdiff_t ow = 0; ow < s->OW; ow++) {
        const ptrdiff_t base = oh * s->sh * W + ow * s->sw;
        const REAL *x0 = xn + base * C;
        REAL *yo = yr + ow * C;
        int *ao = ar + ow * C;
        for (ptrdiff_t c = 0; c < C; c++) {
            yo[c] = x0[c];
            ao[c] = (int)base;
        }
        for (ptrdiff_t i = 0; i < s->ph; i++)
            for (ptrdiff_t j = 0; j < s->pw; j++) {
                if (i == 0 && j == 0)
                    continue;
                const REAL *xr = x0 + (i * W + j) * C;
                const int cand = (int)(base + i * W + j);
                for (ptrdiff_t c = 0; c < C; c++) {
                    const REAL v = xr[c], b = yo[c];
                    const int upd = (v > b) | ((v != v) & (b == b));
                    yo[c] = upd ? v : b;
                    ao[c] = upd ? cand : ao[c];
                }
            }
    }
}

/* The backward's disjoint-window path is for the 2x2 window with stride 2, the shape
 * the kernel is given saying nothing more than OH = H/2, OW = W/2 (rounded down): the
 * argmax entries are tried as that pool's, and an entry outside its 2x2 window (any
 * other pool) sends the image to the scatter.  When every entry lies in its window
 * the direct write equals the scatter whatever the pool was. */
static int FN(mp2_back_fits)(const fnn_pool_shape *s)
{
    return s->OH == s->H / 2 && s->OW == s->W / 2;
}

/* dx of one image = 0 before the 2x2 direct write.  The write covers every element
 * but the odd last row/column, yet zeroing the whole image first pays: memset's
 * string stores fill cold lines without reading them, where the direct write's
 * vector stores read each line first (write-allocate): in a training step, whose dx
 * buffer is out of cache, the pool backward took 0.63-0.65 ms without it, 0.40-0.44
 * with it (speedrun convnet, lenet5; one thread). */
static void FN(mp2_zero)(const fnn_pool_shape *s, REAL *dxn)
{
    memset(dxn, 0, sizeof(REAL) * (size_t)(s->H * s->W * s->C));
}

/* the general scatter of one image; returns the entries outside [0, H*W) (skipped) */
static ptrdiff_t FN(mp_scatter)(const fnn_pool_shape *s, const REAL *dyn, const int *an,
                                const REAL *mn, REAL *dxn)
{
    const ptrdiff_t C = s->C, HW = s->H * s->W, O = s->OH * s->OW * C;
    ptrdiff_t bad = 0;
    for (ptrdiff_t i = 0; i < HW * C; i++)
        dxn[i] = 0;
    for (ptrdiff_t o = 0; o < O; o += C)
        for (ptrdiff_t c = 0; c < C; c++) {
            const ptrdiff_t at = an[o + c];
            if (at < 0 || at >= HW) {
                bad++;
                continue;
            }
            if (mn && !(mn[o + c] > 0))
                continue;
            dxn[at * C + c] += dyn[o + c];
        }
    return bad;
}

typedef void (*FN(mp_row_fn))(const fnn_pool_shape *, const REAL *, ptrdiff_t, REAL *, int *);
/* one image of the 2x2 backward; nonzero: an entry outside its window (stopped there) */
typedef int (*FN(mp_back_fn))(const fnn_pool_shape *, const REAL *, const int *, const REAL *,
                              REAL *);

#define MP_IS22(s) ((s)->ph == 2 && (s)->pw == 2)
static void FN(mp_row_scalar)(const fnn_pool_shape *s, const REAL *xn, ptrdiff_t oh, REAL *yr,
                              int *ar)
{
    FN(mp_row_body)(s, xn, oh, yr, ar);
}
#if FNN_X86 && !defined(CONV_F32)   /* float32 has explicit AVX2 and AVX-512 below */
FNN_TARGET_AVX2 static void FN(mp_row_avx2c)(const fnn_pool_shape *s, const REAL *xn,
                                             ptrdiff_t oh, REAL *yr, int *ar)
{
    FN(mp_row_body)(s, xn, oh, yr, ar);
}
#endif

/* ---- float32: explicit AVX2 and AVX-512 ---------------------------------------------------- */

#if FNN_X86 && defined(CONV_F32)
/* The channel vectors of the AVX2 code: FULL 1, all 8 lanes; else the first lanes of
 * mask m are channels, loaded and stored masked (FULL 0), or loaded and stored
 * whole (FULL 2: the lanes past the channels read and land in the next pixel, whose
 * own store comes later; not for a row's last pixel, and only when those lanes fit
 * in that pixel's C, so every access stays inside the arrays).
 * The backward stores a window's 4 pixels per channel vector, so it spills only
 * when the channels are one vector.  vmaskmovps stores are slow on AMD (microcoded): the
 * masked stores ran lenet5's 6-channel backward at half the scatter's speed. */

/* one channel vector of one window: p its first element */
FNN_TARGET_AVX2 INLINE void mp_fwd_vec_avx2(const float *p, ptrdiff_t W, ptrdiff_t C, int base,
                                            float *yo, int *ao, __m256i m, const int FULL,
                                            const ptrdiff_t PH, const ptrdiff_t PW)
{
    __m256 b = FULL != 0 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, m);
    __m256 idx = _mm256_castsi256_ps(_mm256_set1_epi32(base));
    for (ptrdiff_t i = 0; i < PH; i++)
        for (ptrdiff_t j = 0; j < PW; j++) {
            if (i == 0 && j == 0)
                continue;
            const float *q = p + (i * W + j) * C;
            const __m256 v = FULL != 0 ? _mm256_loadu_ps(q) : _mm256_maskload_ps(q, m);
            /* !(v <= b) and b not NaN: v > b, or v a NaN over a number */
            const __m256 upd = _mm256_andnot_ps(_mm256_cmp_ps(b, b, _CMP_UNORD_Q),
                                                _mm256_cmp_ps(v, b, _CMP_NLE_UQ));
            b = _mm256_blendv_ps(b, v, upd);
            idx = _mm256_blendv_ps(idx, _mm256_castsi256_ps(_mm256_set1_epi32(
                                            base + (int)(i * W + j))), upd);
        }
    if (FULL != 0) {
        _mm256_storeu_ps(yo, b);
        _mm256_storeu_si256((__m256i *)(void *)ao, _mm256_castps_si256(idx));
    } else {
        _mm256_maskstore_ps(yo, m, b);
        _mm256_maskstore_epi32(ao, m, _mm256_castps_si256(idx));
    }
}

FNN_TARGET_AVX2 INLINE void mp_row_avx2_body(const fnn_pool_shape *s, const float *xn,
                                             ptrdiff_t oh, float *yr, int *ar,
                                             const ptrdiff_t PH, const ptrdiff_t PW)
{
    const ptrdiff_t W = s->W, C = s->C, Cv = C / 8 * 8;
    const __m256i m = VMASK_FOR(C - Cv);
    const int spill = 8 - (C - Cv) <= C;
    for (ptrdiff_t ow = 0; ow < s->OW; ow++) {
        const ptrdiff_t base = oh * s->sh * W + ow * s->sw;
        const float *p = xn + base * C;
        ptrdiff_t c = 0;
        for (; c < Cv; c += 8)
            mp_fwd_vec_avx2(p + c, W, C, (int)base, yr + ow * C + c, ar + ow * C + c, m, 1, PH,
                            PW);
        if (c < C && ow + 1 < s->OW && spill)
            mp_fwd_vec_avx2(p + c, W, C, (int)base, yr + ow * C + c, ar + ow * C + c, m, 2, PH,
                            PW);
        else if (c < C)
            mp_fwd_vec_avx2(p + c, W, C, (int)base, yr + ow * C + c, ar + ow * C + c, m, 0, PH,
                            PW);
    }
}

FNN_TARGET_AVX2 static void mp_row_avx2_f32(const fnn_pool_shape *s, const float *xn,
                                            ptrdiff_t oh, float *yr, int *ar)
{
    if (MP_IS22(s))
        mp_row_avx2_body(s, xn, oh, yr, ar, 2, 2);
    else
        mp_row_avx2_body(s, xn, oh, yr, ar, s->ph, s->pw);
}

FNN_TARGET_AVX2 INLINE int mp2_back_vec_avx2(const float *g, const int *a, const float *mk,
                                             float *d0, ptrdiff_t W, ptrdiff_t C, int base,
                                             __m256i m, const int FULL)
{
    __m256 gv = FULL != 0 ? _mm256_loadu_ps(g) : _mm256_maskload_ps(g, m);
    gv = _mm256_add_ps(gv, _mm256_setzero_ps());              /* 0 + dy, as the scatter */
    if (mk) {
        const __m256 mv = FULL != 0 ? _mm256_loadu_ps(mk) : _mm256_maskload_ps(mk, m);
        gv = _mm256_and_ps(gv, _mm256_cmp_ps(mv, _mm256_setzero_ps(), _CMP_GT_OQ));
    }
    const __m256i av = FULL != 0 ? _mm256_loadu_si256((const __m256i *)(const void *)a)
                            : _mm256_maskload_epi32(a, m);
    __m256i hit = FULL == 1 ? _mm256_setzero_si256() : _mm256_xor_si256(m, _mm256_set1_epi32(-1));
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) {
            const __m256i e = _mm256_cmpeq_epi32(av, _mm256_set1_epi32(base + (int)(i * W + j)));
            const __m256 v = _mm256_and_ps(gv, _mm256_castsi256_ps(e));
            float *q = d0 + (i * W + j) * C;
            hit = _mm256_or_si256(hit, e);
            if (FULL != 0)
                _mm256_storeu_ps(q, v);
            else
                _mm256_maskstore_ps(q, m, v);
        }
    return _mm256_movemask_ps(_mm256_castsi256_ps(hit)) != 0xff;
}

FNN_TARGET_AVX2 static int mp_back_avx2_f32(const fnn_pool_shape *s, const float *dyn,
                                            const int *an, const float *mn, float *dxn)
{
    const ptrdiff_t W = s->W, C = s->C, Cv = C / 8 * 8;
    const __m256i m = VMASK_FOR(C - Cv);
    /* one channel vector (the window's next pixel is stored after this one) whose
     * lanes past the channels fit in the next pixel */
    const int spill = C < 8 && 8 - C <= C;
    FN(mp2_zero)(s, dxn);
    for (ptrdiff_t oh = 0; oh < s->OH; oh++) {
        int miss = 0;
        for (ptrdiff_t ow = 0; ow < s->OW; ow++) {
            const ptrdiff_t o = (oh * s->OW + ow) * C, base = 2 * oh * W + 2 * ow;
            float *d0 = dxn + base * C;
            ptrdiff_t c = 0;
            for (; c < Cv; c += 8)
                miss |= mp2_back_vec_avx2(dyn + o + c, an + o + c, mn ? mn + o + c : NULL,
                                          d0 + c, W, C, (int)base, m, 1);
            if (c < C && ow + 1 < s->OW && spill)
                miss |= mp2_back_vec_avx2(dyn + o + c, an + o + c, mn ? mn + o + c : NULL,
                                          d0 + c, W, C, (int)base, m, 2);
            else if (c < C)
                miss |= mp2_back_vec_avx2(dyn + o + c, an + o + c, mn ? mn + o + c : NULL,
                                          d0 + c, W, C, (int)base, m, 0);
        }
        if (miss)
            return 1;
    }
    return 0;
}

/* AVX-512: 16 channels per vector, opmask tails and blends */
FNN_TARGET_AVX512 INLINE void mp_fwd_vec_avx512(const float *p, ptrdiff_t W, ptrdiff_t C,
                                                int base, float *yo, int *ao, __mmask16 m,
                                                const ptrdiff_t PH, const ptrdiff_t PW)
{
    __m512 b = _mm512_maskz_loadu_ps(m, p);
    __m512i idx = _mm512_set1_epi32(base);
    for (ptrdiff_t i = 0; i < PH; i++)
        for (ptrdiff_t j = 0; j < PW; j++) {
            if (i == 0 && j == 0)
                continue;
            const __m512 v = _mm512_maskz_loadu_ps(m, p + (i * W + j) * C);
            const __mmask16 upd =
                _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(b, b, _CMP_ORD_Q), v, b, _CMP_NLE_UQ);
            b = _mm512_mask_mov_ps(b, upd, v);
            idx = _mm512_mask_mov_epi32(idx, upd, _mm512_set1_epi32(base + (int)(i * W + j)));
        }
    _mm512_mask_storeu_ps(yo, m, b);
    _mm512_mask_storeu_epi32(ao, m, idx);
}

FNN_TARGET_AVX512 INLINE void mp_row_avx512_body(const fnn_pool_shape *s, const float *xn,
                                                 ptrdiff_t oh, float *yr, int *ar,
                                                 const ptrdiff_t PH, const ptrdiff_t PW)
{
    const ptrdiff_t W = s->W, C = s->C;
    for (ptrdiff_t ow = 0; ow < s->OW; ow++) {
        const ptrdiff_t base = oh * s->sh * W + ow * s->sw;
        const float *p = xn + base * C;
        for (ptrdiff_t c = 0; c < C; c += 16) {
            const __mmask16 m = C - c >= 16 ? (__mmask16)0xffff
                                            : (__mmask16)((1u << (C - c)) - 1);
            mp_fwd_vec_avx512(p + c, W, C, (int)base, yr + ow * C + c, ar + ow * C + c, m, PH,
                              PW);
        }
    }
}

FNN_TARGET_AVX512 static void mp_row_avx512_f32(const fnn_pool_shape *s, const float *xn,
                                                ptrdiff_t oh, float *yr, int *ar)
{
    if (MP_IS22(s))
        mp_row_avx512_body(s, xn, oh, yr, ar, 2, 2);
    else
        mp_row_avx512_body(s, xn, oh, yr, ar, s->ph, s->pw);
}

FNN_TARGET_AVX512 static int mp_back_avx512_f32(const fnn_pool_shape *s, const float *dyn,
                                                const int *an, const float *mn, float *dxn)
{
    const ptrdiff_t W = s->W, C = s->C;
    FN(mp2_zero)(s, dxn);
    for (ptrdiff_t oh = 0; oh < s->OH; oh++) {
        int miss = 0;
        for (ptrdiff_t ow = 0; ow < s->OW; ow++) {
            const ptrdiff_t o = (oh * s->OW + ow) * C, base = 2 * oh * W + 2 * ow;
            float *d0 = dxn + base * C;
            for (ptrdiff_t c = 0; c < C; c += 16) {
                const __mmask16 m = C - c >= 16 ? (__mmask16)0xffff
                                                : (__mmask16)((1u << (C - c)) - 1);
                __m512 gv = _mm512_add_ps(_mm512_maskz_loadu_ps(m, dyn + o + c),
                                          _mm512_setzero_ps());     /* 0 + dy */
                if (mn)
                    gv = _mm512_maskz_mov_ps(
                        _mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(m, mn + o + c),
                                           _mm512_setzero_ps(), _CMP_GT_OQ), gv);
                const __m512i av = _mm512_maskz_loadu_epi32(m, an + o + c);
                __mmask16 hit = 0;
                for (int i = 0; i < 2; i++)
                    for (int j = 0; j < 2; j++) {
                        const __mmask16 e = _mm512_mask_cmpeq_epi32_mask(
                            m, av, _mm512_set1_epi32((int)base + (int)(i * W + j)));
                        hit |= e;
                        _mm512_mask_storeu_ps(d0 + (i * W + j) * C + c, m,
                                              _mm512_maskz_mov_ps(e, gv));
                    }
                miss |= hit != m;
            }
        }
        if (miss)
            return 1;
    }
    return 0;
}
#endif

/* ---- entry points -------------------------------------------------------------------------- */

static FN(mp_row_fn) FN(mp_row_pick)(void)
{
#if FNN_X86 && defined(CONV_F32)
    if (fnn_use_avx512())
        return mp_row_avx512_f32;
    if (fnn_use_avx2())
        return mp_row_avx2_f32;
#elif FNN_X86
    if (fnn_use_avx2())
        return FN(mp_row_avx2c);
#endif
    return FN(mp_row_scalar);
}

/* the 2x2 direct backward, or NULL: the scatter (the plain C version of the direct
 * write measured slower than the scatter, scalar and float64) */
static FN(mp_back_fn) FN(mp_back_pick)(const fnn_pool_shape *s)
{
#if FNN_X86 && defined(CONV_F32)
    /* 4 to 7 channels: AVX2's whole-vector stores beat AVX-512's masked ones (lenet5's
     * 6 channels: 0.15 vs 0.19 ms at one thread) */
    if (fnn_use_avx512() && !(s->C >= 4 && s->C < 8))
        return mp_back_avx512_f32;
    if (fnn_use_avx2())
        return mp_back_avx2_f32;
#endif
    (void)s;
    return NULL;
}

void FN(fnn_maxpool2d_forward)(const fnn_pool_shape *s, const REAL *x, REAL *y, int *argmax,
                               int nthreads)
{
    const FN(mp_row_fn) row = FN(mp_row_pick)();
    const ptrdiff_t rowsz = s->OW * s->C, items = s->N * s->OH;
    const int par = nthreads > 1 && items > 1 && items * rowsz * s->ph * s->pw >= POOL_PAR_MIN;
    (void)par;
    _Pragma("omp parallel for num_threads(nthreads) schedule(static) if (par)")
    for (ptrdiff_t it = 0; it < items; it++) {
        const ptrdiff_t n = it / s->OH, oh = it % s->OH;
        row(s, x + n * s->H * s->W * s->C, oh, y + it * rowsz, argmax + it * rowsz);
    }
}

ptrdiff_t FN(fnn_maxpool2d_backward)(const fnn_pool_shape *s, const REAL *dy, const int *argmax,
                                     const REAL *mask, REAL *dx, int nthreads)
{
    /* Entries of argmax outside [0, H*W) are skipped and counted: the caller raises
     * (no separate min/max pass). */
    const ptrdiff_t HWC = s->H * s->W * s->C, O = s->OH * s->OW * s->C;
    const FN(mp_back_fn) back = FN(mp2_back_fits)(s) ? FN(mp_back_pick)(s) : NULL;
    const int par = nthreads > 1 && s->N > 1 && s->N * (HWC + O) >= POOL_PAR_MIN;
    ptrdiff_t bad = 0;
    (void)par;
    _Pragma("omp parallel for num_threads(nthreads) schedule(static) reduction(+:bad) if (par)")
    for (ptrdiff_t n = 0; n < s->N; n++) {
        const REAL *g = dy + n * O, *m = mask ? mask + n * O : NULL;
        const int *a = argmax + n * O;
        if (!back || back(s, g, a, m, dx + n * HWC))
            bad += FN(mp_scatter)(s, g, a, m, dx + n * HWC);
    }
    return bad;
}

#undef MP_IS22
