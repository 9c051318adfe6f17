/* The fused trainer's GEMM tiles (see trainer.h for the math and layout).
 *
 * Variants, chosen at run time by fnn_use_avx2() (gemm_tiles in trainer_gemm.h):
 *   v0 scalar: plain C 6x16 tile kernel and epilogues (always works, the
 *      reference the AVX2 path is tested against)
 *   v1 AVX2+FMA: 6x16 register-tile microkernel (12 ymm accumulators,
 *      broadcast A, two vector loads of B per k) with the same epilogues
 *      compiled for AVX2, except that whole dW tiles apply the optimizer
 *      update on the accumulators (dw_tile_avx2) and forward/dX tiles deeper
 *      than 1.5 KC run K in blocks (gemm_tiles_kblock_avx2)
 * The AVX2 functions are compiled per function for "avx2,fma" (FNN_TARGET_AVX2),
 * never for the whole file: the module runs on any x86-64.
 *
 * Every GEMM of the step has the form  T[6,16] = A[i0:i0+6, :] @ B[:, j0:j0+16]
 * with B row-major (padded stride) and A given by (row, column) strides, so
 * the same kernel serves
 *   forward   A = a[l]          (rsa = ld, csa = 1),   B = W[l]
 *   backward  A = g[l+1]        (rsa = ld, csa = 1),   B = W[l]^T (a copy kept by the trainer)
 *   weights   A = a[l]^T        (rsa = 1,  csa = ld),  B = g[l+1]
 * B is never packed: the padded strides keep a B panel's rows in distinct
 * cache sets.  In the weight gradient, A = a[l]^T read in place walks down
 * columns of a[l] (a new cache line, and every 1-2 rows a new page, per k),
 * so a thread with many dW column panels reads per-thread k-major copies of
 * a[l]^T strips instead (tsa = the strip stride; see PACK_MIN_PANELS in trainer_step.c).
 */
#include "trainer_gemm.h"

/* Forward and dX tiles with K > 1.5 KC run K in even blocks of at most KC
 * (the tile's partial sums go through T between blocks: the same FMAs in the
 * same order, so the same bits), so that a block's rows of the B panel,
 * KC x 64 bytes, stay in L1 across up to KB_TILES row tiles instead of
 * streaming from L2 for every tile: +4-6 % on the 784- and 512-deep layers. */
#define KC 256
#define KB_TILES 16

/* --------------------------------------------------------- microkernels */

/* T[6][16] = sum_k A[i*rsa + k*csa] * B[k*ldb + j]; rows past the caller's
 * mr are computed from whatever memory follows (allocated, finite) and dropped. */
static void mk_scalar(ptrdiff_t K, const float *A, ptrdiff_t rsa, ptrdiff_t csa,
                      const float *B, ptrdiff_t ldb, float *T)
{
    for (int i = 0; i < MR * NR; i++) T[i] = 0.0f;
    for (ptrdiff_t k = 0; k < K; k++) {
        const float *bk = B + k * ldb;
        for (int i = 0; i < MR; i++) {
            float aik = A[i * rsa + k * csa];
            for (int j = 0; j < NR; j++) T[i * NR + j] += aik * bk[j];
        }
    }
}

