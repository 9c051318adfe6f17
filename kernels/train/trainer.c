/* The fused native training loop (see trainer.h for the math and layout).
 *
 * Variants, chosen at run time by fnn_simd_level():
 *   v0 scalar: plain C 6x16 tile kernel and epilogues (always works, the
 *      reference the AVX2 path is tested against)
 *   v1 AVX2+FMA: 6x16 register-tile microkernel (12 ymm accumulators,
 *      broadcast A, two vector loads of B per k) with the same epilogues
 *      compiled for AVX2
 *
 * Every GEMM of the step has the form  T[6,16] = A[i0:i0+6, :] @ B[:, j0:j0+16]
 * with B row-major (padded stride) and A given by (row, column) strides, so
 * the same kernel serves
 *   forward   A = a[l]          (rsa = ld, csa = 1),   B = W[l]
 *   backward  A = g[l+1]        (rsa = ld, csa = 1),   B = W[l]^T (a copy kept by the trainer)
 *   weights   A = a[l]^T        (rsa = 1,  csa = ld),  B = g[l+1]
 * No operand is packed per step: the padded strides keep the B panel's rows
 * in distinct cache sets and the A rows are read as broadcasts.
 */
#include "trainer.h"
#include "cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if FNN_X86
#include <immintrin.h>
#endif

#define MR 6
#define NR 16

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
};

