/* The AVX-512 packed GEMM for float (included by gemm.c after the float and
 * double instantiations of gemm_tmpl.h, whose prob_s / tile_ep_s / store_tile_s
 * / fnn_gemm_s it reuses).
 *
 *   fp32        12 x 32 tile: 24 zmm accumulators, 2 B vectors, 1 broadcast
 *   bf16        the same tile over k PAIRS: every 32-bit lane of a packed panel
 *               holds two bf16 (k even in bits 0-15, k odd in bits 16-31) and
 *               vdpbf16ps adds both products to the fp32 accumulator
 *   bf16 emul.  (AVX-512 without BF16) fp32 panels rounded to bf16 after packing
 *
 * Edges are masked: a tile narrower than 32 columns loads and stores C, bias
 * and mask under a 16-bit lane mask; rows past the tile's height are zero in
 * the packed A and never stored.  Only a C with non-unit column stride (or a
 * strided mask) spills the tile to memory and takes store_tile_s.
 *
 * Loop nest, thread split and determinism are those of gemm_tmpl.h: K is
 * never split across threads and block sizes depend on the shape only.
 * Blocks: a kc x 32 micro-panel of B (kc <= 128 elements fp32, <= 128 pairs
 * bf16: 16 KiB) stays in L1 while 12-row panels of A stream from L2.
 */

#define XMR 12
#define XNR 32
/* k units (floats, or bf16 pairs) per block.  The kc x 32 B micro-panel and
 * the 12 x kc A micro-panel share L1: 128 gives 16 + 6 KiB, 192 would be
 * 33.8 KiB, over Zen 4's 32 KiB.  Measured on 1024^3, one thread: 96, 128,
 * 192 and 320 all within noise (fp32 0.86-0.95x of AVX2, bf16 177-199 GFLOP/s). */
#ifndef X_KC
#define X_KC 128
#endif
#define X_MC 144
#define X_NC 4096

enum { X_FP32 = 0, X_BF16 = 1, X_BF16_EMUL = 2 };

typedef struct {
    prob_s p;          /* p.ukr is the microkernel; kcb counts k ELEMENTS */
    int mode;          /* X_FP32, X_BF16, X_BF16_EMUL */
} xprob;

#if FNN_X86

/* ---------------------------------------------------------------- packing, fp32 */

/* The first min(max(left, 0), 16) lanes. */
static inline __mmask16 x_lanes(ptrdiff_t left)
{
    return left >= 16 ? (__mmask16)0xffff : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
}

/* Pack n vectors (rows of A or columns of B) of length kc into ceil(n / W)
 * panels, each kc x W, k-major (d[q*W*kc + k*W + i] = v_{q*W+i}[k]), padded
 * with zeros to W.  Vector v starts at src + v*sw; element k at + k*sk. */
FNN_TARGET_AVX512
static void x_pack_f32(ptrdiff_t kc, const float *src, ptrdiff_t sw, ptrdiff_t sk,
                       ptrdiff_t n, int W, float *restrict d)
{
    if (sw == 1) {
        /* vectors contiguous across the panel (C-ordered B, transposed A):
         * walk k in the source's row order, a masked copy per panel */
        for (ptrdiff_t k = 0; k < kc; k++) {
            const float *s = src + k * sk;
            for (ptrdiff_t q = 0; q * W < n; q++) {
                float *o = d + q * W * kc + k * W;
                for (int h = 0; h < W; h += 16) {
                    __mmask16 wm = x_lanes(W - h), m = x_lanes(n - q * W - h) & wm;
                    _mm512_mask_storeu_ps(o + h, wm, _mm512_maskz_loadu_ps(m, s + q * W + h));
                }
            }
        }
        return;
    }
    for (ptrdiff_t q = 0; q * W < n; q++) {
        int w = (int)(n - q * W < W ? n - q * W : W);
        const float *s = src + q * W * sw;
        float *o = d + q * W * kc;
        ptrdiff_t k = 0;
        if (sk == 1 && w == W) {
            /* each vector contiguous in k (C-ordered A, transposed B): 4 x 4 transposes */
            for (; k + 4 <= kc; k += 4) {
                for (int i = 0; i < W; i += 4) {
                    __m128 x0 = _mm_loadu_ps(s + (i + 0) * sw + k);
                    __m128 x1 = _mm_loadu_ps(s + (i + 1) * sw + k);
                    __m128 x2 = _mm_loadu_ps(s + (i + 2) * sw + k);
                    __m128 x3 = _mm_loadu_ps(s + (i + 3) * sw + k);
                    _MM_TRANSPOSE4_PS(x0, x1, x2, x3);
                    _mm_storeu_ps(o + (k + 0) * W + i, x0);
                    _mm_storeu_ps(o + (k + 1) * W + i, x1);
                    _mm_storeu_ps(o + (k + 2) * W + i, x2);
                    _mm_storeu_ps(o + (k + 3) * W + i, x3);
                }
            }
        }
        for (; k < kc; k++) {
            int i = 0;
            for (; i < w; i++)
                o[k * W + i] = s[i * sw + k * sk];
            for (; i < W; i++)
                o[k * W + i] = 0;
        }
    }
}

