/* The fused native training loop (see trainer.h for the math and layout).
 *
 * Variants, chosen at run time by fnn_simd_level():
 *   v0 scalar: plain C 6x16 tile kernel and epilogues (always works, the
 *      reference the AVX2 path is tested against)
 *   v1 AVX2+FMA: 6x16 register-tile microkernel (12 ymm accumulators,
 *      broadcast A, two vector loads of B per k) with the same epilogues
 *      compiled for AVX2, except that whole dW tiles apply the optimizer
 *      update on the accumulators (dw_tile_avx2) and forward/dX tiles deeper
 *      than 1.5 KC run K in blocks (gemm_tiles_kblock_avx2)
 *
 * Every GEMM of the step has the form  T[6,16] = A[i0:i0+6, :] @ B[:, j0:j0+16]
 * with B row-major (padded stride) and A given by (row, column) strides, so
 * the same kernel serves
 *   forward   A = a[l]          (rsa = ld, csa = 1),   B = W[l]
 *   backward  A = g[l+1]        (rsa = ld, csa = 1),   B = W[l]^T (a copy kept by the trainer)
 *   weights   A = a[l]^T        (rsa = 1,  csa = ld),  B = g[l+1]
 * B is never packed: the padded strides keep a B panel's rows in distinct
 * cache sets.  In the weight gradient, A = a[l]^T read in place walks down
 * columns of a[l] (a new cache line, and every 1-2 rows a new page, per k).
 * So a thread with at least PACK_MIN_PANELS column panels of a layer's dW
 * copies each strip of MR columns of a[l] into its own buffer the first time
 * it needs it in a step, k-major (strip[k][0:MR]), and its tiles read the copy
 * (rsa = 1, csa = MR, a strip stride in place of MR * rsa).  Measured with
 * epochs alternating in one process: mlp-keras 4 % and the speedrun net
 * 3-4 % faster per epoch; with 4 panels per thread (mlp at 2 threads) it was
 * neutral, with 1 (softmax) 13 % slower.  A copy shared by the threads,
 * written by the gather, cost more in cache-line transfers between the cores
 * than it saved.
 */
#include "trainer.h"
#include "cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if FNN_X86
#include <immintrin.h>
#endif

#define MR 6
#define NR 16
/* Forward and dX tiles with K > 1.5 KC run K in even blocks of at most KC
 * (the tile's partial sums go through T between blocks: the same FMAs in the
 * same order, so the same bits), so that a block's rows of the B panel,
 * KC x 64 bytes, stay in L1 across up to KB_TILES row tiles instead of
 * streaming from L2 for every tile: +4-6 % on the 784- and 512-deep layers. */
#define KC 256
#define KB_TILES 16

struct fnn_trainer {
    int L, batch, rows;
    int dims[FNN_TR_MAXL + 1], ld[FNN_TR_MAXL + 1];
    int relu[FNN_TR_MAXL], has_bias[FNN_TR_MAXL];
    float *W[FNN_TR_MAXL], *b[FNN_TR_MAXL];
    float *WT[2][FNN_TR_MAXL];        /* W^T, double-buffered: read by dX while dW writes the next */
    float *s1W[FNN_TR_MAXL], *s1b[FNN_TR_MAXL], *s2W[FNN_TR_MAXL], *s2b[FNN_TR_MAXL];
    float *a[FNN_TR_MAXL + 1];        /* activations, rows x ld[l] */
    float *g[FNN_TR_MAXL + 1];        /* dL/da[l], rows x ld[l] (l >= 1) */
    double *rowloss;
    int *rowok;
    int64_t *rowy;                    /* labels of the batch rows */
    int solo_streak, solo_hold;       /* the fallback's back-off, carried from call to call
                                       * (an epoch per call: the load outlasts a call) */
};

/* Per-step optimizer scalars (Adam's bias corrections change every step). */
typedef struct {
    int kind, nesterov;
    float lr, wd, mu, damp1;
    float b1, b2, c1, c2;                            /* Adam: beta, 1 - beta */
    float eps, step_size, bc2_sqrt, decay;           /* decay = 1 - lr*wd for AdamW */
} opt_sc;

/* ---------------------------------------------------------------- helpers */

static ptrdiff_t pad_ld(ptrdiff_t n)
{
    ptrdiff_t ld = (n + NR - 1) / NR * NR;
    if (ld == 0) ld = NR;
    if (ld % 64 == 0) ld += NR;      /* a stride of k*256 bytes would alias L1 sets */
    return ld;
}

static void *zalloc(size_t nfloat)
{
    size_t bytes = (nfloat * sizeof(float) + 63) / 64 * 64;
    void *p = aligned_alloc(64, bytes ? bytes : 64);
    if (p) memset(p, 0, bytes ? bytes : 64);
    return p;
}


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

/* ------------------------------------------------------------ epilogues */

/* Optimizer update of n contiguous parameters w given their gradient g. */
static inline __attribute__((always_inline))
void opt_update(const opt_sc *o, float *restrict w, float *restrict s1, float *restrict s2,
                const float *restrict g, int n)
{
    const float lr = o->lr, wd = o->wd, mu = o->mu, d1 = o->damp1;
    if (o->kind == FNN_OPT_SGD) {
        if (mu == 0.0f) {
            for (int j = 0; j < n; j++) w[j] -= lr * (g[j] + wd * w[j]);
        } else if (o->nesterov) {
            for (int j = 0; j < n; j++) {
                float gj = g[j] + wd * w[j];
                float v = mu * s1[j] + d1 * gj;
                s1[j] = v;
                w[j] -= lr * (gj + mu * v);
            }
        } else {
            for (int j = 0; j < n; j++) {
                float gj = g[j] + wd * w[j];
                float v = mu * s1[j] + d1 * gj;
                s1[j] = v;
                w[j] -= lr * v;
            }
        }
    } else {
        const float b1 = o->b1, b2 = o->b2, c1 = o->c1, c2 = o->c2;
        const float eps = o->eps, ss = o->step_size, bc2s = o->bc2_sqrt, decay = o->decay;
        const float wda = o->kind == FNN_OPT_ADAM ? wd : 0.0f;
        for (int j = 0; j < n; j++) {
            float wj = w[j] * decay;
            float gj = g[j] + wda * wj;
            float m = b1 * s1[j] + c1 * gj;
            float v = b2 * s2[j] + c2 * gj * gj;
            s1[j] = m;
            s2[j] = v;
            w[j] = wj - ss * (m / (sqrtf(v) / bc2s + eps));
        }
    }
}

/* One row of the fused softmax cross-entropy: z[0:n] logits, label y;
 * writes d[0:n] = (softmax(z) - onehot(y)) * inv_b; returns -log p[y]. */
