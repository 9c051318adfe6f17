/* The small-M path of the GEMM engine: C = epilogue(A @ B) for M <= SM_MAX_M rows
 * and a B whose rows are contiguous (csb == 1: the row-major K x N weights of a
 * Dense layer).  Included by gemm.c once per element type (T, SFX, SM_FLOAT),
 * after gemm_tmpl.h.
 *
 * Why: with one to a few rows (one image through an MLP) the packed engine
 * copies all of B into its panels for a product that then reads it once; the
 * copy costs as much as the product.  Here B is streamed once, in place
 * (GEMV style): per k, the row B[k, j:j+w] is loaded and the M values A[i, k]
 * are broadcast into M x w accumulators (gemm_small_kern.h).  No packing, no
 * buffers, A read with any strides, the epilogue (accumulate, bias, ReLU,
 * mask) applied from registers.
 *
 * Rows come in groups of at most 4 (M = 5..8: two groups, B streamed twice);
 * columns in strips of a fixed width per (rows, instruction set).  Threads
 * split N only, at multiples of SM_UNIT (a multiple of every full strip's
 * width), so every column is computed the same way whatever nthreads: results
 * are bitwise identical for every thread count, as for the rest of the engine.
 * Helpers (the engine's pool, gemm_pool.h) join only when B is large
 * (SM_SPLIT_BYTES): below it, one core streams B as fast as two.
 *
 * Kernels: scalar (plain C), AVX2+FMA (8 float / 4 double lanes), AVX-512
 * (float, 16 lanes), chosen by the run-time SIMD level like the rest of the engine.
 */

#define SM_CAT_(a, b) a##b
#define SM_CAT(a, b) SM_CAT_(a, b)
#define SMF(name) SM_CAT(name, SFX)

/* The small path takes M <= SM_MAX_M.  Measured against the packed engine on the
 * MLP shapes, one thread, Zen 4, times in us (small / packed), load 2-8:
 *   M       784x128      784x512       512x512      128x10
 *   1       4.2 / 21.1   26.1 / 81.7   13.5 / 66.1   0.1 / 1.9
 *   4       8.2 / 23.9   30.2 / 79.0   18.8 / 69.8   0.2 / 2.2
 *   8      13.9 / 34.8   56.0 / 115.5  36.0 / 94.6   0.3 / 2.1
 *   16     27.4 / 56.6  112.9 / 260.1  72.6 / 193.3  0.6 / 1.5
 *   32     54.7 / 94.2  225.1 / 461.8 156.8 / 305.8  1.2 / 2.2
 * It still wins at 32 rows; 16 keeps B's re-reads (once per 4 rows) bounded for Bs
 * larger than L2.  At M = 1000 the packed engine wins when B is larger than L2
 * (784x512: 8.5 vs 9.7 ms) and loses slightly when B fits (784x128: 1.9 vs 1.8 ms). */
#ifndef SM_MAX_M
#define SM_MAX_M 16
#endif
/* Split N over threads only when B (times the row groups) is at least this many
 * bytes. */
#ifndef SM_SPLIT_BYTES
#define SM_SPLIT_BYTES (512 * 1024)
#endif

#ifndef FNN_SM_ISA_DEFINED
#define FNN_SM_ISA_DEFINED
/* AVX-512, one row: 16 vectors (256 columns, 1 KiB of each row of B) per strip
 * measured 0.9-1.0x the time of 8 on the mlp-keras chain (784-512-512-10, one
 * image, 1 and 2 threads; software prefetch of B rows 4-16 ahead: no gain). */
#ifndef SM_X512_NV1
#define SM_X512_NV1 16
#endif
enum { SM_SCALAR = 0, SM_AVX2 = 1, SM_AVX512 = 2 };
#endif

typedef struct {
    const T *bias;       /* at the strip's first column, or NULL */
    int beta;            /* add the C already there (accumulate) */
    int relu;
    const T *mask;       /* at the strip's (0, 0), or NULL */
    ptrdiff_t rsm, csm;
} SMF(sm_ep_);
#define SM_EP SMF(sm_ep_)

typedef void (*SMF(sm_strip_fn_))(int, ptrdiff_t, const T *, ptrdiff_t, ptrdiff_t, const T *,
                                  ptrdiff_t, T *, ptrdiff_t, ptrdiff_t, const SM_EP *);
#define SM_STRIP_FN SMF(sm_strip_fn_)

typedef void (*SMF(sm_rows_fn_))(int, ptrdiff_t, ptrdiff_t, ptrdiff_t, const T *, ptrdiff_t,
                                 ptrdiff_t, const T *, ptrdiff_t, T *, ptrdiff_t, ptrdiff_t,
                                 const SM_EP *);

/* Element-wise store of an m x n block held in acc (leading dimension ld), with
 * the arithmetic of the vector store (add, add, max(0, x) keeping NaN, and-mask). */