/* ---------------------------------------------------------------- packing, bf16 pairs */

/* As x_pack_f32, but each 32-bit lane holds the bf16 pair (k = 2p, 2p + 1) of
 * one vector: kp = ceil(kc / 2) pairs per panel (an odd kc pads with zero).
 * Rounding by vcvtneps2bf16 (same results as fnn_bf16_pair, see gemm_bf16.h). */
FNN_TARGET_AVX512BF16
static void x_pack_bf16(ptrdiff_t kc, const float *src, ptrdiff_t sw, ptrdiff_t sk,
                        ptrdiff_t n, int W, uint32_t *restrict d)
{
    ptrdiff_t kp = (kc + 1) / 2;
    if (sw == 1) {
        for (ptrdiff_t p = 0; p < kp; p++) {
            const float *s0 = src + 2 * p * sk, *s1 = s0 + sk;
            int odd = 2 * p + 1 >= kc;              /* no k = 2p + 1: its half is zero */
            for (ptrdiff_t q = 0; q * W < n; q++) {
                uint32_t *o = d + q * W * kp + p * W;
                for (int h = 0; h < W; h += 16) {
                    __mmask16 wm = x_lanes(W - h), m = x_lanes(n - q * W - h) & wm;
                    __m512 lo = _mm512_maskz_loadu_ps(m, s0 + q * W + h);
                    __m512 hi = odd ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m, s1 + q * W + h);
                    __m256i l16 = (__m256i)_mm512_cvtneps_pbh(lo);
                    __m256i h16 = (__m256i)_mm512_cvtneps_pbh(hi);
                    __m512i pr = _mm512_or_si512(_mm512_cvtepu16_epi32(l16),
                                                 _mm512_slli_epi32(_mm512_cvtepu16_epi32(h16), 16));
                    _mm512_mask_storeu_epi32((void *)(o + h), wm, pr);
                }
            }
        }
        return;
    }
    for (ptrdiff_t q = 0; q * W < n; q++) {
        int w = (int)(n - q * W < W ? n - q * W : W);
        const float *s = src + q * W * sw;
        uint32_t *o = d + q * W * kp;
        ptrdiff_t p = 0;
        if (sk == 1 && w == W) {
            /* 8 floats of a vector -> 4 pairs; 4 vectors x 4 pairs transposed */
            for (; 2 * p + 8 <= kc; p += 4) {
                for (int i = 0; i < W; i += 4) {
                    __m128 x0 = (__m128)_mm256_cvtneps_pbh(_mm256_loadu_ps(s + (i + 0) * sw + 2 * p));
                    __m128 x1 = (__m128)_mm256_cvtneps_pbh(_mm256_loadu_ps(s + (i + 1) * sw + 2 * p));
                    __m128 x2 = (__m128)_mm256_cvtneps_pbh(_mm256_loadu_ps(s + (i + 2) * sw + 2 * p));
                    __m128 x3 = (__m128)_mm256_cvtneps_pbh(_mm256_loadu_ps(s + (i + 3) * sw + 2 * p));
                    _MM_TRANSPOSE4_PS(x0, x1, x2, x3);
                    _mm_storeu_ps((float *)(o + (p + 0) * W + i), x0);
                    _mm_storeu_ps((float *)(o + (p + 1) * W + i), x1);
                    _mm_storeu_ps((float *)(o + (p + 2) * W + i), x2);
                    _mm_storeu_ps((float *)(o + (p + 3) * W + i), x3);
                }
            }
        }
        for (; p < kp; p++) {
            int i = 0;
            for (; i < w; i++) {
                float lo = s[i * sw + 2 * p * sk];
                float hi = 2 * p + 1 < kc ? s[i * sw + (2 * p + 1) * sk] : 0.0f;
                o[p * W + i] = fnn_bf16_pair(lo, hi);
            }
            for (; i < W; i++)
                o[p * W + i] = 0;
        }
    }
}

