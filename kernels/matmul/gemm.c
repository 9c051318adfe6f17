/* fastnn's GEMM engine (see gemm.h for the contract): a Goto/BLIS-style
 * packed GEMM with a register-blocked AVX2+FMA microkernel, a plain C
 * fallback microkernel, a fused epilogue and a split over C run on the engine's
 * own worker pool (gemm_pool.h).  Products with at most 16 rows and a row-major B
 * take the small-M path instead (gemm_small.h: B streamed in place, no packing).
 *
 * Which engine runs (SIMD level from cpu.h; `fastnn info` prints it per shape):
 *
 *   fnn_sgemm       scalar: gemm_tmpl.h, plain C tile
 *                   avx2:   gemm_tmpl.h, 6 x 16 AVX2 tile (or the dot-product path)
 *                   avx512: gemm_x512.h, 12 x 32 AVX-512 tile -- except narrow
 *                           outputs, and on Zen 4 everywhere (x_fp32_wanted: measured)
 *   fnn_sgemm_bf16  avx512_bf16: gemm_x512.h, bf16-pair panels, vdpbf16ps
 *                   avx512: gemm_x512.h fp32 tile on panels rounded to bf16
 *                   avx2 / scalar: gemm_tmpl.h on panels rounded to bf16
 *   fnn_dgemm       gemm_tmpl.h at every level (6 x 8 AVX2 tile, or scalar)
 *
 *   float : 6 x 16 tile (12 ymm accumulators), MC <= 144, KC <= 320, NC 4080
 *   double: 6 x  8 tile (12 ymm accumulators), MC <=  72, KC <= 320, NC 4080
 *
 * Block sizes were measured on Zen 4 (32 KiB L1d, 1 MiB L2 per core): a
 * kc x NR micro-panel of B (<= 20 KiB) stays in L1 while MR-row micro-panels
 * of A stream from an MC x KC block (<= 180 KiB) kept in L2; KC from 256 to
 * 448 measured within noise, 320 keeps both panels inside L1.  K and M are
 * cut into near-equal blocks (K = 784 -> 3 x 262, not 320 + 320 + 144).
 * A tail of 7 or 8 rows runs as two 4-row tiles (M = 128 = 20 x 6 + 4 + 4).
 *
 * Narrow outputs (N <= 12 with A's rows contiguous, or M <= 12 with B's
 * columns contiguous: an output layer with 10 classes) take a dot-product
 * path instead: 5 x 2 blocks of C, each element a k-vectorised dot product,
 * A read in place.  Otherwise, if C^T = B^T A^T wastes less of the tiles,
 * the transposed problem is computed (strides swapped, bias per row).
 *
 * Threads: products whose packed A fits in L2 (FNN_SHARED_A_MAX) cut N into chunks of
 * a few tiles that share one packed A (fnn_plan_shared, the MLP shapes); others cut
 * C into a tm x tn grid of blocks aligned to the tile (fnn_plan_threads picks the
 * grid per shape); the pool hands the chunks or blocks out and each runs the
 * serial loop nest with its thread's packing buffers.  K is never split across
 * threads, and the path and block sizes depend on the shape only, so every
 * nthreads gives bitwise identical results.
 *
 * Packing buffers are per thread (a pthread key, freed when the thread
 * exits), allocated once, 64-byte aligned and grown on demand, so calls from
 * several Python threads at once never share a buffer and steady-state
 * calls allocate nothing.
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE                 /* sched_getcpu, pthread_*affinity_np: gemm_pool.h */
#endif
#include "gemm.h"
#include "cpu.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if FNN_X86
#include <immintrin.h>
#endif

#include "gemm_bf16.h"

/* ---------------------------------------------------------------- per-thread buffers */

typedef struct {
    void *p[2];
    size_t cap[2];
} fnn_gemm_ws;

static pthread_key_t g_ws_key;
static pthread_once_t g_ws_once = PTHREAD_ONCE_INIT;
static int g_ws_ok = 0;

static void ws_destroy(void *arg)
{
    fnn_gemm_ws *ws = (fnn_gemm_ws *)arg;
    if (ws) {
        free(ws->p[0]);
        free(ws->p[1]);
        free(ws);
    }
}