static inline __attribute__((always_inline))
double xent_row(const float *z, int n, int64_t y, float inv_b, float *d, int *ok)
{
    float m = z[0];
    int am = 0;
    for (int j = 1; j < n; j++)
        if (z[j] > m) { m = z[j]; am = j; }
    float s = 0.0f;
    for (int j = 0; j < n; j++) {
        float e = expf(z[j] - m);
        d[j] = e;
        s += e;
    }
    float inv_s = 1.0f / s;
    for (int j = 0; j < n; j++) d[j] = d[j] * inv_s * inv_b;
    d[y] -= inv_b;
    *ok = (am == y);
    return (double)logf(s) + (double)m - (double)z[y];
}

/* A[k][0:MR] = a[k * lda + 0:MR] for k < K: one strip of a^T, k-major.  The
 * columns past the layer's width hold whatever follows in a (finite: zeros or
 * the next row), like the rows past mr of any tile, and are dropped. */
static void pack_strip(float *restrict A, const float *restrict a, ptrdiff_t lda, ptrdiff_t K)
{
    for (ptrdiff_t k = 0; k < K; k++) memcpy(A + k * MR, a + k * lda, MR * sizeof(float));
}

enum { EP_FWD, EP_DX, EP_DW, EP_XENT };

typedef struct {
    int kind;
    float *C; ptrdiff_t ldc;          /* FWD, DX, XENT (C = g[L]) */
    const float *bias; int relu;      /* FWD, XENT */
    const float *mask; ptrdiff_t ldm; /* DX: keep where mask > 0 */
    int N;                            /* valid columns */
    /* DW */
    float *W, *s1, *s2, *WT; ptrdiff_t ldw, ldwt;
    const opt_sc *o;
    /* XENT */
    const int64_t *y; float inv_b; double *rowloss; int *rowok;
} tile_ep;

/* Branch-free row stores (written so that the compiler vectorises them: a
 * data-dependent branch per element mispredicts half the time on ReLU masks).
 * relu: max(t + b, 0), NaN -> 0 as in (x > 0 ? x : 0). */
static const float zero16[NR] __attribute__((aligned(64)));

static inline __attribute__((always_inline))
void store_row(float *restrict c, const float *restrict t, const float *restrict b, int relu)
{
    if (relu) {
        for (int j = 0; j < NR; j++) {
            float v = t[j] + b[j];
            c[j] = v > 0.0f ? v : 0.0f;
        }
    } else {
        for (int j = 0; j < NR; j++) c[j] = t[j] + b[j];
    }
}

/* c = t where m > 0 else +0 (ReLU backward), as a bit mask. */
static inline __attribute__((always_inline))
void store_masked_row(float *restrict c, const float *restrict t, const float *restrict m)
{
    uint32_t ti[NR];
    memcpy(ti, t, sizeof(ti));
    for (int j = 0; j < NR; j++) ti[j] &= m[j] > 0.0f ? 0xffffffffu : 0u;
    memcpy(c, ti, sizeof(ti));
}

static inline __attribute__((always_inline))
void epilogue(const tile_ep *e, ptrdiff_t i0, ptrdiff_t j0, int mr, float *T)
{
    int nc = e->N - (int)j0 < NR ? e->N - (int)j0 : NR;
    switch (e->kind) {
    case EP_FWD:
        for (int i = 0; i < mr; i++)
            store_row(e->C + (i0 + i) * e->ldc + j0, T + i * NR,
                      e->bias ? e->bias + j0 : zero16, e->relu);
        break;
    case EP_DX:
        for (int i = 0; i < mr; i++) {
            if (e->mask)
                store_masked_row(e->C + (i0 + i) * e->ldc + j0, T + i * NR,
                                 e->mask + (i0 + i) * e->ldm + j0);
            else
                store_row(e->C + (i0 + i) * e->ldc + j0, T + i * NR, zero16, 0);
        }
        break;
    case EP_DW:
        for (int i = 0; i < mr; i++) {
            ptrdiff_t off = (i0 + i) * e->ldw + j0;
            opt_update(e->o, e->W + off, e->s1 + off, e->s2 + off, T + i * NR, nc);
        }
        if (e->WT) {
            for (int j = 0; j < nc; j++) {
                float *wt = e->WT + (j0 + j) * e->ldwt + i0;
                for (int i = 0; i < mr; i++) wt[i] = e->W[(i0 + i) * e->ldw + j0 + j];
            }
        }
        break;
    case EP_XENT:
        for (int i = 0; i < mr; i++) {
            float *t = T + i * NR;
            if (e->bias)
                for (int j = 0; j < NR; j++) t[j] += e->bias[j];
            float *d = e->C + (i0 + i) * e->ldc;
            e->rowloss[i0 + i] = xent_row(t, e->N, e->y[i0 + i], e->inv_b, d, &e->rowok[i0 + i]);
        }
        break;
    }
}

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

/* The optimizer epilogue reads and writes W, its state and W^T for the tile:
 * megabytes per step that live in L3 or DRAM, touched a few lines at a time,
 * too sparse for the hardware prefetchers.  Asking for them before the tile's
 * K loop hides the latency behind its FMAs. */
static inline __attribute__((always_inline))
void prefetch_tile(const tile_ep *e, ptrdiff_t i0, ptrdiff_t j0, int mr)
{
    if (e->kind != EP_DW) return;
    for (int i = 0; i < mr; i++) {
        ptrdiff_t off = (i0 + i) * e->ldw + j0;
        __builtin_prefetch(e->W + off, 1, 3);
        __builtin_prefetch(e->s1 + off, 1, 3);
        if (e->o->kind != FNN_OPT_SGD) __builtin_prefetch(e->s2 + off, 1, 3);
    }
    if (e->WT) {
        int nc = e->N - (int)j0 < NR ? e->N - (int)j0 : NR;
        for (int j = 0; j < nc; j++) __builtin_prefetch(e->WT + (j0 + j) * e->ldwt + i0, 1, 3);
    }
}

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

static void gemm_tiles_scalar(ptrdiff_t M, ptrdiff_t K, const float *A, ptrdiff_t rsa,
                              ptrdiff_t csa, ptrdiff_t tsa, const float *B, ptrdiff_t ldb, const tile_ep *e,
                              ptrdiff_t jp, ptrdiff_t ip_lo, ptrdiff_t ip_hi)
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
static void gemm_tiles_avx2(ptrdiff_t M, ptrdiff_t K, const float *A, ptrdiff_t rsa,
                            ptrdiff_t csa, ptrdiff_t tsa, const float *B, ptrdiff_t ldb, const tile_ep *e,
                            ptrdiff_t jp, ptrdiff_t ip_lo, ptrdiff_t ip_hi)
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
    if (e->kind != EP_DW && K > KC + KC / 2) {
        gemm_tiles_kblock_avx2(M, K, A, rsa, csa, B, ldb, e, jp, ip_lo, ip_hi);
        return;
    }
    GEMM_TILES_BODY(mk_avx2)
}
#endif

/* Row tiles [ip_lo, ip_hi) of column panel jp of C = epilogue(A @ B): A[i, k]
 * at A[(i / MR) * tsa + (i % MR) * rsa + k * csa] (tsa = MR * rsa unless A is
 * a packed copy), B[k, j] at B[k * ldb + j]. */