#if FNN_X86
/* The K loop of the AVX2 tile: c[2*i + h] += A[i, k] * B[k, 8h:8h+8]. */
#define MK_AVX2_KLOOP(c, K, A, rsa, csa, B, ldb)                                      \
    do {                                                                             \
        const float *a0_ = (A), *a1_ = (A) + (rsa), *a2_ = (A) + 2 * (rsa);          \
        const float *b_ = (B);                                                       \
        const ptrdiff_t r3_ = 3 * (rsa);                                             \
        _Pragma("GCC unroll 12")                                                     \
        for (int i_ = 0; i_ < 2 * MR; i_++) c[i_] = _mm256_setzero_ps();             \
        for (ptrdiff_t k_ = 0; k_ < (K); k_++) {                                     \
            __m256 b0_ = _mm256_load_ps(b_), b1_ = _mm256_load_ps(b_ + 8), x_;       \
            x_ = _mm256_broadcast_ss(a0_);                                           \
            c[0] = _mm256_fmadd_ps(x_, b0_, c[0]); c[1] = _mm256_fmadd_ps(x_, b1_, c[1]); \
            x_ = _mm256_broadcast_ss(a1_);                                           \
            c[2] = _mm256_fmadd_ps(x_, b0_, c[2]); c[3] = _mm256_fmadd_ps(x_, b1_, c[3]); \
            x_ = _mm256_broadcast_ss(a2_);                                           \
            c[4] = _mm256_fmadd_ps(x_, b0_, c[4]); c[5] = _mm256_fmadd_ps(x_, b1_, c[5]); \
            x_ = _mm256_broadcast_ss(a0_ + r3_);                                     \
            c[6] = _mm256_fmadd_ps(x_, b0_, c[6]); c[7] = _mm256_fmadd_ps(x_, b1_, c[7]); \
            x_ = _mm256_broadcast_ss(a1_ + r3_);                                     \
            c[8] = _mm256_fmadd_ps(x_, b0_, c[8]); c[9] = _mm256_fmadd_ps(x_, b1_, c[9]); \
            x_ = _mm256_broadcast_ss(a2_ + r3_);                                     \
            c[10] = _mm256_fmadd_ps(x_, b0_, c[10]); c[11] = _mm256_fmadd_ps(x_, b1_, c[11]); \
            a0_ += (csa); a1_ += (csa); a2_ += (csa);                                \
            b_ += (ldb);                                                             \
        }                                                                            \
    } while (0)

FNN_TARGET_AVX2
static void mk_avx2(ptrdiff_t K, const float *A, ptrdiff_t rsa, ptrdiff_t csa,
                    const float *B, ptrdiff_t ldb, float *T)
{
    __m256 c[2 * MR];
    MK_AVX2_KLOOP(c, K, A, rsa, csa, B, ldb);
#pragma GCC unroll 12
    for (int i = 0; i < 2 * MR; i++) _mm256_store_ps(T + 8 * i, c[i]);
}

/* T += A @ B over K (a later block of a K-blocked tile): the same FMAs in the
 * same order as one pass, so the same bits. */
FNN_TARGET_AVX2
static void mk_avx2_acc(ptrdiff_t K, const float *A, ptrdiff_t rsa, ptrdiff_t csa,
                        const float *B, ptrdiff_t ldb, float *T)
{
    __m256 c[2 * MR];
#pragma GCC unroll 12
    for (int i = 0; i < 2 * MR; i++) c[i] = _mm256_load_ps(T + 8 * i);
    {
        const float *a0_ = A, *a1_ = A + rsa, *a2_ = A + 2 * rsa, *b_ = B;
        const ptrdiff_t r3_ = 3 * rsa;
        for (ptrdiff_t k_ = 0; k_ < K; k_++) {
            __m256 b0_ = _mm256_load_ps(b_), b1_ = _mm256_load_ps(b_ + 8), x_;
            x_ = _mm256_broadcast_ss(a0_);
            c[0] = _mm256_fmadd_ps(x_, b0_, c[0]); c[1] = _mm256_fmadd_ps(x_, b1_, c[1]);
            x_ = _mm256_broadcast_ss(a1_);
            c[2] = _mm256_fmadd_ps(x_, b0_, c[2]); c[3] = _mm256_fmadd_ps(x_, b1_, c[3]);
            x_ = _mm256_broadcast_ss(a2_);
            c[4] = _mm256_fmadd_ps(x_, b0_, c[4]); c[5] = _mm256_fmadd_ps(x_, b1_, c[5]);
            x_ = _mm256_broadcast_ss(a0_ + r3_);
            c[6] = _mm256_fmadd_ps(x_, b0_, c[6]); c[7] = _mm256_fmadd_ps(x_, b1_, c[7]);
            x_ = _mm256_broadcast_ss(a1_ + r3_);
            c[8] = _mm256_fmadd_ps(x_, b0_, c[8]); c[9] = _mm256_fmadd_ps(x_, b1_, c[9]);
            x_ = _mm256_broadcast_ss(a2_ + r3_);
            c[10] = _mm256_fmadd_ps(x_, b0_, c[10]); c[11] = _mm256_fmadd_ps(x_, b1_, c[11]);
            a0_ += csa; a1_ += csa; a2_ += csa;
            b_ += ldb;
        }
    }
#pragma GCC unroll 12
    for (int i = 0; i < 2 * MR; i++) _mm256_store_ps(T + 8 * i, c[i]);
}
#endif