/* Per-step optimizer scalars (Adam's bias corrections change every step). */
typedef struct {
    int kind, nesterov;
    float lr, wd, mu, damp1;
    float b1, b2, eps, step_size, bc2_sqrt, decay;   /* Adam; decay = 1 - lr*wd for AdamW */
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

static void split_range(ptrdiff_t n, int t, int nt, ptrdiff_t *lo, ptrdiff_t *hi)
{
    *lo = n * t / nt;
    *hi = n * (t + 1) / nt;
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
FNN_TARGET_AVX2
static void mk_avx2(ptrdiff_t K, const float *A, ptrdiff_t rsa, ptrdiff_t csa,
                    const float *B, ptrdiff_t ldb, float *T)
{
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    const float *a0 = A, *a1 = A + rsa, *a2 = A + 2 * rsa;
    const ptrdiff_t r3 = 3 * rsa;
    for (ptrdiff_t k = 0; k < K; k++) {
        __m256 b0 = _mm256_load_ps(B), b1 = _mm256_load_ps(B + 8);
        __m256 x;
        x = _mm256_broadcast_ss(a0);
        c00 = _mm256_fmadd_ps(x, b0, c00); c01 = _mm256_fmadd_ps(x, b1, c01);
        x = _mm256_broadcast_ss(a1);
        c10 = _mm256_fmadd_ps(x, b0, c10); c11 = _mm256_fmadd_ps(x, b1, c11);
        x = _mm256_broadcast_ss(a2);
        c20 = _mm256_fmadd_ps(x, b0, c20); c21 = _mm256_fmadd_ps(x, b1, c21);
        x = _mm256_broadcast_ss(a0 + r3);
        c30 = _mm256_fmadd_ps(x, b0, c30); c31 = _mm256_fmadd_ps(x, b1, c31);
        x = _mm256_broadcast_ss(a1 + r3);
        c40 = _mm256_fmadd_ps(x, b0, c40); c41 = _mm256_fmadd_ps(x, b1, c41);
        x = _mm256_broadcast_ss(a2 + r3);
        c50 = _mm256_fmadd_ps(x, b0, c50); c51 = _mm256_fmadd_ps(x, b1, c51);
        a0 += csa; a1 += csa; a2 += csa;
        B += ldb;
    }
    _mm256_store_ps(T + 0, c00);  _mm256_store_ps(T + 8, c01);
    _mm256_store_ps(T + 16, c10); _mm256_store_ps(T + 24, c11);
    _mm256_store_ps(T + 32, c20); _mm256_store_ps(T + 40, c21);
    _mm256_store_ps(T + 48, c30); _mm256_store_ps(T + 56, c31);
    _mm256_store_ps(T + 64, c40); _mm256_store_ps(T + 72, c41);
    _mm256_store_ps(T + 80, c50); _mm256_store_ps(T + 88, c51);
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
        const float b1 = o->b1, b2 = o->b2, c1 = 1.0f - o->b1, c2 = 1.0f - o->b2;
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

static inline __attribute__((always_inline))
void epilogue(const tile_ep *e, ptrdiff_t i0, ptrdiff_t j0, int mr, float *T)
{
    int nc = e->N - (int)j0 < NR ? e->N - (int)j0 : NR;
    switch (e->kind) {
    case EP_FWD:
        for (int i = 0; i < mr; i++) {
            float *c = e->C + (i0 + i) * e->ldc + j0;
            const float *t = T + i * NR;
            if (e->bias) {
                for (int j = 0; j < NR; j++) c[j] = t[j] + e->bias[j0 + j];
            } else {
                for (int j = 0; j < NR; j++) c[j] = t[j];
            }
            if (e->relu)
                for (int j = 0; j < NR; j++) c[j] = c[j] > 0.0f ? c[j] : 0.0f;
        }
        break;
    case EP_DX:
        for (int i = 0; i < mr; i++) {
            float *c = e->C + (i0 + i) * e->ldc + j0;
            const float *t = T + i * NR;
            if (e->mask) {
                const float *m = e->mask + (i0 + i) * e->ldm + j0;
                for (int j = 0; j < NR; j++) c[j] = m[j] > 0.0f ? t[j] : 0.0f;
            } else {
                for (int j = 0; j < NR; j++) c[j] = t[j];
            }
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

/* The team's share of C = epilogue(A @ B): tiles of 6 rows x 16 columns,
 * numbered column-panel-major and split in contiguous ranges, so a thread
 * reuses one B panel across consecutive tiles. */
#define TEAM_GEMM_BODY(MK)                                                          \
    ptrdiff_t ntm = (M + MR - 1) / MR, ntn = (N + NR - 1) / NR, lo, hi;             \
    float T[MR * NR] __attribute__((aligned(64)));                                  \
    split_range(ntm * ntn, tid, nt, &lo, &hi);                                      \
    for (ptrdiff_t t = lo; t < hi; t++) {                                           \
        ptrdiff_t jp = t / ntm, ip = t % ntm;                                       \
        ptrdiff_t i0 = ip * MR, j0 = jp * NR;                                       \
        int mr = M - i0 < MR ? (int)(M - i0) : MR;                                  \
        MK(K, A + i0 * rsa, rsa, csa, B + j0, ldb, T);                              \
        epilogue(e, i0, j0, mr, T);                                                 \
    }

static void team_gemm_scalar(int tid, int nt, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                             const float *A, ptrdiff_t rsa, ptrdiff_t csa,
                             const float *B, ptrdiff_t ldb, const tile_ep *e)
{
    TEAM_GEMM_BODY(mk_scalar)
}

#if FNN_X86
FNN_TARGET_AVX2
static void team_gemm_avx2(int tid, int nt, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                           const float *A, ptrdiff_t rsa, ptrdiff_t csa,
                           const float *B, ptrdiff_t ldb, const tile_ep *e)
{
    TEAM_GEMM_BODY(mk_avx2)
}
#endif

static void team_gemm(int avx2, int tid, int nt, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                      const float *A, ptrdiff_t rsa, ptrdiff_t csa,
                      const float *B, ptrdiff_t ldb, const tile_ep *e)
{
#if FNN_X86
    if (avx2) {
        team_gemm_avx2(tid, nt, M, N, K, A, rsa, csa, B, ldb, e);
        return;
    }
#endif
    (void)avx2;
    team_gemm_scalar(tid, nt, M, N, K, A, rsa, csa, B, ldb, e);
}

/* ------------------------------------------------- bias gradient + update */

static inline __attribute__((always_inline))
void bias_body(int tid, int nt, const float *g, ptrdiff_t ldg, int rows, int N,
               float *bias, float *s1, float *s2, const opt_sc *o)
{
    ptrdiff_t np = (N + NR - 1) / NR, lo, hi;
    float acc[NR];
    split_range(np, tid, nt, &lo, &hi);
    for (ptrdiff_t p = lo; p < hi; p++) {
        ptrdiff_t j0 = p * NR;
        int nc = N - (int)j0 < NR ? N - (int)j0 : NR;
        for (int j = 0; j < NR; j++) acc[j] = 0.0f;
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < NR; j++) acc[j] += g[r * ldg + j0 + j];
        opt_update(o, bias + j0, s1 + j0, s2 + j0, acc, nc);
    }
}

static void bias_scalar(int tid, int nt, const float *g, ptrdiff_t ldg, int rows, int N,
                        float *bias, float *s1, float *s2, const opt_sc *o)
{
    bias_body(tid, nt, g, ldg, rows, N, bias, s1, s2, o);
}

#if FNN_X86
FNN_TARGET_AVX2
static void bias_avx2(int tid, int nt, const float *g, ptrdiff_t ldg, int rows, int N,
                      float *bias, float *s1, float *s2, const opt_sc *o)
{
    bias_body(tid, nt, g, ldg, rows, N, bias, s1, s2, o);
}
#endif

/* ------------------------------------------------------------- gather */

void fnn_trainer_u8_to_f32(const uint8_t *src, float *dst, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++) dst[i] = (float)src[i] / 255.0f;
}

#if FNN_X86
/* x / 255 correctly rounded without a division: q = x * (1/255) is within an
 * ulp; one Newton correction with the exact residual x - 255 q (an FMA)
 * gives the rounded quotient (checked exhaustively against x / 255.0f for
 * all 256 values in tests/test_fused.py). */
FNN_TARGET_AVX2
static void u8_to_f32_avx2(const uint8_t *src, float *dst, ptrdiff_t n)
{
    const __m256 r = _mm256_set1_ps(1.0f / 255.0f), c = _mm256_set1_ps(255.0f);
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i b = _mm_loadl_epi64((const __m128i *)(src + i));
        __m256 x = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
        __m256 q = _mm256_mul_ps(x, r);
        __m256 res = _mm256_fnmadd_ps(q, c, x);
        q = _mm256_fmadd_ps(res, r, q);
        _mm256_storeu_ps(dst + i, q);
    }
    for (; i < n; i++) dst[i] = (float)src[i] / 255.0f;
}
#endif

static void gather_rows(int avx2, int tid, int nt, float *a0, ptrdiff_t lda, int rows, int D,
                        const void *x, int x_u8, ptrdiff_t x_ld, const int64_t *idx)
{
    ptrdiff_t lo, hi;
    split_range(rows, tid, nt, &lo, &hi);
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

static void opt_step_scalars(const fnn_train_opt *opt, int64_t t, opt_sc *o)
{
    memset(o, 0, sizeof(*o));
    o->kind = opt->kind;
    o->lr = opt->lr;
    o->wd = opt->weight_decay;
    o->mu = opt->momentum;
    o->damp1 = 1.0f - opt->dampening;
    o->nesterov = opt->nesterov;
    o->decay = 1.0f;
    if (opt->kind != FNN_OPT_SGD) {
        double bc1 = 1.0 - pow((double)opt->beta1, (double)t);
        double bc2 = 1.0 - pow((double)opt->beta2, (double)t);
        o->b1 = opt->beta1;
        o->b2 = opt->beta2;
        o->eps = opt->eps;
        o->step_size = (float)((double)opt->lr / bc1);
        o->bc2_sqrt = (float)sqrt(bc2);
        if (opt->kind == FNN_OPT_ADAMW) {
            o->decay = 1.0f - opt->lr * opt->weight_decay;
            o->wd = 0.0f;
        }
    }
}

/* ---------------------------------------------------------------- run */

int64_t fnn_trainer_run(fnn_trainer *tr,
                        float *const *W, float *const *b,
                        float *const *s1W, float *const *s1b,
                        float *const *s2W, float *const *s2b,
                        const void *x, int x_u8, ptrdiff_t x_ld,
                        const int64_t *y, const int64_t *idx, ptrdiff_t n,
                        const fnn_train_opt *opt, int nthreads,
                        double *loss_sum_out, int64_t *correct_out)
{
    const int L = tr->L, B = tr->batch;
    const int64_t nsteps = n > 0 ? (n + B - 1) / B : 0;
    const int avx2 = fnn_simd_level() >= FNN_SIMD_AVX2;
    const int fuse_xent = tr->dims[L] <= NR;     /* one column panel: rows are whole */
    double loss_sum = 0.0;
    int64_t correct = 0;

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
            for (int i = 0; i < in; i++)
                for (int j = 0; j < out; j++)
                    tr->WT[0][l][(ptrdiff_t)j * tr->ld[l] + i] = W[l][(ptrdiff_t)i * out + j];
    }
    if (nthreads < 1) nthreads = 1;
    if (nsteps < 1) goto done;

#ifdef FASTNN_HAVE_OPENMP
#pragma omp parallel num_threads(nthreads)
#endif
    {
#ifdef FASTNN_HAVE_OPENMP
        const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
#define BARRIER _Pragma("omp barrier")
#else
        const int tid = 0, nt = 1;
#define BARRIER
#endif
        int wcur = 0;
        opt_sc o;
        for (int64_t s = 0; s < nsteps; s++) {
            const ptrdiff_t off = (ptrdiff_t)(s * B);
            const int bs = (int)(n - off < B ? n - off : B);
            const int64_t *bidx = idx + off;
            const float inv_b = 1.0f / (float)bs;
            opt_step_scalars(opt, opt->step + s + 1, &o);

            gather_rows(avx2, tid, nt, tr->a[0], tr->ld[0], bs, tr->dims[0], x, x_u8, x_ld, bidx);
            {
                ptrdiff_t lo, hi;
                split_range(bs, tid, nt, &lo, &hi);
                for (ptrdiff_t r = lo; r < hi; r++) tr->rowy[r] = y[bidx[r]];
            }
            BARRIER

            for (int l = 0; l < L; l++) {
                tile_ep e;
                memset(&e, 0, sizeof(e));
                e.N = tr->dims[l + 1];
                e.bias = tr->has_bias[l] ? tr->b[l] : NULL;
                if (l == L - 1 && fuse_xent) {
                    e.kind = EP_XENT;
                    e.C = tr->g[L]; e.ldc = tr->ld[L];
                    e.y = tr->rowy; e.inv_b = inv_b;
                    e.rowloss = tr->rowloss; e.rowok = tr->rowok;
                } else {
                    e.kind = EP_FWD;
                    e.C = tr->a[l + 1]; e.ldc = tr->ld[l + 1];
                    e.relu = tr->relu[l];
                }
                team_gemm(avx2, tid, nt, bs, tr->dims[l + 1], tr->dims[l],
                          tr->a[l], tr->ld[l], 1, tr->W[l], tr->ld[l + 1], &e);
                BARRIER
            }
            if (!fuse_xent) {
                ptrdiff_t lo, hi;
                split_range(bs, tid, nt, &lo, &hi);
                for (ptrdiff_t r = lo; r < hi; r++)
                    tr->rowloss[r] = xent_row(tr->a[L] + r * tr->ld[L], tr->dims[L], tr->rowy[r],
                                              inv_b, tr->g[L] + r * tr->ld[L], &tr->rowok[r]);
                BARRIER
            }
            if (tid == 0) {
                /* fixed summation order: the same totals for any thread count */
                for (int r = 0; r < bs; r++) {
                    loss_sum += tr->rowloss[r];
                    correct += tr->rowok[r];
                }
            }

            for (int l = L - 1; l >= 0; l--) {
                tile_ep e;
                if (l > 0) {
                    memset(&e, 0, sizeof(e));
                    e.kind = EP_DX;
                    e.C = tr->g[l]; e.ldc = tr->ld[l];
                    e.mask = tr->relu[l - 1] ? tr->a[l] : NULL; e.ldm = tr->ld[l];
                    e.N = tr->dims[l];
                    team_gemm(avx2, tid, nt, bs, tr->dims[l], tr->dims[l + 1],
                              tr->g[l + 1], tr->ld[l + 1], 1, tr->WT[wcur][l], tr->ld[l], &e);
                }
                memset(&e, 0, sizeof(e));
                e.kind = EP_DW;
                e.N = tr->dims[l + 1];
                e.W = tr->W[l]; e.s1 = tr->s1W[l]; e.s2 = tr->s2W[l]; e.ldw = tr->ld[l + 1];
                e.WT = l > 0 ? tr->WT[wcur ^ 1][l] : NULL; e.ldwt = tr->ld[l];
                e.o = &o;
                team_gemm(avx2, tid, nt, tr->dims[l], tr->dims[l + 1], bs,
                          tr->a[l], 1, tr->ld[l], tr->g[l + 1], tr->ld[l + 1], &e);
                if (tr->has_bias[l]) {
#if FNN_X86
                    if (avx2)
                        bias_avx2(tid, nt, tr->g[l + 1], tr->ld[l + 1], bs, tr->dims[l + 1],
                                  tr->b[l], tr->s1b[l], tr->s2b[l], &o);
                    else
#endif
                    bias_scalar(tid, nt, tr->g[l + 1], tr->ld[l + 1], bs, tr->dims[l + 1],
                                tr->b[l], tr->s1b[l], tr->s2b[l], &o);
                }
                BARRIER
            }
            wcur ^= 1;
        }
#undef BARRIER
    }
done:
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
    *loss_sum_out = loss_sum;
    *correct_out = correct;
    return nsteps;
}