static void gemm_tiles(int avx2, ptrdiff_t M, ptrdiff_t K, const float *A, ptrdiff_t rsa,
                       ptrdiff_t csa, ptrdiff_t tsa, const float *B, ptrdiff_t ldb,
                       const tile_ep *e, ptrdiff_t jp, ptrdiff_t ip_lo, ptrdiff_t ip_hi)
{
#if FNN_X86
    if (avx2) {
        gemm_tiles_avx2(M, K, A, rsa, csa, tsa, B, ldb, e, jp, ip_lo, ip_hi);
        return;
    }
#endif
    (void)avx2;
    gemm_tiles_scalar(M, K, A, rsa, csa, tsa, B, ldb, e, jp, ip_lo, ip_hi);
}

/* ------------------------------------------------- bias gradient + update */

/* Column panels [p_lo, p_hi) of db = sum_rows g, each followed by its update. */
static inline __attribute__((always_inline))
void bias_body(const float *g, ptrdiff_t ldg, int rows, int N, ptrdiff_t p_lo, ptrdiff_t p_hi,
               float *bias, float *s1, float *s2, const opt_sc *o)
{
    float acc[NR];
    ptrdiff_t np = (N + NR - 1) / NR;
    if (p_hi > np) p_hi = np;
    for (ptrdiff_t p = p_lo; p < p_hi; p++) {
        ptrdiff_t j0 = p * NR;
        int nc = N - (int)j0 < NR ? N - (int)j0 : NR;
        for (int j = 0; j < NR; j++) acc[j] = 0.0f;
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < NR; j++) acc[j] += g[r * ldg + j0 + j];
        opt_update(o, bias + j0, s1 + j0, s2 + j0, acc, nc);
    }
}

static void bias_scalar(const float *g, ptrdiff_t ldg, int rows, int N, ptrdiff_t p_lo,
                        ptrdiff_t p_hi, float *bias, float *s1, float *s2, const opt_sc *o)
{
    bias_body(g, ldg, rows, N, p_lo, p_hi, bias, s1, s2, o);
}

#if FNN_X86
FNN_TARGET_AVX2
static void bias_avx2(const float *g, ptrdiff_t ldg, int rows, int N, ptrdiff_t p_lo,
                      ptrdiff_t p_hi, float *bias, float *s1, float *s2, const opt_sc *o)
{
    bias_body(g, ldg, rows, N, p_lo, p_hi, bias, s1, s2, o);
}
#endif

/* ------------------------------------------------------------- gather */

/* x * (1/255) in float32, as fastnn.Sequential scales uint8 images (the same
 * rounding, so the fused and the layer-by-layer paths see identical inputs). */
void fnn_trainer_u8_to_f32(const uint8_t *src, float *dst, ptrdiff_t n)
{
    const float r = 1.0f / 255.0f;
    for (ptrdiff_t i = 0; i < n; i++) dst[i] = (float)src[i] * r;
}

#if FNN_X86
FNN_TARGET_AVX2
static void u8_to_f32_avx2(const uint8_t *src, float *dst, ptrdiff_t n)
{
    const __m256 r = _mm256_set1_ps(1.0f / 255.0f);
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i b = _mm_loadl_epi64((const __m128i *)(src + i));
        __m256 x = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
        _mm256_storeu_ps(dst + i, _mm256_mul_ps(x, r));
    }
    for (; i < n; i++) dst[i] = (float)src[i] * (1.0f / 255.0f);
}
#endif

static void gather_rows(int avx2, float *a0, ptrdiff_t lda, ptrdiff_t lo, ptrdiff_t hi, int D,
                        const void *x, int x_u8, ptrdiff_t x_ld, const int64_t *idx)
{
    for (ptrdiff_t r = lo; r < hi; r++) {
        float *dst = a0 + r * lda;
        if (x_u8) {
            const uint8_t *src = (const uint8_t *)x + idx[r] * x_ld;
#if FNN_X86
            if (avx2) { u8_to_f32_avx2(src, dst, D); continue; }
#endif
            fnn_trainer_u8_to_f32(src, dst, D);
        } else {
            memcpy(dst, (const float *)x + idx[r] * x_ld, (size_t)D * sizeof(float));
        }
    }
    (void)avx2;
}

/* ---------------------------------------------------------- life cycle */

void fnn_trainer_free(fnn_trainer *tr)
{
    if (!tr) return;
    for (int l = 0; l < FNN_TR_MAXL; l++) {
        free(tr->W[l]); free(tr->b[l]); free(tr->WT[0][l]); free(tr->WT[1][l]);
        free(tr->s1W[l]); free(tr->s1b[l]); free(tr->s2W[l]); free(tr->s2b[l]);
    }
    for (int l = 0; l <= FNN_TR_MAXL; l++) { free(tr->a[l]); free(tr->g[l]); }
    free(tr->rowloss);
    free(tr->rowok);
    free(tr->rowy);
    free(tr);
}

fnn_trainer *fnn_trainer_new(int nlayers, const int *dims, const int *relu, const int *has_bias,
                             int batch)
{
    if (nlayers < 1 || nlayers > FNN_TR_MAXL || batch < 1) return NULL;
    fnn_trainer *tr = calloc(1, sizeof(*tr));
    if (!tr) return NULL;
    int ok = 1;
    tr->L = nlayers;
    tr->batch = batch;
    /* +1 row: A tiles read up to 5 rows / columns past the valid ones */
    tr->rows = (batch + MR - 1) / MR * MR + 1;
    for (int l = 0; l <= nlayers; l++) {
        if (dims[l] < 1) ok = 0;
        tr->dims[l] = dims[l];
        tr->ld[l] = (int)pad_ld(dims[l]);
    }
    for (int l = 0; ok && l < nlayers; l++) {
        size_t in = (size_t)tr->dims[l], ldo = (size_t)tr->ld[l + 1];
        size_t wrows = (in + MR - 1) / MR * MR + 1;
        tr->relu[l] = relu[l] != 0;
        tr->has_bias[l] = has_bias[l] != 0;
        tr->W[l] = zalloc(wrows * ldo);
        tr->s1W[l] = zalloc(wrows * ldo);
        tr->s2W[l] = zalloc(wrows * ldo);
        tr->b[l] = zalloc(ldo);
        tr->s1b[l] = zalloc(ldo);
        tr->s2b[l] = zalloc(ldo);
        if (l > 0) {
            size_t n = (size_t)(tr->dims[l + 1] + NR) * (size_t)(tr->ld[l] + MR);
            tr->WT[0][l] = zalloc(n);
            tr->WT[1][l] = zalloc(n);
            ok = ok && tr->WT[0][l] && tr->WT[1][l];
        }
        ok = ok && tr->W[l] && tr->s1W[l] && tr->s2W[l] && tr->b[l] && tr->s1b[l] && tr->s2b[l];
    }
    for (int l = 0; ok && l <= nlayers; l++) {
        tr->a[l] = zalloc((size_t)tr->rows * tr->ld[l] + MR);
        ok = ok && tr->a[l];
        if (l > 0) {
            tr->g[l] = zalloc((size_t)tr->rows * tr->ld[l] + MR);
            ok = ok && tr->g[l];
        }
    }
    if (ok) {
        tr->rowloss = calloc((size_t)tr->rows, sizeof(double));
        tr->rowok = calloc((size_t)tr->rows, sizeof(int));
        tr->rowy = calloc((size_t)tr->rows, sizeof(int64_t));
        ok = tr->rowloss && tr->rowok && tr->rowy;
    }
    if (!ok) {
        fnn_trainer_free(tr);
        return NULL;
    }
    return tr;
}