/* ---------------------------------------------------------------- store phase */

/* The epilogue of gemm.h on a 12 x 32 register tile, masked at the right
 * edge; the same operations in the same order as store_tile_s, so a tile
 * never changes a bit by taking one path or the other. */
FNN_TARGET_AVX512
static inline void x_store(__m512 c[XMR][2], float *C, ptrdiff_t rsc, ptrdiff_t csc, int m,
                           int n, const tile_ep_s *ep)
{
    if (csc == 1 && (!ep->last || !ep->mask || ep->csm == 1)) {
        __mmask16 k0 = n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1);
        __mmask16 k1 = n >= 32 ? 0xffff : n <= 16 ? 0 : (__mmask16)((1u << (n - 16)) - 1);
        const __m512 zero = _mm512_setzero_ps();
#pragma GCC unroll 12
        for (int i = 0; i < XMR; i++) {
            if (i >= m)
                break;
            __m512 x0 = c[i][0], x1 = c[i][1];
            float *cr = C + i * rsc;
            if (ep->beta) {
                x0 = _mm512_add_ps(x0, _mm512_maskz_loadu_ps(k0, cr));
                x1 = _mm512_add_ps(x1, _mm512_maskz_loadu_ps(k1, cr + 16));
            }
            if (ep->last) {
                if (ep->bias && ep->bias_row) {
                    __m512 b = _mm512_set1_ps(ep->bias[i]);
                    x0 = _mm512_add_ps(x0, b);
                    x1 = _mm512_add_ps(x1, b);
                } else if (ep->bias) {
                    x0 = _mm512_add_ps(x0, _mm512_maskz_loadu_ps(k0, ep->bias));
                    x1 = _mm512_add_ps(x1, _mm512_maskz_loadu_ps(k1, ep->bias + 16));
                }
                if (ep->relu) {
                    x0 = _mm512_max_ps(zero, x0);
                    x1 = _mm512_max_ps(zero, x1);
                }
                if (ep->mask) {
                    const float *mr = ep->mask + i * ep->rsm;
                    x0 = _mm512_maskz_mov_ps(
                        _mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(k0, mr), zero, _CMP_GT_OQ), x0);
                    x1 = _mm512_maskz_mov_ps(
                        _mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(k1, mr + 16), zero, _CMP_GT_OQ), x1);
                }
            }
            _mm512_mask_storeu_ps(cr, k0, x0);
            _mm512_mask_storeu_ps(cr + 16, k1, x1);
        }
        return;
    }
    float acc[XMR * XNR] __attribute__((aligned(64)));
#pragma GCC unroll 12
    for (int i = 0; i < XMR; i++) {
        _mm512_store_ps(acc + i * XNR, c[i][0]);
        _mm512_store_ps(acc + i * XNR + 16, c[i][1]);
    }
    store_tile_s(m, n, acc, XNR, C, rsc, csc, ep);
}

/* ---------------------------------------------------------------- microkernels */

FNN_TARGET_AVX512
static void x_ukr_f32(ptrdiff_t kc, const float *restrict Ap, const float *restrict Bp,
                      float *C, ptrdiff_t rsc, ptrdiff_t csc, int m, int n, const tile_ep_s *ep)
{
    __m512 c[XMR][2];
#pragma GCC unroll 12
    for (int i = 0; i < XMR; i++)
        c[i][0] = c[i][1] = _mm512_setzero_ps();
    for (ptrdiff_t k = 0; k < kc; k++) {
        __m512 b0 = _mm512_load_ps(Bp), b1 = _mm512_load_ps(Bp + 16);
#pragma GCC unroll 12
        for (int i = 0; i < XMR; i++) {
            __m512 a = _mm512_set1_ps(Ap[i]);
            c[i][0] = _mm512_fmadd_ps(a, b0, c[i][0]);
            c[i][1] = _mm512_fmadd_ps(a, b1, c[i][1]);
        }
        Ap += XMR;
        Bp += XNR;
    }
    x_store(c, C, rsc, csc, m, n, ep);
}