static void ws_key_init(void)
{
    g_ws_ok = pthread_key_create(&g_ws_key, ws_destroy) == 0;
}

/* This thread's packing buffer `which` (0: A, 1: B) with at least `bytes`
 * bytes, or NULL when memory is short (the caller then takes a slow path). */
static void *fnn_gemm_buffer(int which, size_t bytes)
{
    pthread_once(&g_ws_once, ws_key_init);
    if (!g_ws_ok)
        return NULL;
    fnn_gemm_ws *ws = (fnn_gemm_ws *)pthread_getspecific(g_ws_key);
    if (!ws) {
        ws = (fnn_gemm_ws *)calloc(1, sizeof(*ws));
        if (!ws)
            return NULL;
        if (pthread_setspecific(g_ws_key, ws) != 0) {
            free(ws);
            return NULL;
        }
    }
    if (bytes == 0)
        bytes = 64;
    if (ws->cap[which] < bytes) {
        /* round up to 4 KiB so that shape changes rarely regrow */
        size_t cap = (bytes + 4095) & ~(size_t)4095;
        void *p = aligned_alloc(64, cap);
        if (!p)
            return NULL;
        free(ws->p[which]);
        ws->p[which] = p;
        ws->cap[which] = cap;
    }
    return ws->p[which];
}

/* ---------------------------------------------------------------- worker pool */

#include "gemm_pool.h"

/* ---------------------------------------------------------------- blocking and split */

/* Cut n into ceil(n / maxb) near-equal blocks, each a multiple of `unit`. */
static ptrdiff_t fnn_even_block(ptrdiff_t n, ptrdiff_t maxb, ptrdiff_t unit)
{
    if (n <= maxb)
        return n;
    ptrdiff_t nb = (n + maxb - 1) / maxb;
    ptrdiff_t b = (n + nb - 1) / nb;
    b = (b + unit - 1) / unit * unit;
    return b > maxb ? maxb : b;
}

typedef struct {
    int nt, tm, tn;          /* blocks (pool chunks), grid rows x columns */
    int threads;             /* threads to run them on */
    ptrdiff_t M, N, MR, NR;
} fnn_thread_plan;

/* Each thread gets at least this many multiply-adds (~20 us of work at one
 * thread's speed): below it, waking a team and meeting at the barrier costs
 * about what the split saves, and on a busy machine (other processes on the
 * cores) a descheduled team member stalls the whole call for a time slice. */
#define FNN_MIN_FMA_PER_THREAD (512 * 1024)
/* Blocks per thread handed to the pool.  1, 2 and 4 measured the same within the
 * noise of a 2-core machine under load ~8 (784-128-10 and 784-512-512-10 on 1000
 * rows); more blocks pack more, so 1 until a quiet machine says otherwise. */
#ifndef FNN_CHUNKS_PER_THREAD
#define FNN_CHUNKS_PER_THREAD 1
#endif

static ptrdiff_t ceil_div(ptrdiff_t a, ptrdiff_t b) { return (a + b - 1) / b; }