/* Copies between the caller's dense (rows x cols) arrays and padded ones. */
static void copy_in(float *dst, ptrdiff_t ldd, const float *src, int rows, int cols)
{
    for (int r = 0; r < rows; r++)
        memcpy(dst + (ptrdiff_t)r * ldd, src + (ptrdiff_t)r * cols, (size_t)cols * sizeof(float));
}

static void copy_out(float *dst, const float *src, ptrdiff_t lds, int rows, int cols)
{
    for (int r = 0; r < rows; r++)
        memcpy(dst + (ptrdiff_t)r * cols, src + (ptrdiff_t)r * lds, (size_t)cols * sizeof(float));
}

/* dst[j, i] = src[i, j] for src (rows x cols, dense), in 32 x 32 blocks so
 * that both sides stay in cache lines already fetched. */
static void transpose_into(float *dst, ptrdiff_t ldd, const float *src, int rows, int cols)
{
    for (int i0 = 0; i0 < rows; i0 += 32)
        for (int j0 = 0; j0 < cols; j0 += 32) {
            int i1 = i0 + 32 < rows ? i0 + 32 : rows, j1 = j0 + 32 < cols ? j0 + 32 : cols;
            for (int j = j0; j < j1; j++)
                for (int i = i0; i < i1; i++)
                    dst[(ptrdiff_t)j * ldd + i] = src[(ptrdiff_t)i * cols + j];
        }
}

static void opt_step_scalars(const fnn_train_opt *opt, int64_t s, opt_sc *o)
{
    const int64_t t = opt->step + s + 1;      /* Adam's t counts updates from 1 */
    const float lr = opt->lrs ? opt->lrs[s] : opt->lr;
    memset(o, 0, sizeof(*o));
    o->kind = opt->kind;
    o->lr = lr;
    o->wd = opt->weight_decay;
    o->mu = opt->momentum;
    o->damp1 = 1.0f - opt->dampening;
    o->nesterov = opt->nesterov;
    o->decay = 1.0f;
    if (opt->kind != FNN_OPT_SGD) {
        double bc1 = 1.0 - pow(opt->beta1, (double)t);
        double bc2 = 1.0 - pow(opt->beta2, (double)t);
        o->b1 = (float)opt->beta1;
        o->b2 = (float)opt->beta2;
        o->c1 = (float)(1.0 - opt->beta1);
        o->c2 = (float)(1.0 - opt->beta2);
        o->eps = opt->eps;
        o->step_size = (float)((double)lr / bc1);
        o->bc2_sqrt = (float)sqrt(bc2);
        if (opt->kind == FNN_OPT_ADAMW) {
            o->decay = 1.0f - lr * opt->weight_decay;
            o->wd = 0.0f;
        }
    }
}

/* -------------------------------------------------------------- scheduler
 *
 * A step is a fixed sequence of phases (gather, forward per layer, loss,
 * backward per layer); each phase is a fixed list of independent tasks (runs
 * of GEMM tiles, row chunks, bias panels).  A task of phase p of step s may
 * start once every task of the earlier phases is done, counted by one atomic
 * (`done`), so there is no barrier.
 *
 * Who runs a task: every phase's tasks (the dX, dW and bias ranges of a
 * backward phase separately) are split into nthreads contiguous runs, and
 * thread t runs its own run in every step.  Tasks are column-panel major, so
 * a thread updates the same weight columns in dW that it reads in the next
 * forward: W and the optimizer state stay in that core's cache instead of
 * crossing to the other core every step (measured on 2 cores: 7-10 % of the
 * epoch for mlp and softmax).  A thread with no ready task of its own steals
 * the unclaimed tasks of the phase in progress, so a thread that the OS
 * deschedules (2 cores shared with other work) only delays the task it holds.
 * A claim is one compare-and-swap of the task's slot from step s-1 to s.
 * Which thread runs a task never changes what the task computes: results are
 * bitwise identical for every thread count.
 */
#define ROWS_PER_TASK 16
#define PACK_MIN_PANELS 8            /* dW column panels per thread that pay for a copy of a^T */
/* With 2-4 threads every thread gathers the whole batch into its own copy of
 * a[0] (the gather phase has one run of tasks per copy).  A shared a[0] is
 * read by every thread in the first layer's forward and dW, so the next
 * gather wrote lines held by the other core: measured at 2 threads, the
 * gather took 3x its one-thread time.  Copies cost nthreads one-thread
 * gathers, which is cheaper than those transfers at 2 threads (epochs
 * alternating in one process: softmax 12 %, mlp 4 % faster; 26 % and 8 % in
 * the machine's slow spells) but grows with the thread count, so past 4
 * threads (not measured here) the batch is gathered once. */
#define REPLICATE_MAX_THREADS 4
#define FLOPS_PER_TASK 131072.0      /* ~1-2 us of work at least */
#define TASKS_PER_THREAD 32
#define MAX_PHASES (FNN_TR_PROFILE_SLOTS - 1)

enum { PH_GATHER, PH_FWD, PH_XENT, PH_BWD };

typedef struct {               /* tasks of one GEMM: column panels x chunks of row tiles */
    int64_t per, nchunks, ntasks;
} grid_t;

typedef struct {
    int kind, layer;
    grid_t gx, gw;             /* FWD: gw; BWD: gx (dX, layer > 0) and gw (dW) */
    int pack;                  /* BWD: the dW tasks read per-thread copies of a[l]^T strips */
    int64_t nbias, ntasks, first;
} phase_t;

static grid_t grid_make(int64_t M, int64_t N, int64_t K, int nthreads)
{
    grid_t g;
    int64_t ntm = (M + MR - 1) / MR, ntn = (N + NR - 1) / NR;
    double tile = 2.0 * MR * NR * (double)(K > 0 ? K : 1);
    /* at least FLOPS_PER_TASK of work, and no more than ~TASKS_PER_THREAD tasks per
     * thread: every task costs two atomics on lines the other cores poll */
    int64_t per_flops = (int64_t)ceil(FLOPS_PER_TASK / tile);
    int64_t per_count = ntm * ntn / ((int64_t)TASKS_PER_THREAD * (nthreads > 0 ? nthreads : 1));
    g.per = per_flops > per_count ? per_flops : per_count;
    if (g.per < 1) g.per = 1;
    if (g.per > ntm) g.per = ntm;
    g.nchunks = (ntm + g.per - 1) / g.per;
    g.ntasks = g.nchunks * ntn;
    return g;
}