/* kc here counts k PAIRS; Ap / Bp hold bf16 pairs (see x_pack_bf16). */
FNN_TARGET_AVX512BF16
static void x_ukr_bf16(ptrdiff_t kp, const float *restrict Ap_, const float *restrict Bp_,
                       float *C, ptrdiff_t rsc, ptrdiff_t csc, int m, int n, const tile_ep_s *ep)
{
    const uint32_t *Ap = (const uint32_t *)Ap_, *Bp = (const uint32_t *)Bp_;
    __m512 c[XMR][2];
#pragma GCC unroll 12
    for (int i = 0; i < XMR; i++)
        c[i][0] = c[i][1] = _mm512_setzero_ps();
    for (ptrdiff_t p = 0; p < kp; p++) {
        __m512bh b0 = (__m512bh)_mm512_load_si512((const void *)Bp);
        __m512bh b1 = (__m512bh)_mm512_load_si512((const void *)(Bp + 16));
#pragma GCC unroll 12
        for (int i = 0; i < XMR; i++) {
            __m512bh a = (__m512bh)_mm512_set1_epi32((int)Ap[i]);
            c[i][0] = _mm512_dpbf16_ps(c[i][0], a, b0);
            c[i][1] = _mm512_dpbf16_ps(c[i][1], a, b1);
        }
        Ap += XMR;
        Bp += XNR;
    }
    x_store(c, C, rsc, csc, m, n, ep);
}

/* ---------------------------------------------------------------- driver */

/* Rows [i0, i1) x columns [j0, j1) of C, on the calling thread. */
static void x_block(const xprob *x, ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t j0, ptrdiff_t j1)
{
    const prob_s *p = &x->p;
    ptrdiff_t M = i1 - i0, N = j1 - j0, K = p->K;
    if (M <= 0 || N <= 0)
        return;
    int pairs = x->mode == X_BF16;
    ptrdiff_t mcb = p->mcb, kcb = p->kcb, ncb = p->ncb;
    ptrdiff_t mcap = mcb < M ? mcb : M, ncap = ncb < N ? ncb : N, kcap = kcb < K ? kcb : K;
    if (pairs)
        kcap = (kcap + 1) / 2;
    mcap = (mcap + XMR - 1) / XMR * XMR;
    ncap = (ncap + XNR - 1) / XNR * XNR;
    float *Abuf = (float *)fnn_gemm_buffer(0, (size_t)mcap * (size_t)kcap * sizeof(float));
    float *Bbuf = (float *)fnn_gemm_buffer(1, (size_t)ncap * (size_t)kcap * sizeof(float));
    if (!Abuf || !Bbuf) {
        naive_s(p, i0, i1, j0, j1);
        return;
    }
    const ptrdiff_t rsa = p->rsa, csa = p->csa, rsb = p->rsb, csb = p->csb;
    const ptrdiff_t rsc = p->rsc, csc = p->csc;
    tile_ep_s t;
    t.relu = p->relu;
    t.bias_row = p->bias_row;
    t.rsm = p->rsm;
    t.csm = p->csm;
    for (ptrdiff_t jc = j0; jc < j1; jc += ncb) {
        ptrdiff_t nc = j1 - jc < ncb ? j1 - jc : ncb;
        ptrdiff_t ncr = (nc + XNR - 1) / XNR * XNR;
        for (ptrdiff_t pc = 0; pc < K; pc += kcb) {
            ptrdiff_t kc = K - pc < kcb ? K - pc : kcb;
            ptrdiff_t ku = pairs ? (kc + 1) / 2 : kc;          /* packed k units */
            const float *bs = p->B + pc * rsb + jc * csb;
            if (pairs)
                x_pack_bf16(kc, bs, csb, rsb, nc, XNR, (uint32_t *)Bbuf);
            else
                x_pack_f32(kc, bs, csb, rsb, nc, XNR, Bbuf);
            if (x->mode == X_BF16_EMUL)
                fnn_bf16_round_buf(Bbuf, (size_t)ncr * (size_t)kc);
            t.beta = p->accumulate || pc > 0;
            t.last = pc + kc >= K;
            for (ptrdiff_t ic = i0; ic < i1; ic += mcb) {
                ptrdiff_t mc = i1 - ic < mcb ? i1 - ic : mcb;
                ptrdiff_t mcr = (mc + XMR - 1) / XMR * XMR;
                const float *as = p->A + ic * rsa + pc * csa;
                if (pairs)
                    x_pack_bf16(kc, as, rsa, csa, mc, XMR, (uint32_t *)Abuf);
                else
                    x_pack_f32(kc, as, rsa, csa, mc, XMR, Abuf);
                if (x->mode == X_BF16_EMUL)
                    fnn_bf16_round_buf(Abuf, (size_t)mcr * (size_t)kc);
                for (ptrdiff_t jr = 0; jr < nc; jr += XNR) {
                    int nr = (int)(nc - jr < XNR ? nc - jr : XNR);
                    ptrdiff_t j = jc + jr;
                    for (ptrdiff_t ir = 0; ir < mc; ir += XMR) {
                        int mr = (int)(mc - ir < XMR ? mc - ir : XMR);
                        ptrdiff_t i = ic + ir;
                        t.bias = p->bias ? p->bias + (p->bias_row ? i : j) : NULL;
                        t.mask = p->mask ? p->mask + i * p->rsm + j * p->csm : NULL;
                        p->ukr(ku, Abuf + ir * ku, Bbuf + jr * ku, p->C + i * rsc + j * csc,
                               rsc, csc, mr, nr, &t);
                    }
                }
            }
        }
    }
}

