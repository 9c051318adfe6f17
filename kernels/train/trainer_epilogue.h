/* The tile epilogues of the fused trainer: what happens to a 6 x 16 tile of
 * A @ B once its K loop is done.  Everything here is static inline and
 * always_inline: it is compiled into each GEMM tile loop (trainer_gemm.c),
 * once per instruction set, so that the per-element work vectorises with the
 * loop's target (a call per tile row would cost more than the row's work).
 *
 *   FWD   a[l+1] = act(T + b)                      (ReLU or identity)
 *   DX    g[l]   = T * (a[l] > 0)                  (ReLU backward, as a bit mask)
 *   DW    W -= update(T)  and W^T's column copy   (T = the tile of dW, never stored)
 *   DWG   G = T                                    (the gradient-only step: dW stored)
 *   XENT  g[L]   = softmax(T + b) - onehot(y), the row's loss and hit
 *
 * Also declared here: trainer_epilogue.c's bias-gradient update (a column
 * sum of g[l+1] followed by opt_update) and the per-step optimizer scalars. */
#ifndef FNN_TR_EPILOGUE_H
#define FNN_TR_EPILOGUE_H

#include "trainer_impl.h"

#include <math.h>

/* Optimizer update of n contiguous parameters w given their gradient g. */
static inline __attribute__((always_inline))
void opt_update(const opt_sc *o, float *restrict w, float *restrict s1, float *restrict s2,
                const float *restrict g, int n)
{
    const float lr = o->lr, wd = o->wd, mu = o->mu, d1 = o->damp1;
    if (o->kind == FNN_OPT_GRAD) {          /* the gradient-only step: keep g */
        for (int j = 0; j < n; j++) w[j] = g[j];
    } else if (o->kind == FNN_OPT_SGD) {
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

enum { EP_FWD, EP_DX, EP_DW, EP_XENT, EP_DWG };

typedef struct {
    int kind;
    float *C; ptrdiff_t ldc;          /* FWD, DX, XENT (C = g[L]) */
    const float *bias; int relu;      /* FWD, XENT */
    const float *mask; ptrdiff_t ldm; /* DX: keep where mask > 0 */
    int N;                            /* valid columns */
    /* DW (DWG: W is the gradient's rows, ldw their stride) */
    float *W, *s1, *s2, *WT; ptrdiff_t ldw, ldwt;
    const opt_sc *o;
    /* XENT */
    const int64_t *y; float inv_b; double *rowloss; int *rowok;
    /* bf16 mode (trainer_gemm_bf16.c): FWD, DX and XENT also write their fp32 rows
     * rounded to bf16, row-major to Cb (stride ldc) and row-pair interleaved to Cp
     * (pair-row r/2 at Cp + (r/2) * ldc, lane j = rows (r, r+1) of column j); DW also
     * refreshes the bf16 copies of the updated W: Wb (forward B, K pairs = rows of W,
     * pair-row stride ldw) and WTb (dX B, K pairs = columns of W, stride ldwt) */
    uint16_t *Cb; uint32_t *Cp;
    uint32_t *Wb, *WTb;
} tile_ep;

/* ------------------------------------------------------------ bf16 rounding */

/* The bf16 bits of x (in the low 16 bits), round to nearest even, as
 * fastnn.kernels.matmul.reference.bf16_bits: zero and denormals become a signed
 * zero (AVX512_BF16 flushes them), NaN stays a quiet NaN, infinities stay.
 * Branch-free so that row loops vectorise with the caller's target. */
static inline __attribute__((always_inline)) uint32_t bf16_bits32(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof(u));
    uint32_t mag = u & 0x7fffffffu;
    uint32_t rne = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t nan = (u | 0x00400000u) >> 16;
    uint32_t zero = (u >> 16) & 0x8000u;
    uint32_t r = mag < 0x00800000u ? zero : rne;
    return mag > 0x7f800000u ? nan : r;
}

/* One row of NR floats to bf16, row-major. */
static inline __attribute__((always_inline))
void bf16_row16(uint16_t *restrict d, const float *restrict s)
{
    for (int j = 0; j < NR; j++) d[j] = (uint16_t)bf16_bits32(s[j]);
}

/* Two rows of NR floats to one pair-row: lane j = (lo[j], hi[j]). */
static inline __attribute__((always_inline))
void bf16_pair16(uint32_t *restrict d, const float *restrict lo, const float *restrict hi)
{
    for (int j = 0; j < NR; j++) d[j] = bf16_bits32(lo[j]) | (bf16_bits32(hi[j]) << 16);
}

/* Branch-free row stores (written so that the compiler vectorises them: a
 * data-dependent branch per element mispredicts half the time on ReLU masks).
 * relu: max(t + b, 0), NaN -> 0 as in (x > 0 ? x : 0). */
static const float zero16[NR] __attribute__((aligned(64), unused));

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

/* The bf16 copies of rows [i0, i0 + mr) x columns [j0, j0 + NR) of the fp32 C
 * just written (i0 even): row-major to Cb, row pairs to Cp; a pair whose second
 * row is past mr gets zeros there (the K = rows sums of dW read whole pairs). */
static inline __attribute__((always_inline))
void bf16_copies(const tile_ep *e, ptrdiff_t i0, ptrdiff_t j0, int mr)
{
    for (int p = 0; 2 * p < mr; p++) {
        const float *lo = e->C + (i0 + 2 * p) * e->ldc + j0;
        const float *hi = 2 * p + 1 < mr ? lo + e->ldc : zero16;
        if (e->Cp) bf16_pair16(e->Cp + (i0 / 2 + p) * e->ldc + j0, lo, hi);
        if (e->Cb) {
            bf16_row16(e->Cb + (i0 + 2 * p) * e->ldc + j0, lo);
            if (2 * p + 1 < mr) bf16_row16(e->Cb + (i0 + 2 * p + 1) * e->ldc + j0, hi);
        }
    }
}

/* The bf16 copies of the W tile rows [i0, i0 + mr) x columns [j0, j0 + NR) just
 * updated: Wb's pair-rows from i0/2 (rows past mr are W's zero padding) and, for
 * dX, WTb's pair-rows j0/2 .. j0/2 + 7 at columns [i0, i0 + mr). */
static inline __attribute__((always_inline))
void bf16_weights(const tile_ep *e, ptrdiff_t i0, ptrdiff_t j0, int mr)
{
    const float *w = e->W + i0 * e->ldw + j0;
    for (int p = 0; 2 * p < mr; p++)
        bf16_pair16(e->Wb + (i0 / 2 + p) * e->ldw + j0, w + 2 * p * e->ldw,
                    w + (2 * p + 1) * e->ldw);
    if (!e->WTb) return;
    for (int q = 0; q < NR / 2; q++) {
        uint32_t *d = e->WTb + (j0 / 2 + q) * e->ldwt + i0;
        for (int i = 0; i < mr; i++)
            d[i] = bf16_bits32(w[i * e->ldw + 2 * q])
                   | (bf16_bits32(w[i * e->ldw + 2 * q + 1]) << 16);
    }
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
        if (e->Cb || e->Cp) bf16_copies(e, i0, j0, mr);
        break;
    case EP_DX:
        for (int i = 0; i < mr; i++) {
            if (e->mask)
                store_masked_row(e->C + (i0 + i) * e->ldc + j0, T + i * NR,
                                 e->mask + (i0 + i) * e->ldm + j0);
            else
                store_row(e->C + (i0 + i) * e->ldc + j0, T + i * NR, zero16, 0);
        }
        if (e->Cb || e->Cp) bf16_copies(e, i0, j0, mr);
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
        if (e->Wb) bf16_weights(e, i0, j0, mr);
        break;
    case EP_DWG:
        for (int i = 0; i < mr; i++)
            memcpy(e->W + (i0 + i) * e->ldw + j0, T + i * NR, (size_t)nc * sizeof(float));
        break;
    case EP_XENT:
        for (int i = 0; i < mr; i++) {
            float *t = T + i * NR;
            if (e->bias)
                for (int j = 0; j < NR; j++) t[j] += e->bias[j];
            float *d = e->C + (i0 + i) * e->ldc;
            e->rowloss[i0 + i] = xent_row(t, e->N, e->y[i0 + i], e->inv_b, d, &e->rowok[i0 + i]);
        }
        if (e->Cb || e->Cp) bf16_copies(e, i0, 0, mr);
        break;
    }
}

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
    if (e->WTb)
        for (int q = 0; q < NR / 2; q++)
            __builtin_prefetch(e->WTb + (j0 / 2 + q) * e->ldwt + i0, 1, 3);
}