typedef struct {
    int64_t *claim;                     /* per task of a step: the last step it was claimed in */
    int64_t *done, *stop_step;          /* accessed with __atomic builtins */
    int *solo;                          /* -1, or the one thread that carries on alone */
    int *solo_chunks;                   /* chunks in which a thread went solo */
    int *streak, *hold;                 /* consecutive chunks that went solo; chunks
                                         * still to run solo before the team retries */
    int64_t chunk_tk;                   /* tickets per chunk of steps */
} sched_t;

/* Fallback to one thread.  A wait of more than a few microseconds means the
 * thread we wait for lost its core to another job (a task takes
 * microseconds).  A partner descheduled for one time slice (a few ms) only
 * costs that slice; but when this thread's long waits in the current chunk of
 * steps add up to more than SOLO_MIN_S and SOLO_FRAC of the chunk's time so
 * far, two threads are no faster than one: the waiter carries on alone to the
 * end of the chunk (the others sleep, leaving their core to the other jobs)
 * and the next chunk starts with the whole team again.  So a hiccup costs at
 * most one chunk (~0.15 s of work) at one-thread speed, never the rest of an
 * epoch.  When the machine stays busy, every retry costs its waits: after k
 * chunks in a row went solo, the next 2^(k-1) - 1 (at most 15) chunks run solo
 * before the team tries again (carried over to the next call).  Results do
 * not change: no task depends on which thread runs it. */
#define SOLO_MIN_S 5e-3
#define SOLO_FRAC 0.25
#define CHUNK_FLOPS 1.5e10           /* ~0.15-0.2 s of work on one core */

typedef struct {               /* one thread's waits in its current chunk */
    int64_t chunk;
    double t0, waited;
} pace_t;