static void SMF(sm_store_)(int m, ptrdiff_t n, const T *acc, int ld, T *C, ptrdiff_t rsc,
                           ptrdiff_t csc, const SM_EP *ep)
{
    for (int i = 0; i < m; i++) {
        for (ptrdiff_t j = 0; j < n; j++) {
            T v = acc[i * ld + j];
            T *c = &C[i * rsc + j * csc];
            if (ep->beta)
                v = v + *c;
            if (ep->bias)
                v = v + ep->bias[j];
            if (ep->relu)
                v = v < (T)0 ? (T)0 : v;
            if (ep->mask && !(ep->mask[i * ep->rsm + j * ep->csm] > (T)0))
                v = (T)0;
            *c = v;
        }
    }
}

/* ---------------------------------------------------------------- scalar kernels */

#define SMK SM_CAT(SFX, _sm_scalar)
#define SMK_TARGET
#define VT T
#define VW 1
#define VMASK int
#define VZERO() ((T)0)
#define VSET1(x) (x)
#define VLOADU(p) (*(p))
#define VSTOREU(p, x) (*(p) = (x))
#define VFMA(a, b, c) ((a) * (b) + (c))
#define VADD(a, b) ((a) + (b))
#define VMAX(a, b) ((b) < (a) ? (a) : (b))
#define VMASK_FIRST(r) (r)
#define VLOADM(p, m) (*(p))
#define VSTOREM(p, m, x) (*(p) = (x))
#define SMK_NV1 8
#define SMK_NV2 4
#define SMK_NV3 2
#define SMK_NV4 2
#define SMK_NVMAX 8
#include "gemm_small_kern.h"           /* undefines its parameters */

#if FNN_X86
/* ---------------------------------------------------------------- AVX2 kernels */