/* ------------------------------------------- dW tile with its update (AVX2) */

#if FNN_X86
/* The weight-gradient tile, whole (6 x 16): the optimizer update runs on the
 * accumulators, without the round trip through T and the scalar-width
 * epilogue (measured: that epilogue was 14-18 % of the dW GEMM at K = 64-128),
 * and the updated tile goes to W^T by a 6 x 8 register transpose, two stores
 * per column instead of six.  Same formulas as opt_update, lane by lane. */
FNN_TARGET_AVX2
static void dw_tile_avx2(ptrdiff_t K, const float *A, ptrdiff_t rsa, ptrdiff_t csa,
                         const float *B, ptrdiff_t ldb, const tile_ep *e, ptrdiff_t i0,
                         ptrdiff_t j0)
{
    const opt_sc *o = e->o;
    __m256 c[2 * MR], wn[2 * MR];
    MK_AVX2_KLOOP(c, K, A, rsa, csa, B, ldb);
    const __m256 lr = _mm256_set1_ps(o->lr), wd = _mm256_set1_ps(o->wd);
    const __m256 mu = _mm256_set1_ps(o->mu), d1 = _mm256_set1_ps(o->damp1);
    /* unrolled: c[] and wn[] must stay registers */
#pragma GCC unroll 12
    for (int q = 0; q < 2 * MR; q++) {
        const ptrdiff_t off = (i0 + q / 2) * e->ldw + j0 + 8 * (q & 1);
        float *pw = e->W + off, *p1 = e->s1 + off, *p2 = e->s2 + off;
        __m256 w = _mm256_load_ps(pw);
        if (o->kind == FNN_OPT_SGD) {
            __m256 g = _mm256_fmadd_ps(wd, w, c[q]);
            if (o->mu == 0.0f) {
                w = _mm256_fnmadd_ps(lr, g, w);
            } else {
                __m256 v = _mm256_fmadd_ps(mu, _mm256_load_ps(p1), _mm256_mul_ps(d1, g));
                _mm256_store_ps(p1, v);
                w = _mm256_fnmadd_ps(lr, o->nesterov ? _mm256_fmadd_ps(mu, v, g) : v, w);
            }
        } else {
            const float wda = o->kind == FNN_OPT_ADAM ? o->wd : 0.0f;
            const __m256 b1 = _mm256_set1_ps(o->b1), b2 = _mm256_set1_ps(o->b2);
            const __m256 c1 = _mm256_set1_ps(o->c1), c2 = _mm256_set1_ps(o->c2);
            __m256 wj = _mm256_mul_ps(w, _mm256_set1_ps(o->decay));
            __m256 g = _mm256_fmadd_ps(_mm256_set1_ps(wda), wj, c[q]);
            __m256 m = _mm256_fmadd_ps(b1, _mm256_load_ps(p1), _mm256_mul_ps(c1, g));
            __m256 v = _mm256_fmadd_ps(b2, _mm256_load_ps(p2),
                                       _mm256_mul_ps(_mm256_mul_ps(c2, g), g));
            _mm256_store_ps(p1, m);
            _mm256_store_ps(p2, v);
            __m256 den = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(v),
                                                     _mm256_set1_ps(o->bc2_sqrt)),
                                       _mm256_set1_ps(o->eps));
            w = _mm256_fnmadd_ps(_mm256_set1_ps(o->step_size), _mm256_div_ps(m, den), wj);
        }
        _mm256_store_ps(pw, w);
        wn[q] = w;
    }
    if (!e->WT) return;
    /* WT[j0 + j, i0:i0+6] = W tile column j: rows 0-3 as one 4-float store,
     * rows 4-5 as one 2-float store */
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
        __m256 t0 = _mm256_unpacklo_ps(wn[0 + h], wn[2 + h]);
        __m256 t1 = _mm256_unpackhi_ps(wn[0 + h], wn[2 + h]);
        __m256 t2 = _mm256_unpacklo_ps(wn[4 + h], wn[6 + h]);
        __m256 t3 = _mm256_unpackhi_ps(wn[4 + h], wn[6 + h]);
        __m256 t4 = _mm256_unpacklo_ps(wn[8 + h], wn[10 + h]);
        __m256 t5 = _mm256_unpackhi_ps(wn[8 + h], wn[10 + h]);
        __m256 u[4] = {_mm256_shuffle_ps(t0, t2, 0x44), _mm256_shuffle_ps(t0, t2, 0xEE),
                       _mm256_shuffle_ps(t1, t3, 0x44), _mm256_shuffle_ps(t1, t3, 0xEE)};
        /* u[p] lane 0 = column p, lane 1 = column p + 4 (rows 0-3) */
        __m128 lo45[2] = {_mm256_castps256_ps128(t4), _mm256_castps256_ps128(t5)};
        __m128 hi45[2] = {_mm256_extractf128_ps(t4, 1), _mm256_extractf128_ps(t5, 1)};
        float *wt = e->WT + (j0 + 8 * h) * e->ldwt + i0;
        const ptrdiff_t ld = e->ldwt;