static void go_solo(const sched_t *sc, int tid)
{
    int none = -1;
    if (__atomic_compare_exchange_n(sc->solo, &none, tid, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
        __atomic_fetch_add(sc->solo_chunks, 1, __ATOMIC_RELAXED);
        int k = __atomic_add_fetch(sc->streak, 1, __ATOMIC_RELAXED);
        __atomic_store_n(sc->hold, k >= 5 ? 15 : (1 << (k - 1)) - 1, __ATOMIC_RELAXED);
    }
}

/* At the first ticket of a chunk (taken by whichever thread): the team again,
 * unless the chunks before went solo and the back-off holds this one too.
 * The fields are hints that only steer who takes tickets, never results. */
static void new_chunk(const sched_t *sc, int tid)
{
    int so = __atomic_load_n(sc->solo, __ATOMIC_ACQUIRE);
    if (so < 0) {
        __atomic_store_n(sc->streak, 0, __ATOMIC_RELAXED);
    } else if (so == tid && __atomic_load_n(sc->hold, __ATOMIC_RELAXED) > 0) {
        __atomic_fetch_sub(sc->hold, 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(sc->solo_chunks, 1, __ATOMIC_RELAXED);
    } else {
        __atomic_store_n(sc->solo, -1, __ATOMIC_RELEASE);
    }
}

static inline void cpu_relax(void)
{
#if FNN_X86
    _mm_pause();
#endif
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---------------------------------------------------------------- run */

typedef struct {
    fnn_trainer *tr;
    const void *x; int x_u8; ptrdiff_t x_ld;
    const int64_t *y, *idx; ptrdiff_t n;
    const fnn_train_opt *opt;
    int avx2, fuse_xent, nthreads;
    phase_t ph[MAX_PHASES]; int nph;
    int64_t per_step;
    int64_t row_tasks;              /* tasks of ROWS_PER_TASK rows in a batch (one gather copy) */
    int32_t *mine;                  /* thread t's own tasks of a step: mine[mine_at[t]:mine_at[t+1]] */
    int64_t *mine_at;
    float *pack;                    /* per thread: pack_floats for the strips of a[l]^T */
    int64_t *pack_stamp;            /* per thread, per strip: step * FNN_TR_MAXL + layer packed */
    int64_t pack_floats, pack_strips;
    float *a0rep;                   /* NULL, or one copy of a[0] per thread (see plan_phases) */
    int64_t a0rep_stride;
    double loss_sum; int64_t correct, done_steps;
} run_t;

typedef struct {                /* what a thread knows about the step it is in */
    int64_t s; int bs; ptrdiff_t off; float inv_b; opt_sc o;
    int tid;
} step_ctx;

/* The activations a[l] as this thread reads them: its own copy of a[0] when
 * the gather replicates it. */
static inline float *act(const run_t *R, const step_ctx *c, int l)
{
    if (l == 0 && R->a0rep) return R->a0rep + c->tid * R->a0rep_stride;
    return R->tr->a[l];
}

static void run_task(run_t *R, const sched_t *sc, const phase_t *ph, int64_t t, const step_ctx *c)
{
    fnn_trainer *tr = R->tr;
    const int l = ph->layer, L = tr->L, bs = c->bs;
    tile_ep e;
    memset(&e, 0, sizeof(e));
    switch (ph->kind) {
    case PH_GATHER: {
        const int64_t copy = t / R->row_tasks;
        ptrdiff_t lo = (t % R->row_tasks) * ROWS_PER_TASK, hi = lo + ROWS_PER_TASK;
        if (hi > bs) hi = bs;
        gather_rows(R->avx2, R->a0rep ? R->a0rep + copy * R->a0rep_stride : tr->a[0], tr->ld[0],
                    lo, hi, tr->dims[0], R->x, R->x_u8, R->x_ld, R->idx + c->off);
        if (copy == 0)
            for (ptrdiff_t r = lo; r < hi; r++) tr->rowy[r] = R->y[c->off + r];
        /* The rows are scattered over the whole data set (DRAM): start fetching
         * the same chunk of the next step's rows now, a step ahead. */
        {
            ptrdiff_t nlo = c->off + tr->batch + lo, nhi = c->off + tr->batch + hi;
            size_t esz = R->x_u8 ? 1 : sizeof(float);
            if (nhi > R->n) nhi = R->n;
            for (ptrdiff_t r = nlo; r < nhi; r++) {
                const char *row = (const char *)R->x + (size_t)R->idx[r] * R->x_ld * esz;
                for (size_t o = 0; o < (size_t)tr->dims[0] * esz; o += 64)
                    __builtin_prefetch(row + o, 0, 1);
            }
        }
        break;
    }
    case PH_FWD:
        e.N = tr->dims[l + 1];
        e.bias = tr->has_bias[l] ? tr->b[l] : NULL;
        if (l == L - 1 && R->fuse_xent) {
            e.kind = EP_XENT;
            e.C = tr->g[L]; e.ldc = tr->ld[L];
            e.y = tr->rowy; e.inv_b = c->inv_b;
            e.rowloss = tr->rowloss; e.rowok = tr->rowok;
        } else {
            e.kind = EP_FWD;
            e.C = tr->a[l + 1]; e.ldc = tr->ld[l + 1];
            e.relu = tr->relu[l];
        }
        gemm_tiles(R->avx2, bs, tr->dims[l], act(R, c, l), tr->ld[l], 1, MR * tr->ld[l], tr->W[l],
                   tr->ld[l + 1], &e,
                   t / ph->gw.nchunks, t % ph->gw.nchunks * ph->gw.per,
                   (t % ph->gw.nchunks + 1) * ph->gw.per);
        break;
    case PH_XENT: {
        ptrdiff_t lo = t * ROWS_PER_TASK, hi = lo + ROWS_PER_TASK;
        if (hi > bs) hi = bs;
        for (ptrdiff_t r = lo; r < hi; r++)
            tr->rowloss[r] = xent_row(tr->a[L] + r * tr->ld[L], tr->dims[L], tr->rowy[r],
                                      c->inv_b, tr->g[L] + r * tr->ld[L], &tr->rowok[r]);
        break;
    }
    case PH_BWD:
        if (l == L - 1 && t == 0) {
            /* the batch's loss, summed in row order: the same for any thread count */
            double step_loss = 0.0;
            for (int r = 0; r < bs; r++) {
                step_loss += tr->rowloss[r];
                R->correct += tr->rowok[r];
            }
            R->loss_sum += step_loss;
            if (isfinite(step_loss)) R->done_steps = c->s + 1;
            else __atomic_store_n(sc->stop_step, c->s, __ATOMIC_RELEASE);
        }
        if (t < ph->gx.ntasks) {
            /* g[l] = (g[l+1] W[l]^T) * (a[l] > 0), from this step's copy of W^T */
            e.kind = EP_DX;
            e.C = tr->g[l]; e.ldc = tr->ld[l];
            e.mask = tr->relu[l - 1] ? tr->a[l] : NULL; e.ldm = tr->ld[l];
            e.N = tr->dims[l];
            gemm_tiles(R->avx2, bs, tr->dims[l + 1], tr->g[l + 1], tr->ld[l + 1], 1,
                       MR * tr->ld[l + 1], tr->WT[c->s & 1][l], tr->ld[l], &e,
                       t / ph->gx.nchunks, t % ph->gx.nchunks * ph->gx.per,
                       (t % ph->gx.nchunks + 1) * ph->gx.per);
            break;
        }
        t -= ph->gx.ntasks;
        if (t < ph->gw.ntasks) {
            /* dW[l] = a[l]^T g[l+1], consumed by the update (and the next W^T copy) */
            e.kind = EP_DW;
            e.N = tr->dims[l + 1];
            e.W = tr->W[l]; e.s1 = tr->s1W[l]; e.s2 = tr->s2W[l]; e.ldw = tr->ld[l + 1];
            e.WT = l > 0 ? tr->WT[(c->s + 1) & 1][l] : NULL; e.ldwt = tr->ld[l];
            e.o = &c->o;
            const ptrdiff_t jp = t / ph->gw.nchunks, ip_lo = t % ph->gw.nchunks * ph->gw.per;
            ptrdiff_t ip_hi = ip_lo + ph->gw.per;
            if (R->pack && ph->pack) {
                /* this thread's copy of the strips [ip_lo, ip_hi) of a[l]^T */
                const ptrdiff_t nstrips = (tr->dims[l] + MR - 1) / MR;
                float *P = R->pack + c->tid * R->pack_floats;
                int64_t *stamp = R->pack_stamp + c->tid * R->pack_strips;
                const int64_t want = c->s * FNN_TR_MAXL + l;
                if (ip_hi > nstrips) ip_hi = nstrips;
                for (ptrdiff_t ip = ip_lo; ip < ip_hi; ip++)
                    if (stamp[ip] != want) {
                        pack_strip(P + ip * tr->batch * MR, act(R, c, l) + ip * MR, tr->ld[l], bs);
                        stamp[ip] = want;
                    }
                gemm_tiles(R->avx2, tr->dims[l], bs, P, 1, MR, (ptrdiff_t)tr->batch * MR,
                           tr->g[l + 1], tr->ld[l + 1], &e, jp, ip_lo, ip_hi);
            } else {
                gemm_tiles(R->avx2, tr->dims[l], bs, act(R, c, l), 1, tr->ld[l], MR, tr->g[l + 1],
                           tr->ld[l + 1], &e, jp, ip_lo, ip_hi);
            }
            break;
        }
        t -= ph->gw.ntasks;
        {
            ptrdiff_t p_lo = t * 8, p_hi = p_lo + 8;
#if FNN_X86
            if (R->avx2)
                bias_avx2(tr->g[l + 1], tr->ld[l + 1], bs, tr->dims[l + 1], p_lo, p_hi,
                          tr->b[l], tr->s1b[l], tr->s2b[l], &c->o);
            else
#endif
            bias_scalar(tr->g[l + 1], tr->ld[l + 1], bs, tr->dims[l + 1], p_lo, p_hi,
                        tr->b[l], tr->s1b[l], tr->s2b[l], &c->o);
        }
        break;
    }
}

static void plan_phases(run_t *R)
{
    fnn_trainer *tr = R->tr;
    const int L = tr->L, B = tr->batch;
    const int64_t row_tasks = R->row_tasks = (B + ROWS_PER_TASK - 1) / ROWS_PER_TASK;
    phase_t *ph = R->ph;
    int n = 0;
    memset(ph, 0, sizeof(R->ph));
    ph[n].kind = PH_GATHER; ph[n].ntasks = row_tasks * (R->a0rep ? R->nthreads : 1); n++;
    for (int l = 0; l < L; l++) {
        ph[n].kind = PH_FWD; ph[n].layer = l;
        ph[n].gw = grid_make(B, tr->dims[l + 1], tr->dims[l], R->nthreads);
        ph[n].ntasks = ph[n].gw.ntasks;
        n++;
    }
    if (!R->fuse_xent) { ph[n].kind = PH_XENT; ph[n].ntasks = row_tasks; n++; }
    for (int l = L - 1; l >= 0; l--) {
        ph[n].kind = PH_BWD; ph[n].layer = l;
        if (l > 0) ph[n].gx = grid_make(B, tr->dims[l], tr->dims[l + 1], R->nthreads);
        ph[n].gw = grid_make(tr->dims[l], tr->dims[l + 1], B, R->nthreads);
        ph[n].pack = (tr->dims[l + 1] + NR - 1) / NR >= (int64_t)PACK_MIN_PANELS * R->nthreads
                     && tr->dims[l] >= 2 * MR;
        ph[n].nbias = tr->has_bias[l] ? ((tr->dims[l + 1] + NR - 1) / NR + 7) / 8 : 0;
        ph[n].ntasks = ph[n].gx.ntasks + ph[n].gw.ntasks + ph[n].nbias;
        n++;
    }
    int64_t first = 0;
    for (int p = 0; p < n; p++) { ph[p].first = first; first += ph[p].ntasks; }
    R->nph = n;
    R->per_step = first;
}

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The phase of task `loc` of a step. */
static int phase_of(const run_t *R, int64_t loc)
{
    int p = 0;
    while (p + 1 < R->nph && R->ph[p + 1].first <= loc) p++;
    return p;
}

/* Splits every phase's tasks into the threads' own runs (see the scheduler
 * comment): R->mine lists thread t's tasks of a step, in step order. */
static void assign_owners(run_t *R)
{
    const int T = R->nthreads;
    int64_t k = 0;
    for (int t = 0; t < T; t++) {
        R->mine_at[t] = k;
        for (int p = 0; p < R->nph; p++) {
            const phase_t *ph = &R->ph[p];
            int64_t cuts[4] = {0, ph->ntasks, ph->ntasks, ph->ntasks};
            if (ph->kind == PH_BWD) {
                cuts[1] = ph->gx.ntasks;
                cuts[2] = ph->gx.ntasks + ph->gw.ntasks;
            }
            for (int r = 0; r < 3; r++) {
                int64_t lo = cuts[r], n = cuts[r + 1] - cuts[r];
                for (int64_t i = n * t / T; i < n * (t + 1) / T; i++)
                    R->mine[k++] = (int32_t)(ph->first + lo + i);
            }
        }
    }
    R->mine_at[T] = k;
}

/* Claims task `loc` of step s: 1 when this thread is to run it. */
static inline int claim_task(const sched_t *sc, int64_t loc, int64_t s)
{
    int64_t prev = s - 1;
    return __atomic_compare_exchange_n(&sc->claim[loc], &prev, s, 0, __ATOMIC_ACQ_REL,
                                       __ATOMIC_RELAXED);
}

typedef struct {                 /* one thread's profile: CPU time per phase, and waits */
    double *out, t[MAX_PHASES + 1], tcur;
    int pcur;
} prof_t;

static void prof_switch(prof_t *pf, int slot)
{
    if (!pf->out || slot == pf->pcur) return;
    double t = cpu_s();
    if (pf->pcur >= 0) pf->t[pf->pcur] += t - pf->tcur;
    pf->pcur = slot;
    pf->tcur = t;
}

static void worker(run_t *R, const sched_t *sc, int tid, double *prof)
{
    const int64_t B = R->tr->batch, per = R->per_step;
    const int64_t nsteps = (R->n + B - 1) / B, total = nsteps * per;
    const int32_t *mine = R->mine + R->mine_at[tid];
    const int64_t nmine = R->mine_at[tid + 1] - R->mine_at[tid];
    const int solo_team = R->nthreads > 1;
    /* profile: this thread's CPU time, read only when the phase changes or a
     * wait starts/ends (a few clock reads per step, not per task) */
    prof_t pf = {prof, {0}, 0.0, -1};
    pace_t pc = {-1, 0.0, 0.0};
    step_ctx c;
    c.s = -1;
    c.tid = tid;
    int64_t own_s = 0, own_k = 0;        /* this thread's next own task: step, index in mine */
    unsigned spins = 0;
    double idle_t0 = -1.0;
    int asked = 0;
    if (nmine == 0) own_s = nsteps;
    for (;;) {
        /* done first: a stop is stored before the done count of its task */
        const int64_t done = __atomic_load_n(sc->done, __ATOMIC_ACQUIRE);
        const int64_t stop = __atomic_load_n(sc->stop_step, __ATOMIC_ACQUIRE);
        const int64_t end = stop < nsteps ? (stop + 1) * per : total;
        if (done >= end) break;
        int solo = __atomic_load_n(sc->solo, __ATOMIC_ACQUIRE);
        if (solo >= 0 && solo != tid) {
            /* Sleep (not spin) until the solo thread starts the next chunk or
             * the run ends, so that this core goes to the other jobs. */
            struct timespec nap = {0, 200000};
            prof_switch(&pf, MAX_PHASES);
            for (;;) {
                int so = __atomic_load_n(sc->solo, __ATOMIC_ACQUIRE);
                if (so < 0 || so == tid ||
                    __atomic_load_n(sc->done, __ATOMIC_ACQUIRE) >= total ||
                    __atomic_load_n(sc->stop_step, __ATOMIC_ACQUIRE) != INT64_MAX)
                    break;
                nanosleep(&nap, NULL);
            }
            continue;
        }
        /* the frontier: the step and phase in progress (all earlier tasks done) */
        const int64_t fs = done / per;
        const int fp = phase_of(R, done - fs * per);
        /* this thread's next own task not taken by another */
        while (own_s < nsteps &&
               __atomic_load_n(&sc->claim[mine[own_k]], __ATOMIC_ACQUIRE) >= own_s) {
            if (++own_k == nmine) { own_k = 0; own_s++; }
        }
        int64_t s = -1, loc = -1;
        if (own_s < nsteps && own_s <= stop) {
            int64_t l = mine[own_k];
            int p = phase_of(R, l);
            if ((own_s < fs || (own_s == fs && p <= fp)) && claim_task(sc, l, own_s)) {
                s = own_s;
                loc = l;
            }
        }
        if (loc < 0 && fs < nsteps && fs <= stop) {
            /* steal an unclaimed task of the phase in progress */
            const phase_t *ph = &R->ph[fp];
            for (int64_t l = ph->first; l < ph->first + ph->ntasks; l++) {
                if (__atomic_load_n(&sc->claim[l], __ATOMIC_RELAXED) == fs - 1 &&
                    claim_task(sc, l, fs)) {
                    s = fs;
                    loc = l;
                    break;
                }
            }
        }
        if (loc < 0) {
            /* nothing ready: a task of another thread is running.  Long waits
             * (past the first 1024 spins) count towards the fallback. */
            prof_switch(&pf, MAX_PHASES);
            if (++spins < 1024) {
                cpu_relax();
                continue;
            }
            spins = 0;
            double t = mono_s();
            if (idle_t0 < 0.0) {
                idle_t0 = t;
            } else if (!asked && solo_team) {
                double w = pc.waited + (t - idle_t0), lim = SOLO_FRAC * (t - pc.t0);
                if (w > SOLO_MIN_S && w > lim) {
                    asked = 1;
                    go_solo(sc, tid);
                }
            }
            /* no sched_yield(): on a busy machine it hands this core to another
             * job for a whole time slice, and then the partner waits for us */
            continue;
        }
        spins = 0;
        if (idle_t0 >= 0.0) {
            pc.waited += mono_s() - idle_t0;
            idle_t0 = -1.0;
        }
        const int64_t tk = s * per + loc, in_chunk = tk % sc->chunk_tk;
        if (in_chunk == 0 && tk > 0) new_chunk(sc, tid);
        if (tk / sc->chunk_tk != pc.chunk) {
            pc.chunk = tk / sc->chunk_tk;
            pc.t0 = mono_s();
            pc.waited = 0.0;
            asked = 0;
        }
        if (in_chunk == R->opt->solo_after) go_solo(sc, tid);
        const int p = phase_of(R, loc);
        prof_switch(&pf, p);
        if (s != c.s) {
            c.s = s;
            c.off = (ptrdiff_t)(s * B);
            c.bs = (int)(R->n - c.off < B ? R->n - c.off : B);
            c.inv_b = 1.0f / (float)c.bs;
            opt_step_scalars(R->opt, s, &c.o);
        }
        run_task(R, sc, &R->ph[p], loc - R->ph[p].first, &c);
        __atomic_fetch_add(sc->done, 1, __ATOMIC_RELEASE);
    }
    if (prof) {
        prof_switch(&pf, -2);
#ifdef FASTNN_HAVE_OPENMP
#pragma omp critical(fnn_trainer_prof)
#endif
        for (int p = 0; p <= MAX_PHASES; p++) prof[p] += pf.t[p];
    }
}

int64_t fnn_trainer_run(fnn_trainer *tr,
                        float *const *W, float *const *b,
                        float *const *s1W, float *const *s1b,
                        float *const *s2W, float *const *s2b,
                        const void *x, int x_u8, ptrdiff_t x_ld,
                        const int64_t *y, const int64_t *idx, ptrdiff_t n,
                        const fnn_train_opt *opt, int nthreads,
                        double *loss_sum_out, int64_t *correct_out)
{
    const int L = tr->L;
    run_t R;
    memset(&R, 0, sizeof(R));
    R.tr = tr; R.x = x; R.x_u8 = x_u8; R.x_ld = x_ld; R.y = y; R.idx = idx; R.n = n;
    R.opt = opt;
    R.avx2 = fnn_use_avx2();
    R.fuse_xent = tr->dims[L] <= NR;     /* one column panel: each tile holds whole rows */
    if (nthreads < 1) nthreads = 1;
    R.nthreads = nthreads;
    R.a0rep = NULL;
    if (nthreads > 1 && nthreads <= REPLICATE_MAX_THREADS) {
        R.a0rep_stride = ((int64_t)tr->rows * tr->ld[0] + MR + 15) / 16 * 16;
        R.a0rep = zalloc((size_t)(R.a0rep_stride * nthreads));
    }
    plan_phases(&R);

    for (int l = 0; l < L; l++) {
        int in = tr->dims[l], out = tr->dims[l + 1];
        copy_in(tr->W[l], tr->ld[l + 1], W[l], in, out);
        if (s1W[l]) copy_in(tr->s1W[l], tr->ld[l + 1], s1W[l], in, out);
        if (s2W[l]) copy_in(tr->s2W[l], tr->ld[l + 1], s2W[l], in, out);
        if (tr->has_bias[l]) {
            memcpy(tr->b[l], b[l], (size_t)out * sizeof(float));
            if (s1b[l]) memcpy(tr->s1b[l], s1b[l], (size_t)out * sizeof(float));
            if (s2b[l]) memcpy(tr->s2b[l], s2b[l], (size_t)out * sizeof(float));
        }
        if (l > 0)
            transpose_into(tr->WT[0][l], tr->ld[l], W[l], in, out);
    }
    if (nthreads < 1) nthreads = 1;

    int64_t *claim = NULL;
    R.mine = NULL;
    R.mine_at = NULL;
    if (n > 0) {
        claim = malloc((size_t)R.per_step * sizeof(int64_t));
        R.mine = malloc((size_t)R.per_step * sizeof(int32_t));
        R.mine_at = malloc((size_t)(nthreads + 1) * sizeof(int64_t));
        if (!claim || !R.mine || !R.mine_at) {
            free(claim); free(R.mine); free(R.mine_at);
            return -1;
        }
        for (int64_t i = 0; i < R.per_step; i++) claim[i] = -1;
        assign_owners(&R);
        for (int p = 0; p < R.nph; p++) {
            if (!R.ph[p].pack) continue;
            int64_t strips = (tr->dims[R.ph[p].layer] + MR - 1) / MR;
            if (strips > R.pack_strips) R.pack_strips = strips;
        }
        if (R.pack_strips > 0) {
            R.pack_floats = R.pack_strips * tr->batch * MR + 16;
            R.pack = zalloc((size_t)(R.pack_floats * nthreads));
            R.pack_stamp = malloc((size_t)(R.pack_strips * nthreads) * sizeof(int64_t));
            if (!R.pack || !R.pack_stamp) {
                free(R.pack); free(R.pack_stamp);
                R.pack = NULL;
                R.pack_stamp = NULL;
            } else {
                for (int64_t i = 0; i < R.pack_strips * nthreads; i++) R.pack_stamp[i] = -1;
            }
        }
    }
    if (n > 0) {
        /* one cache line each: the completion count is hit by every task and
         * polled by waiters */
        struct { int64_t v; char pad[56]; } cnt[3] __attribute__((aligned(64)));
        int solo = -1, solo_chunks = 0, streak = tr->solo_streak, hold = tr->solo_hold;
        if (nthreads > 1 && hold > 0) {   /* the back-off holds the first chunk too */
            solo = 0;
            hold--;
            solo_chunks = 1;
        }
        cnt[1].v = 0;
        cnt[2].v = INT64_MAX;
        int64_t chunk_steps = opt->chunk_steps;
        if (chunk_steps <= 0) {
            double step_flops = 0.0;
            for (int l = 0; l < L; l++)
                step_flops += 2.0 * tr->batch * tr->dims[l] * tr->dims[l + 1] * (l > 0 ? 3 : 2);
            chunk_steps = (int64_t)(CHUNK_FLOPS / step_flops) + 1;
        }
        sched_t sc = {claim, &cnt[1].v, &cnt[2].v, &solo, &solo_chunks, &streak, &hold,
                      chunk_steps * R.per_step};
#ifdef FASTNN_HAVE_OPENMP
#pragma omp parallel num_threads(nthreads)
        worker(&R, &sc, omp_get_thread_num(), opt->profile);
#else
        worker(&R, &sc, 0, opt->profile);
#endif
        if (opt->solo_out) *opt->solo_out = solo_chunks;
        tr->solo_streak = solo >= 0 ? streak : 0;
        tr->solo_hold = solo >= 0 ? hold : 0;
    }
    free(claim);
    free(R.mine);
    free(R.mine_at);
    free(R.pack);
    free(R.pack_stamp);
    free(R.a0rep);

    for (int l = 0; l < L; l++) {
        int in = tr->dims[l], out = tr->dims[l + 1];
        copy_out(W[l], tr->W[l], tr->ld[l + 1], in, out);
        if (s1W[l]) copy_out(s1W[l], tr->s1W[l], tr->ld[l + 1], in, out);
        if (s2W[l]) copy_out(s2W[l], tr->s2W[l], tr->ld[l + 1], in, out);
        if (tr->has_bias[l]) {
            memcpy(b[l], tr->b[l], (size_t)out * sizeof(float));
            if (s1b[l]) memcpy(s1b[l], tr->s1b[l], (size_t)out * sizeof(float));
            if (s2b[l]) memcpy(s2b[l], tr->s2b[l], (size_t)out * sizeof(float));
        }
    }
    *loss_sum_out = R.loss_sum;
    *correct_out = R.correct;
    return R.done_steps;
}