static void fnn_plan_threads(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, int MR, int NR,
                             int nthreads, fnn_thread_plan *p)
{
    p->M = M;
    p->N = N;
    p->MR = MR;
    p->NR = NR;
    p->nt = p->tm = p->tn = p->threads = 1;
#ifndef FASTNN_HAVE_OPENMP
    nthreads = 1;
#endif
    if (nthreads <= 1)
        return;
    ptrdiff_t mt = ceil_div(M, MR), nt_ = ceil_div(N, NR);       /* tiles */
    double work = (double)M * (double)N * (double)K;
    ptrdiff_t by_work = (ptrdiff_t)(work / FNN_MIN_FMA_PER_THREAD);
    ptrdiff_t nt = nthreads;
    if (nt > by_work)
        nt = by_work;
    if (nt > mt * nt_)
        nt = mt * nt_;
    if (nt <= 1)
        return;
    p->threads = (int)nt;
    /* more blocks than threads, so that a helper the OS deschedules mid-job holds
     * back only a small part of it (the pool hands blocks out dynamically) */
    nt *= FNN_CHUNKS_PER_THREAD;
    if (nt > mt * nt_)
        nt = mt * nt_;
    /* choose tm x tn == nt minimising the slowest thread's time, modelled as
     * its padded multiply-adds plus what it packs (its A rows and B columns,
     * about two multiply-adds' worth per element) */
    double best = -1;
    for (ptrdiff_t tm = 1; tm <= nt; tm++) {
        if (nt % tm)
            continue;
        ptrdiff_t tn = nt / tm;
        if (tm > mt || tn > nt_)
            continue;
        double rows = (double)ceil_div(mt, tm) * MR, cols = (double)ceil_div(nt_, tn) * NR;
        double cost = rows * cols * (double)K + 2.0 * (rows + cols) * (double)K;
        if (best < 0 || cost < best) {
            best = cost;
            p->tm = (int)tm;
            p->tn = (int)tn;
        }
    }
    if (best < 0) {           /* nt has no factorisation that fits: use fewer */
        if (nt_ >= mt) {
            p->tm = 1;
            p->tn = (int)(nt < nt_ ? nt : nt_);
        } else {
            p->tn = 1;
            p->tm = (int)(nt < mt ? nt : mt);
        }
    }
    p->nt = p->tm * p->tn;
}

/* Rows [i0, i1) and columns [j0, j1) of C owned by thread t of the plan:
 * whole tiles, spread as evenly as possible. */
static void fnn_plan_block(const fnn_thread_plan *p, int t, ptrdiff_t *i0, ptrdiff_t *i1,
                           ptrdiff_t *j0, ptrdiff_t *j1)
{
    int ti = t / p->tn, tj = t % p->tn;
    ptrdiff_t mt = ceil_div(p->M, p->MR), nt = ceil_div(p->N, p->NR);
    ptrdiff_t qm = mt / p->tm, rm = mt % p->tm, qn = nt / p->tn, rn = nt % p->tn;
    ptrdiff_t a = ti * qm + (ti < rm ? ti : rm), b = a + qm + (ti < rm ? 1 : 0);
    ptrdiff_t c = tj * qn + (tj < rn ? tj : rn), d = c + qn + (tj < rn ? 1 : 0);
    *i0 = a * p->MR;
    *i1 = b * p->MR < p->M ? b * p->MR : p->M;
    *j0 = c * p->NR;
    *j1 = d * p->NR < p->N ? d * p->NR : p->N;
}

/* ---------------------------------------------------------------- shared-A split */

/* The split over N with A packed once and shared by the threads (gemm_tmpl.h,
 * F(gemm_shared_)), for products whose packed A is small enough to keep (the MLP
 * shapes: M = 128 rows of a batch, N = 512-784 features).  The per-block split above
 * (fnn_plan_threads) hands each thread a whole block of C, so with the usual split
 * over N every thread packs all of A, and one block per thread leaves the caller
 * waiting for a helper the OS wakes late.  Here the columns are cut into chunks of
 * a few tiles, claimed dynamically (the caller from the left, helpers from the
 * right: gemm_pool.h), so a late helper costs at most a chunk, and whoever starts
 * a chunk first packs the A blocks nobody has claimed yet.
 *
 * The chunks depend on the shape only (columns per chunk: at least
 * g_shared_chunk_fma multiply-adds, at least one tile); the thread count only
 * decides who runs them.  Only while the packed A fits in a core's L2 (1 MiB on
 * Zen 4): every chunk streams all of it, and from L3 that costs more than packing
 * it twice -- 1024^3 (4.5 MB packed) measured 194 GFLOP/s shared against 203-205
 * per-block (two threads, calls interleaved).  g_shared: 1 auto, 0 never
 * (set_shared_split: before / after measurements in one process). */
#ifndef FNN_SHARED_A_MAX
#define FNN_SHARED_A_MAX (1u << 20)          /* bytes of packed A at most */
#endif
static int g_shared = 1;
static double g_shared_chunk_fma = 1024.0 * 1024.0;

int fnn_gemm_set_shared(int on, double chunk_fma)
{
    int old = g_shared;
    g_shared = on != 0;
    if (chunk_fma > 0)
        g_shared_chunk_fma = chunk_fma;
    return old;
}