static double x_padded(ptrdiff_t M, ptrdiff_t N)
{
    return (double)((M + XMR - 1) / XMR * XMR) * (double)((N + XNR - 1) / XNR * XNR);
}

/* One block of a thread plan, as a pool chunk (gemm_pool.h). */
typedef struct {
    const xprob *x;
    const fnn_thread_plan *plan;
} x_job;

static void x_chunk(void *arg, ptrdiff_t t)
{
    const x_job *j = (const x_job *)arg;
    ptrdiff_t i0, i1, j0, j1;
    fnn_plan_block(j->plan, (int)t, &i0, &i1, &j0, &j1);
    x_block(j->x, i0, i1, j0, j1);
}

/* C = epilogue(A @ B) on the AVX-512 engine, in `mode`.  Orientation: as in
 * gemm_tmpl.h, C^T = B^T A^T when that wastes less of the 12 x 32 tiles ... */
static void x_gemm(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                   const float *A, ptrdiff_t rsa, ptrdiff_t csa,
                   const float *B, ptrdiff_t rsb, ptrdiff_t csb,
                   float *C, ptrdiff_t rsc, ptrdiff_t csc,
                   const fnn_epilogue *ep, int nthreads, int mode)
{
    if (M <= 0 || N <= 0)
        return;
    xprob x;
    prob_s *p = &x.p;
    x.mode = mode;
    p->bias = ep ? (const float *)ep->bias : NULL;
    p->bias_row = 0;
    p->mask = ep ? (const float *)ep->mask : NULL;
    p->rsm = ep ? ep->rs_mask : 0;
    p->csm = ep ? ep->cs_mask : 0;
    p->relu = ep ? ep->relu != 0 : 0;
    p->accumulate = ep ? ep->accumulate != 0 : 0;
    p->bf16 = mode != X_FP32;
    p->vec = 1;
    /* ... unless that turns a C with unit column stride into a strided one
     * (the strided store spills every tile: measured 0.75x on 64x784x128)
     * for a small saving; a narrow output (N = 10) still gains 2.7x */
    double waste = x_padded(M, N), waste_t = x_padded(N, M);
    if (waste_t < waste * 0.97 && (csc != 1 || rsc == 1 || waste_t < waste * 0.5)) {
        p->M = N; p->N = M; p->K = K;
        p->A = B; p->rsa = csb; p->csa = rsb;
        p->B = A; p->rsb = csa; p->csb = rsa;
        p->C = C; p->rsc = csc; p->csc = rsc;
        p->bias_row = 1;
        ptrdiff_t tmp = p->rsm; p->rsm = p->csm; p->csm = tmp;
    } else {
        p->M = M; p->N = N; p->K = K;
        p->A = A; p->rsa = rsa; p->csa = csa;
        p->B = B; p->rsb = rsb; p->csb = csb;
        p->C = C; p->rsc = rsc; p->csc = csc;
    }
    if (K <= 0) {
        naive_s(p, 0, p->M, 0, p->N);
        return;
    }
    p->ukr = mode == X_BF16 ? x_ukr_bf16 : x_ukr_f32;
    p->kcb = fnn_even_block(K, mode == X_BF16 ? 2 * X_KC : X_KC, mode == X_BF16 ? 2 : 1);
    p->mcb = fnn_even_block(p->M, X_MC, XMR);
    p->ncb = X_NC;
    fnn_thread_plan plan;
    fnn_plan_threads(p->M, p->N, K, XMR, XNR, nthreads, &plan);
    if (plan.nt <= 1) {
        x_block(&x, 0, p->M, 0, p->N);
        return;
    }
    x_job job = {&x, &plan};
    fnn_pool_run(x_chunk, &job, plan.nt, plan.threads);     /* gemm_pool.h: dynamic claims */
}
#endif /* FNN_X86 */
