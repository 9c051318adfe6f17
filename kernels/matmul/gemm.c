/* fastnn's GEMM engine (see gemm.h for the contract): a Goto/BLIS-style
 * packed GEMM with a register-blocked AVX2+FMA microkernel, a plain C
 * fallback microkernel, a fused epilogue and an OpenMP split over C.
 *
 *   float : 6 x 16 tile (12 ymm accumulators), MC 144, KC <= 320, NC 4080
 *   double: 6 x  8 tile (12 ymm accumulators), MC  72, KC <= 320, NC 4080
 *
 * Tile and block sizes were measured on Zen 4 (32 KiB L1d, 1 MiB L2 per
 * core): a kc x NR micro-panel of B (<= 20 KiB) stays in L1 while MR-row
 * micro-panels of A stream from an MC x KC block (<= 180 KiB) kept in L2.
 * BENCHMARKS.md ("Kernels: matmul") has the numbers.
 *
 * Threads: C is cut into a tm x tn grid of blocks aligned to the tile
 * (fnn_plan_threads picks the grid per shape: MLP shapes have small M and
 * large N, so mostly a split over N); every thread runs the serial loop nest
 * on its block with its own packing buffers.  K is never split across
 * threads, and block sizes depend on the shape only, so a fixed nthreads
 * (indeed any nthreads) gives bitwise identical results.
 *
 * Packing buffers are per thread (a pthread key, freed when the thread
 * exits), allocated once, 64-byte aligned and grown on demand, so calls from
 * several Python threads at once never share a buffer and steady-state
 * calls allocate nothing.
 */
#include "gemm.h"
#include "cpu.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if FNN_X86
#include <immintrin.h>
#endif

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
    int nt, tm, tn;          /* threads, grid rows x columns */
    ptrdiff_t M, N, MR, NR;
} fnn_thread_plan;

/* Work below this many multiply-adds per thread runs faster on one thread
 * than it takes to wake a team (a few microseconds). */
#define FNN_MIN_FMA_PER_THREAD (96 * 1024)

static ptrdiff_t ceil_div(ptrdiff_t a, ptrdiff_t b) { return (a + b - 1) / b; }

static void fnn_plan_threads(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, int MR, int NR,
                             int nthreads, fnn_thread_plan *p)
{
    p->M = M;
    p->N = N;
    p->MR = MR;
    p->NR = NR;
    p->nt = p->tm = p->tn = 1;
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

/* ---------------------------------------------------------------- float */

#define T float
#define SFX s
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
#endif
#include "gemm_tmpl.h"
#undef T
#undef SFX
#undef MR
#undef NR
#undef MC_MAX
#undef KC_MAX
#undef NC_MAX
#if FNN_X86
#undef VT
#undef VW
#undef VZERO
#undef VLOAD
#undef VLOADU
#undef VSTOREU
#undef VBCAST
#undef VFMA
#undef VADD
#undef VMAX
#undef VAND
#undef VCMPGT
#endif

/* ---------------------------------------------------------------- double */

#define T double
#define SFX d
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
#endif
#include "gemm_tmpl.h"

/* ---------------------------------------------------------------- public API */

void fnn_sgemm(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
               const float *A, ptrdiff_t rsa, ptrdiff_t csa,
               const float *B, ptrdiff_t rsb, ptrdiff_t csb,
               float *C, ptrdiff_t rsc, ptrdiff_t csc,
               const fnn_epilogue *ep, int nthreads)
{
    fnn_gemm_s(M, N, K, A, rsa, csa, B, rsb, csb, C, rsc, csc, ep, nthreads);
}

void fnn_dgemm(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
               const double *A, ptrdiff_t rsa, ptrdiff_t csa,
               const double *B, ptrdiff_t rsb, ptrdiff_t csb,
               double *C, ptrdiff_t rsc, ptrdiff_t csc,
               const fnn_epilogue *ep, int nthreads)
{
    fnn_gemm_d(M, N, K, A, rsa, csa, B, rsb, csb, C, rsc, csc, ep, nthreads);
}