typedef struct {
    ptrdiff_t nkb, nmb, slot;      /* K blocks, M blocks, elements per packed A block */
    ptrdiff_t npack, ncols, cw;    /* packing chunks, column chunks, columns per chunk */
    int threads;
} fnn_shared_plan;

static int fnn_plan_shared(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, int MR, int NR,
                           ptrdiff_t mcb, ptrdiff_t kcb, ptrdiff_t ncmax, size_t elsize,
                           int nthreads, fnn_shared_plan *sp)
{
#ifndef FASTNN_HAVE_OPENMP
    nthreads = 1;
#endif
    if (!g_shared || nthreads <= 1 || K <= 0)
        return 0;
    double work = (double)M * (double)N * (double)K;
    ptrdiff_t by_work = (ptrdiff_t)(work / FNN_MIN_FMA_PER_THREAD);
    ptrdiff_t threads = nthreads < by_work ? nthreads : by_work;
    ptrdiff_t tiles = ceil_div(N, NR);
    if (threads <= 1 || tiles < 2 * threads)
        return 0;                  /* too little work, or too narrow: the per-block split */
    sp->nkb = ceil_div(K, kcb);
    sp->nmb = ceil_div(M, mcb);
    /* a block's panels: F(panel_h_) may add one (the 4 + 4 tail) */
    sp->slot = (ceil_div(mcb, MR) + 1) * MR * (kcb < K ? kcb : K);
    sp->npack = sp->nkb * sp->nmb;
    double bytes = (double)sp->npack * (double)sp->slot * (double)elsize;
    if (bytes > FNN_SHARED_A_MAX)
        return 0;
    ptrdiff_t ct = (ptrdiff_t)(g_shared_chunk_fma / ((double)M * (double)K * NR)) + 1;
    if (ct > ncmax / NR)
        ct = ncmax / NR;
    if (ct < 1)
        ct = 1;
    if (ct < ceil_div(tiles, 4096))
        ct = ceil_div(tiles, 4096);               /* chunks at most 4096 (the pool: 65535) */
    sp->ncols = ceil_div(tiles, ct);
    ct = ceil_div(tiles, sp->ncols);              /* even chunks */
    sp->ncols = ceil_div(tiles, ct);
    sp->cw = ct * NR;
    sp->threads = (int)threads;
    return 1;
}

/* ---------------------------------------------------------------- A packing, C-ordered rows */

/* Six rows of a C-ordered A, k-major into d (d[k*6 + i] = row_i[k]).  The
 * scalar gather costs as much as a fifth of a small-M GEMM, so full groups
 * of k go through SSE transposes (SSE2 is baseline x86-64; the plain loop
 * stays for the tail and for the scalar SIMD level). */
static void pack_a_rows6_s(ptrdiff_t kc, const float *a, ptrdiff_t rsa, float *restrict d,
                           int vec)
{
    const float *r0 = a, *r1 = a + rsa, *r2 = a + 2 * rsa, *r3 = a + 3 * rsa;
    const float *r4 = a + 4 * rsa, *r5 = a + 5 * rsa;
    ptrdiff_t k = 0;
#if FNN_X86
    if (vec) {
        for (; k + 4 <= kc; k += 4) {
            __m128 x0 = _mm_loadu_ps(r0 + k), x1 = _mm_loadu_ps(r1 + k);
            __m128 x2 = _mm_loadu_ps(r2 + k), x3 = _mm_loadu_ps(r3 + k);
            __m128 x4 = _mm_loadu_ps(r4 + k), x5 = _mm_loadu_ps(r5 + k);
            _MM_TRANSPOSE4_PS(x0, x1, x2, x3);
            __m128 lo = _mm_unpacklo_ps(x4, x5), hi = _mm_unpackhi_ps(x4, x5);
            _mm_storeu_ps(d + 0, x0);
            _mm_storel_pi((__m64 *)(d + 4), lo);
            _mm_storeu_ps(d + 6, x1);
            _mm_storeh_pi((__m64 *)(d + 10), lo);
            _mm_storeu_ps(d + 12, x2);
            _mm_storel_pi((__m64 *)(d + 16), hi);
            _mm_storeu_ps(d + 18, x3);
            _mm_storeh_pi((__m64 *)(d + 22), hi);
            d += 24;
        }
    }
#else
    (void)vec;
#endif
    for (; k < kc; k++) {
        d[0] = r0[k]; d[1] = r1[k]; d[2] = r2[k];
        d[3] = r3[k]; d[4] = r4[k]; d[5] = r5[k];
        d += 6;
    }
}