#pragma GCC unroll 4
        for (int p = 0; p < 4; p++) {
            /* rows 4-5 of column p: t4 holds columns 0,1 | 4,5, t5 columns 2,3 | 6,7 */
            __m128 r45lo = lo45[p >> 1], r45hi = hi45[p >> 1];
            float *d = wt + p * ld, *d4 = wt + (p + 4) * ld;
            _mm_storeu_ps(d, _mm256_castps256_ps128(u[p]));
            _mm_storeu_ps(d4, _mm256_extractf128_ps(u[p], 1));
            if (p & 1) {
                _mm_storeh_pi((__m64 *)(d + 4), r45lo);
                _mm_storeh_pi((__m64 *)(d4 + 4), r45hi);
            } else {
                _mm_storel_pi((__m64 *)(d + 4), r45lo);
                _mm_storel_pi((__m64 *)(d4 + 4), r45hi);
            }
        }
    }
}
#endif

/* ----------------------------------------------------------- tile loops */

/* One task of C = epilogue(A @ B): row tiles [ip_lo, ip_hi) of column panel
 * jp (consecutive tiles reuse the B panel from cache). */
#define GEMM_TILES_BODY(MK)                                                         \
    float T[MR * NR] __attribute__((aligned(64)));                                  \
    ptrdiff_t ntm = (M + MR - 1) / MR, j0 = jp * NR;                                \
    if (ip_hi > ntm) ip_hi = ntm;                                                   \
    for (ptrdiff_t ip = ip_lo; ip < ip_hi; ip++) {                                  \
        ptrdiff_t i0 = ip * MR;                                                     \
        int mr = M - i0 < MR ? (int)(M - i0) : MR;                                  \
        prefetch_tile(e, i0, j0, mr);                                               \
        MK(K, A + ip * tsa, rsa, csa, B + j0, ldb, T);                              \
        epilogue(e, i0, j0, mr, T);                                                 \
    }