#define SMK SM_CAT(SFX, _sm_avx2)
#define SMK_TARGET FNN_TARGET_AVX2
#define VMASK __m256i
#if SM_FLOAT
#define VT __m256
#define VW 8
#define VZERO() _mm256_setzero_ps()
#define VSET1(x) _mm256_set1_ps(x)
#define VLOADU(p) _mm256_loadu_ps(p)
#define VSTOREU(p, x) _mm256_storeu_ps(p, x)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VADD(a, b) _mm256_add_ps(a, b)
#define VMAX(a, b) _mm256_max_ps(a, b)
#define VMASK_FIRST(r) \
    _mm256_cmpgt_epi32(_mm256_set1_epi32(r), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
#define VLOADM(p, m) _mm256_maskload_ps(p, m)
#define VSTOREM(p, m, x) _mm256_maskstore_ps(p, m, x)
#define SMK_NV1 8         /* 64 columns; SM_UNIT 64 */
#define SMK_NVMAX 8
#define SMK_NV2 4
#define SMK_NV3 2
#define SMK_NV4 2
#else
#define VT __m256d
#define VW 4
#define VZERO() _mm256_setzero_pd()
#define VSET1(x) _mm256_set1_pd(x)
#define VLOADU(p) _mm256_loadu_pd(p)
#define VSTOREU(p, x) _mm256_storeu_pd(p, x)
#define VFMA(a, b, c) _mm256_fmadd_pd(a, b, c)
#define VADD(a, b) _mm256_add_pd(a, b)
#define VMAX(a, b) _mm256_max_pd(a, b)
#define VMASK_FIRST(r) \
    _mm256_cmpgt_epi64(_mm256_set1_epi64x(r), _mm256_setr_epi64x(0, 1, 2, 3))
#define VLOADM(p, m) _mm256_maskload_pd(p, m)
#define VSTOREM(p, m, x) _mm256_maskstore_pd(p, m, x)
#define SMK_NV1 8         /* 32 columns; SM_UNIT 32 */
#define SMK_NVMAX 8
#define SMK_NV2 4
#define SMK_NV3 2
#define SMK_NV4 2
#endif
#include "gemm_small_kern.h"           /* undefines its parameters */

#if SM_FLOAT
/* ---------------------------------------------------------------- AVX-512 kernels (float) */

#define SMK SM_CAT(SFX, _sm_x512)
#define SMK_TARGET FNN_TARGET_AVX512
#define VMASK __mmask16
#define VT __m512
#define VW 16
#define VZERO() _mm512_setzero_ps()
#define VSET1(x) _mm512_set1_ps(x)
#define VLOADU(p) _mm512_loadu_ps(p)
#define VSTOREU(p, x) _mm512_storeu_ps(p, x)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VADD(a, b) _mm512_add_ps(a, b)
#define VMAX(a, b) _mm512_max_ps(a, b)
#define VMASK_FIRST(r) ((__mmask16)((r) >= 16 ? 0xffff : (1u << (r)) - 1))
#define VLOADM(p, m) _mm512_maskz_loadu_ps(m, p)
#define VSTOREM(p, m, x) _mm512_mask_storeu_ps(p, m, x)
#define SMK_NV1 SM_X512_NV1
#define SMK_NVMAX SM_X512_NV1
#define SMK_NV2 4
#define SMK_NV3 4
#define SMK_NV4 4
#include "gemm_small_kern.h"           /* undefines its parameters */
#endif
#endif

/* ---------------------------------------------------------------- driver */

/* Whether the small path takes this product (bf16 never: its inputs are rounded
 * in the packed panels). */
static inline int SMF(sm_wanted_)(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, ptrdiff_t csb,
                                  int max_m)
{
    return M >= 1 && M <= max_m && N >= 1 && K >= 1 && csb == 1;
}

typedef struct {
    ptrdiff_t M, N, K;
    const T *A; ptrdiff_t rsa, csa;
    const T *B; ptrdiff_t rsb;
    T *C; ptrdiff_t rsc, csc;
    const T *bias; int relu, accumulate;
    const T *mask; ptrdiff_t rsm, csm;
    SMF(sm_rows_fn_) rows;
} SMF(sm_prob_);

/* All rows, columns [j0, j1): row groups of at most 4, near-equal (M = 5 -> 3 + 2). */
static void SMF(sm_block_)(const SMF(sm_prob_) *p, ptrdiff_t j0, ptrdiff_t j1)
{
    if (j1 <= j0)
        return;
    SM_EP ep;
    ep.beta = p->accumulate;
    ep.relu = p->relu;
    ep.bias = p->bias;
    ep.rsm = p->rsm;
    ep.csm = p->csm;
    ptrdiff_t groups = (p->M + 3) / 4, i = 0;
    for (ptrdiff_t g = 0; g < groups; g++) {
        int mt = (int)((p->M - i + (groups - g) - 1) / (groups - g));
        ep.mask = p->mask ? p->mask + i * p->rsm : NULL;
        p->rows(mt, j0, j1, p->K, p->A + i * p->rsa, p->rsa, p->csa, p->B, p->rsb,
                p->C + i * p->rsc, p->rsc, p->csc, &ep);
        i += mt;
    }
}

typedef struct {
    const SMF(sm_prob_) *p;
    ptrdiff_t unit;
} SMF(sm_job_);

static void SMF(sm_chunk_)(void *arg, ptrdiff_t u)
{
    const SMF(sm_job_) *j = (const SMF(sm_job_) *)arg;
    ptrdiff_t j0 = u * j->unit, j1 = j0 + j->unit;
    SMF(sm_block_)(j->p, j0, j1 < j->p->N ? j1 : j->p->N);
}

/* The small-M product at instruction set `isa` (SM_SCALAR, SM_AVX2, SM_AVX512; the
 * caller checked SMF(sm_wanted_) and that the CPU runs `isa`). */
static void SMF(fnn_small_)(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                            const T *A, ptrdiff_t rsa, ptrdiff_t csa,
                            const T *B, ptrdiff_t rsb,
                            T *C, ptrdiff_t rsc, ptrdiff_t csc,
                            const fnn_epilogue *ep, int nthreads, int isa)
{
    SMF(sm_prob_) p;
    p.M = M; p.N = N; p.K = K;
    p.A = A; p.rsa = rsa; p.csa = csa;
    p.B = B; p.rsb = rsb;
    p.C = C; p.rsc = rsc; p.csc = csc;
    p.bias = ep ? (const T *)ep->bias : NULL;
    p.relu = ep ? ep->relu != 0 : 0;
    p.accumulate = ep ? ep->accumulate != 0 : 0;
    p.mask = ep ? (const T *)ep->mask : NULL;
    p.rsm = ep ? ep->rs_mask : 0;
    p.csm = ep ? ep->cs_mask : 0;
    ptrdiff_t (*width)(int) = SM_CAT(SMF(sm_width_), _sm_scalar);
    p.rows = SM_CAT(SMF(sm_rows_), _sm_scalar);
#if FNN_X86
    if (isa == SM_AVX2) {
        p.rows = SM_CAT(SMF(sm_rows_), _sm_avx2);
        width = SM_CAT(SMF(sm_width_), _sm_avx2);
    }
#if SM_FLOAT
    if (isa == SM_AVX512) {
        p.rows = SM_CAT(SMF(sm_rows_), _sm_x512);
        width = SM_CAT(SMF(sm_width_), _sm_x512);
    }
#endif
#else
    (void)isa;
#endif
    /* threads cut N at multiples of every full strip width the row groups use
     * (the widths are powers of two times the lanes, so the largest one) */
    ptrdiff_t groups = (M + 3) / 4;
    ptrdiff_t w_hi = width((int)((M + groups - 1) / groups)), w_lo = width((int)(M / groups));
    ptrdiff_t unit = w_hi > w_lo ? w_hi : w_lo;
    ptrdiff_t units = (N + unit - 1) / unit;
    double bytes = (double)K * (double)N * (double)sizeof(T) * (double)groups;
    if (nthreads <= 1 || units <= 1 || bytes < SM_SPLIT_BYTES) {
        SMF(sm_block_)(&p, 0, N);
        return;
    }
    /* one pool chunk per unit of columns (gemm_pool.h: claimed dynamically) */
    SMF(sm_job_) job = {&p, unit};
    fnn_pool_run(SMF(sm_chunk_), &job, units, nthreads);
}

#undef SM_EP
#undef SM_STRIP_FN
#undef SMF
#undef SM_CAT
#undef SM_CAT_