static void pack_a_rows6_d(ptrdiff_t kc, const double *a, ptrdiff_t rsa, double *restrict d,
                           int vec)
{
    const double *r0 = a, *r1 = a + rsa, *r2 = a + 2 * rsa, *r3 = a + 3 * rsa;
    const double *r4 = a + 4 * rsa, *r5 = a + 5 * rsa;
    ptrdiff_t k = 0;
#if FNN_X86
    if (vec) {
        for (; k + 2 <= kc; k += 2) {
            __m128d x0 = _mm_loadu_pd(r0 + k), x1 = _mm_loadu_pd(r1 + k);
            __m128d x2 = _mm_loadu_pd(r2 + k), x3 = _mm_loadu_pd(r3 + k);
            __m128d x4 = _mm_loadu_pd(r4 + k), x5 = _mm_loadu_pd(r5 + k);
            _mm_storeu_pd(d + 0, _mm_unpacklo_pd(x0, x1));
            _mm_storeu_pd(d + 2, _mm_unpacklo_pd(x2, x3));
            _mm_storeu_pd(d + 4, _mm_unpacklo_pd(x4, x5));
            _mm_storeu_pd(d + 6, _mm_unpackhi_pd(x0, x1));
            _mm_storeu_pd(d + 8, _mm_unpackhi_pd(x2, x3));
            _mm_storeu_pd(d + 10, _mm_unpackhi_pd(x4, x5));
            d += 12;
        }
    }
#else
    (void)vec;
#endif
    for (; k < kc; k++) {
        d[0] = r0[k]; d[1] = r1[k]; d[2] = r2[k];
        d[3] = r3[k]; d[4] = r4[k]; d[5] = r5[k];
        d += 6;
    }
}

/* ---------------------------------------------------------------- B packing, columns contiguous */

/* One full NR-column panel of a B whose columns are contiguous in k (a
 * transposed or Fortran operand: rsb == 1): d[k*NR + j] = col_j[k].  SSE
 * 4x4 (float) / 2x2 (double) transposes turn the strided scalar writes into
 * vector stores; the scalar loop handles the k tail. */
static void pack_b_cols16_s(ptrdiff_t kc, const float *b, ptrdiff_t csb, float *restrict d)
{
    ptrdiff_t k = 0;
#if FNN_X86
    for (; k + 4 <= kc; k += 4) {
        for (int j = 0; j < 16; j += 4) {
            __m128 x0 = _mm_loadu_ps(b + (j + 0) * csb + k);
            __m128 x1 = _mm_loadu_ps(b + (j + 1) * csb + k);
            __m128 x2 = _mm_loadu_ps(b + (j + 2) * csb + k);
            __m128 x3 = _mm_loadu_ps(b + (j + 3) * csb + k);
            _MM_TRANSPOSE4_PS(x0, x1, x2, x3);
            _mm_storeu_ps(d + (k + 0) * 16 + j, x0);
            _mm_storeu_ps(d + (k + 1) * 16 + j, x1);
            _mm_storeu_ps(d + (k + 2) * 16 + j, x2);
            _mm_storeu_ps(d + (k + 3) * 16 + j, x3);
        }
    }
#endif
    for (; k < kc; k++)
        for (int j = 0; j < 16; j++)
            d[k * 16 + j] = b[j * csb + k];
}