/* ---------------------------------------------------- trainer_epilogue.c */

/* The optimizer scalars of step s of a call (Adam's t = opt->step + s + 1). */
FNN_TR_HIDDEN void fnn_tr_opt_scalars(const fnn_train_opt *opt, int64_t s, opt_sc *o);

/* Column panels [p_lo, p_hi) of db = sum of the rows of g, each followed by
 * its optimizer update; the same function compiled for each instruction set. */
FNN_TR_HIDDEN void fnn_tr_bias_scalar(const float *g, ptrdiff_t ldg, int rows, int N,
                                      ptrdiff_t p_lo, ptrdiff_t p_hi, float *bias, float *s1,
                                      float *s2, const opt_sc *o);
#if FNN_X86
FNN_TR_HIDDEN void fnn_tr_bias_avx2(const float *g, ptrdiff_t ldg, int rows, int N,
                                    ptrdiff_t p_lo, ptrdiff_t p_hi, float *bias, float *s1,
                                    float *s2, const opt_sc *o);
#endif

static inline void bias_update(int avx2, const float *g, ptrdiff_t ldg, int rows, int N,
                               ptrdiff_t p_lo, ptrdiff_t p_hi, float *bias, float *s1, float *s2,
                               const opt_sc *o)
{
#if FNN_X86
    if (avx2) {
        fnn_tr_bias_avx2(g, ldg, rows, N, p_lo, p_hi, bias, s1, s2, o);
        return;
    }
#endif
    (void)avx2;
    fnn_tr_bias_scalar(g, ldg, rows, N, p_lo, p_hi, bias, s1, s2, o);
}

#endif