void fnn_tr_gemm_tiles_scalar(ptrdiff_t M, ptrdiff_t K, const float *A, ptrdiff_t rsa,
                              ptrdiff_t csa, ptrdiff_t tsa, const float *B, ptrdiff_t ldb,
                              const tile_ep *e, ptrdiff_t jp, ptrdiff_t ip_lo, ptrdiff_t ip_hi)
{
    GEMM_TILES_BODY(mk_scalar)
}

#if FNN_X86
FNN_TARGET_AVX2 __attribute__((noinline))
static void gemm_tiles_kblock_avx2(ptrdiff_t M, ptrdiff_t K, const float *A, ptrdiff_t rsa,
                                   ptrdiff_t csa, const float *B, ptrdiff_t ldb,
                                   const tile_ep *e, ptrdiff_t jp, ptrdiff_t ip_lo,
                                   ptrdiff_t ip_hi)
{
    /* K in blocks of KC: the block's rows of the B panel stay in L1 across
     * the row tiles, up to KB_TILES tiles at a time */
    float Tb[KB_TILES][MR * NR] __attribute__((aligned(64)));
    ptrdiff_t ntm = (M + MR - 1) / MR, j0 = jp * NR;
    const ptrdiff_t nkb = (K + KC - 1) / KC, kb = (K + nkb - 1) / nkb;   /* even blocks */
    if (ip_hi > ntm) ip_hi = ntm;
    for (ptrdiff_t g0 = ip_lo; g0 < ip_hi; g0 += KB_TILES) {
        ptrdiff_t g1 = g0 + KB_TILES < ip_hi ? g0 + KB_TILES : ip_hi;
        for (ptrdiff_t k0 = 0; k0 < K; k0 += kb) {
            ptrdiff_t kc = K - k0 < kb ? K - k0 : kb;
            for (ptrdiff_t ip = g0; ip < g1; ip++) {
                const float *Ab = A + ip * MR * rsa + k0 * csa, *Bb = B + k0 * ldb + j0;
                if (k0 == 0) mk_avx2(kc, Ab, rsa, csa, Bb, ldb, Tb[ip - g0]);
                else mk_avx2_acc(kc, Ab, rsa, csa, Bb, ldb, Tb[ip - g0]);
            }
        }
        for (ptrdiff_t ip = g0; ip < g1; ip++) {
            ptrdiff_t i0 = ip * MR;
            int mr = M - i0 < MR ? (int)(M - i0) : MR;
            epilogue(e, i0, j0, mr, Tb[ip - g0]);
        }
    }
}

FNN_TARGET_AVX2
void fnn_tr_gemm_tiles_avx2(ptrdiff_t M, ptrdiff_t K, const float *A, ptrdiff_t rsa,
                            ptrdiff_t csa, ptrdiff_t tsa, const float *B, ptrdiff_t ldb,
                            const tile_ep *e, ptrdiff_t jp, ptrdiff_t ip_lo, ptrdiff_t ip_hi)
{
    if (e->kind == EP_DW && e->N - jp * NR >= NR) {
        /* whole tiles in registers, the last partial row tile through T */
        ptrdiff_t full = M / MR, ip_mid = ip_hi < full ? ip_hi : full;
        for (ptrdiff_t ip = ip_lo; ip < ip_mid; ip++) {
            prefetch_tile(e, ip * MR, jp * NR, MR);
            dw_tile_avx2(K, A + ip * tsa, rsa, csa, B + jp * NR, ldb, e, ip * MR, jp * NR);
        }
        if (ip_lo < ip_mid) ip_lo = ip_mid;
    }
    if (e->kind != EP_DW && e->kind != EP_DWG && K > KC + KC / 2) {
        gemm_tiles_kblock_avx2(M, K, A, rsa, csa, B, ldb, e, jp, ip_lo, ip_hi);
        return;
    }
    GEMM_TILES_BODY(mk_avx2)
}
#endif