static void pack_b_cols8_d(ptrdiff_t kc, const double *b, ptrdiff_t csb, double *restrict d)
{
    ptrdiff_t k = 0;
#if FNN_X86
    for (; k + 2 <= kc; k += 2) {
        for (int j = 0; j < 8; j += 2) {
            __m128d x0 = _mm_loadu_pd(b + (j + 0) * csb + k);
            __m128d x1 = _mm_loadu_pd(b + (j + 1) * csb + k);
            _mm_storeu_pd(d + (k + 0) * 8 + j, _mm_unpacklo_pd(x0, x1));
            _mm_storeu_pd(d + (k + 1) * 8 + j, _mm_unpackhi_pd(x0, x1));
        }
    }
#endif
    for (; k < kc; k++)
        for (int j = 0; j < 8; j++)
            d[k * 8 + j] = b[j * csb + k];
}

/* ---------------------------------------------------------------- horizontal sums */

#if FNN_X86
/* Fixed reduction trees (the dot-product path's last step). */
FNN_TARGET_AVX2
static inline float hsum_ps(__m256 v)
{
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

FNN_TARGET_AVX2
static inline double hsum_pd(__m256d v)
{
    __m128d x = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    x = _mm_add_sd(x, _mm_unpackhi_pd(x, x));
    return _mm_cvtsd_f64(x);
}

/* o[0] = sum(a), o[1] = sum(b): two reductions sharing the shuffles. */
FNN_TARGET_AVX2
static inline void hsum2_ps(__m256 a, __m256 b, float *o)
{
    __m256 t = _mm256_hadd_ps(a, b);
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
    x = _mm_hadd_ps(x, x);
    _mm_storel_pi((__m64 *)o, x);
}

FNN_TARGET_AVX2
static inline void hsum2_pd(__m256d a, __m256d b, double *o)
{
    __m256d t = _mm256_hadd_pd(a, b);
    _mm_storeu_pd(o, _mm_add_pd(_mm256_castpd256_pd128(t), _mm256_extractf128_pd(t, 1)));
}
#endif

/* ---------------------------------------------------------------- bf16 hooks of the template */

/* Emulated bf16 rounds the packed panels (float); double never does. */
static void round_packed_s(float *x, size_t n) { fnn_bf16_round_buf(x, n); }
static void round_packed_d(double *x, size_t n) { (void)x; (void)n; }
static inline float in_s(float x, int bf16) { return bf16 ? fnn_bf16_round(x) : x; }
static inline double in_d(double x, int bf16) { (void)bf16; return x; }

/* ---------------------------------------------------------------- float */

#define T float
#define SFX s
#define PACK_B_COLS pack_b_cols16_s
#define MR 6
#define NR 16
#define MC_MAX 144
#define KC_MAX 320
#define NC_MAX 4080
#if FNN_X86
#define VT __m256
#define VW 8
#define VZERO() _mm256_setzero_ps()
#define VLOAD(p) _mm256_load_ps(p)
#define VLOADU(p) _mm256_loadu_ps(p)
#define VSTOREU(p, x) _mm256_storeu_ps(p, x)
#define VBCAST(p) _mm256_broadcast_ss(p)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VADD(a, b) _mm256_add_ps(a, b)
#define VMAX(a, b) _mm256_max_ps(a, b)
#define VAND(a, b) _mm256_and_ps(a, b)
#define VCMPGT(a, b) _mm256_cmp_ps(a, b, _CMP_GT_OQ)
#define VHSUM(x) hsum_ps(x)
#define VHSUM2(a, b, o) hsum2_ps(a, b, o)
#endif
#include "gemm_tmpl.h"                 /* undefines its parameters */

/* ---------------------------------------------------------------- double */

#define T double
#define SFX d
#define PACK_B_COLS pack_b_cols8_d
#define MR 6
#define NR 8
#define MC_MAX 72
#define KC_MAX 320
#define NC_MAX 4080
#if FNN_X86
#define VT __m256d
#define VW 4
#define VZERO() _mm256_setzero_pd()
#define VLOAD(p) _mm256_load_pd(p)
#define VLOADU(p) _mm256_loadu_pd(p)
#define VSTOREU(p, x) _mm256_storeu_pd(p, x)
#define VBCAST(p) _mm256_broadcast_sd(p)
#define VFMA(a, b, c) _mm256_fmadd_pd(a, b, c)
#define VADD(a, b) _mm256_add_pd(a, b)
#define VMAX(a, b) _mm256_max_pd(a, b)
#define VAND(a, b) _mm256_and_pd(a, b)
#define VCMPGT(a, b) _mm256_cmp_pd(a, b, _CMP_GT_OQ)
#define VHSUM(x) hsum_pd(x)
#define VHSUM2(a, b, o) hsum2_pd(a, b, o)
#endif
#include "gemm_tmpl.h"                 /* undefines its parameters */

/* ---------------------------------------------------------------- small-M path */

#define T float
#define SFX s
#define SM_FLOAT 1
#include "gemm_small.h"
#undef T
#undef SFX
#undef SM_FLOAT
#define T double
#define SFX d
#define SM_FLOAT 0
#include "gemm_small.h"
#undef SM_FLOAT

/* ---------------------------------------------------------------- AVX-512 engine (float) */

#include "gemm_x512.h"

/* ---------------------------------------------------------------- dispatch */

/* Whether the fp32 GEMM of this shape runs on the AVX-512 engine at the
 * current level (and why not, in *why, when it does not).
 *
 * - Narrow outputs that the AVX2 engine computes as dot products (N or M
 *   <= 12: an output layer) stay there: the AVX-512 engine has no such path
 *   and a 32-wide tile would leave most lanes idle.
 * - On CPUs that double-pump 512-bit FMAs (Zen 4) the 12 x 32 tile has the
 *   same FLOP peak as AVX2's 6 x 16 and saves only loads and C traffic.
 *   Measured side by side on the shapes of `fastnn bench kernels` (one
 *   thread, thread CPU time, medians of 11-15 interleaved rounds, three
 *   runs): 0.90-1.10x on the MLP shapes (128 x {512,784} x {512,784}, and
 *   784 x 128 x 512), 0.92x on 64x784x128 and 0.89-0.93x on 1024^3 -- no
 *   shape class is reliably at least as fast, so fp32 keeps AVX2 there.
 *   (bf16 is another matter: vdpbf16ps doubles the peak, see fnn_sgemm_bf16.)
 */
static int g_fp32_engine = 0;      /* 0 auto, 1 AVX-512 wherever the level allows, 2 never */

int fnn_sgemm_set_fp32_engine(int which)
{
    int old = g_fp32_engine;
    g_fp32_engine = which >= 0 && which <= 2 ? which : 0;
    return old;
}

static int x_fp32_wanted(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, ptrdiff_t csa, ptrdiff_t rsb,
                         const char **why)
{
    if (!fnn_use_avx512()) {
        *why = "level below avx512";
        return 0;
    }
    if (g_fp32_engine == 2) {
        *why = "AVX2 forced (set_fp32_engine)";
        return 0;
    }
    if (g_fp32_engine == 1) {
        *why = "";
        return 1;
    }
    if (K >= 16 && ((N <= 12 && csa == 1 && N <= M) || (M <= 12 && rsb == 1))) {
        *why = "narrow output: AVX2 dot-product path";
        return 0;
    }
    if (fnn_cpu_double_pumped_512()) {
        *why = "kept on Zen 4: 512-bit FMAs are double-pumped, the AVX-512 tile measured "
               "0.89-1.10x of AVX2 on the bench shapes";
        return 0;
    }
    *why = "";
    return 1;
}

/* The small-M path's instruction set at the current level: AVX-512 for float
 * where the level allows it (and set_fp32_engine does not force AVX2), else AVX2,
 * else plain C. */
static int g_small_max_m = SM_MAX_M;

int fnn_gemm_set_small(int max_m)
{
    int old = g_small_max_m;
    g_small_max_m = max_m < 0 ? SM_MAX_M : max_m > 64 ? 64 : max_m;
    return old;
}

static int small_isa(int is_float)
{
    if (is_float && fnn_use_avx512() && g_fp32_engine != 2)
        return SM_AVX512;
    return fnn_use_avx2() ? SM_AVX2 : SM_SCALAR;
}

static const char *small_path_name(void)
{
    switch (small_isa(1)) {
    case SM_AVX512: return "small-M avx512 (B streamed in place, no packing)";
    case SM_AVX2: return "small-M avx2+fma (B streamed in place, no packing)";
    default: return "small-M scalar (B streamed in place, no packing)";
    }
}

/* ---------------------------------------------------------------- public API */

void fnn_sgemm(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
               const float *A, ptrdiff_t rsa, ptrdiff_t csa,
               const float *B, ptrdiff_t rsb, ptrdiff_t csb,
               float *C, ptrdiff_t rsc, ptrdiff_t csc,
               const fnn_epilogue *ep, int nthreads)
{
    if (sm_wanted_s(M, N, K, csb, g_small_max_m)) {
        fnn_small_s(M, N, K, A, rsa, csa, B, rsb, C, rsc, csc, ep, nthreads, small_isa(1));
        return;
    }
#if FNN_X86
    const char *why;
    if (x_fp32_wanted(M, N, K, csa, rsb, &why)) {
        x_gemm(M, N, K, A, rsa, csa, B, rsb, csb, C, rsc, csc, ep, nthreads, X_FP32);
        return;
    }
#endif
    fnn_gemm_s(M, N, K, A, rsa, csa, B, rsb, csb, C, rsc, csc, ep, nthreads, 0);
}

void fnn_sgemm_bf16(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                    const float *A, ptrdiff_t rsa, ptrdiff_t csa,
                    const float *B, ptrdiff_t rsb, ptrdiff_t csb,
                    float *C, ptrdiff_t rsc, ptrdiff_t csc,
                    const fnn_epilogue *ep, int nthreads)
{
#if FNN_X86
    if (fnn_use_avx512bf16()) {
        x_gemm(M, N, K, A, rsa, csa, B, rsb, csb, C, rsc, csc, ep, nthreads, X_BF16);
        return;
    }
    if (fnn_use_avx512()) {
        x_gemm(M, N, K, A, rsa, csa, B, rsb, csb, C, rsc, csc, ep, nthreads, X_BF16_EMUL);
        return;
    }
#endif
    fnn_gemm_s(M, N, K, A, rsa, csa, B, rsb, csb, C, rsc, csc, ep, nthreads, 1);
}

const char *fnn_sgemm_path(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, ptrdiff_t csa, ptrdiff_t rsb,
                           int bf16)
{
    int level = fnn_simd_level();
    if (bf16) {
        if (level >= FNN_SIMD_AVX512_BF16)
            return "avx512_bf16 12x32 vdpbf16ps";
        if (level >= FNN_SIMD_AVX512)
            return "avx512 12x32, bf16 emulated (rounded inputs, fp32 FMA)";
        if (level >= FNN_SIMD_AVX2)
            return "avx2+fma 6x16, bf16 emulated (rounded inputs, fp32 FMA)";
        return "scalar, bf16 emulated";
    }
    /* B's column stride is not passed: its rows are contiguous unless it is a
     * transposed view (rsb == 1), which for N == 1 cannot be told apart */
    if (sm_wanted_s(M, N, K, rsb == 1 && N != 1 ? K : 1, g_small_max_m))
        return small_path_name();
#if FNN_X86
    static __thread char buf[160];
    const char *why;
    if (x_fp32_wanted(M, N, K, csa, rsb, &why))
        return "avx512 12x32";
    if (level >= FNN_SIMD_AVX512) {
        snprintf(buf, sizeof buf, "avx2+fma (%s)", why);
        return buf;
    }
#else
    (void)M; (void)N; (void)K; (void)csa; (void)rsb;
#endif
    return level >= FNN_SIMD_AVX2 ? "avx2+fma" : "scalar";
}

void fnn_dgemm(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
               const double *A, ptrdiff_t rsa, ptrdiff_t csa,
               const double *B, ptrdiff_t rsb, ptrdiff_t csb,
               double *C, ptrdiff_t rsc, ptrdiff_t csc,
               const fnn_epilogue *ep, int nthreads)
{
    if (sm_wanted_d(M, N, K, csb, g_small_max_m)) {
        fnn_small_d(M, N, K, A, rsa, csa, B, rsb, C, rsc, csc, ep, nthreads, small_isa(0));
        return;
    }
    fnn_gemm_d(M, N, K, A, rsa, csa, B, rsb, csb, C, rsc, csc, ep, nthreads, 0);
}
