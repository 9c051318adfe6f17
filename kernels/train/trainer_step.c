/* One step of the fused trainer as phases of independent tasks: the plan
 * (which phases, how many tasks each) and what each task computes.  The
 * scheduler (trainer_sched.c) decides which thread runs a task; nothing here depends
 * on that, so the results are the same for every thread count.
 *
 * Phases of a step, in order (phase_seq, the one definition of that order):
 *   gather       a[0] = the batch's rows of x (scaled to float); rowy = labels
 *   forward l    a[l+1] = act(a[l] W[l] + b[l])       (column panel x row tiles)
 *   loss         g[L] = softmax(a[L]) - onehot(y), row losses (when not fused
 *                into forward L-1's epilogue: more than NR classes)
 *   backward l   dX tasks: g[l] = (g[l+1] W[l]^T) * (a[l] > 0)   (l > 0)
 *                dW tasks: W[l] updated from a[l]^T g[l+1]   (+ next W^T copy)
 *                bias tasks: b[l] updated from the column sums of g[l+1]
 * In the gradient-only step (R->grad, fnn_trainer_grad_step) the dW and bias
 * tasks store the gradients instead of updating W and b.
 */
#include "trainer_sched.h"
#include "trainer_gemm.h"
#include "trainer_gemm_bf16.h"

#include <math.h>

/* Gather and loss tasks take ROWS_PER_TASK rows: for 784-pixel rows that is
 * 12.5k pixels converted, about the microsecond or two of a GEMM task. */
#define ROWS_PER_TASK 16
/* dW column panels per thread that pay for a per-thread copy of a^T strips:
 * measured with epochs alternating in one process, mlp-keras 4 % and the
 * speedrun net 3-4 % faster per epoch; with 4 panels per thread (mlp at 2
 * threads) it was neutral, with 1 (softmax) 13 % slower.  A copy shared by
 * the threads, written by the gather, cost more in cache-line transfers
 * between the cores than it saved. */
#define PACK_MIN_PANELS 8
/* Bias tasks take 8 column panels each: a panel's gradient is only a column
 * sum of 16 floats over the batch, far less than a task's fixed cost, so a
 * 512-wide layer is 4 tasks instead of 32. */
#define BIAS_PANELS_PER_TASK 8

/* ------------------------------------------------------------------ plan */

/* The phases of a step in order, as (kind, layer); layer -1 for the gather
 * and the loss.  Both the plan and fnn_trainer_phases use it. */
static int phase_seq(const fnn_trainer *tr, int *kind, int *layer)
{
    const int L = tr->L;
    int n = 0;
    kind[n] = FNN_PHASE_GATHER; layer[n] = -1; n++;
    for (int l = 0; l < L; l++) { kind[n] = FNN_PHASE_FORWARD; layer[n] = l; n++; }
    if (!tr->fuse_xent) { kind[n] = FNN_PHASE_LOSS; layer[n] = -1; n++; }
    for (int l = L - 1; l >= 0; l--) { kind[n] = FNN_PHASE_BACKWARD; layer[n] = l; n++; }
    return n;
}

int fnn_trainer_phases(const fnn_trainer *tr, int *kind, int *layer)
{
    return phase_seq(tr, kind, layer);
}

void fnn_tr_plan_phases(run_t *R)
{
    fnn_trainer *tr = R->tr;
    const int B = tr->batch;
    const int64_t row_tasks = R->row_tasks = (B + ROWS_PER_TASK - 1) / ROWS_PER_TASK;
    int kind[MAX_PHASES], layer[MAX_PHASES];
    const int n = phase_seq(tr, kind, layer);
    phase_t *ph = R->ph;
    memset(ph, 0, sizeof(R->ph));
    for (int p = 0; p < n; p++) {
        const int l = layer[p];
        ph[p].kind = kind[p];
        ph[p].layer = l;
        switch (kind[p]) {
        case FNN_PHASE_GATHER:       /* one run of row tasks per copy of a[0] */
            ph[p].ntasks = row_tasks * (R->a0rep ? R->nthreads : 1);
            break;
        case FNN_PHASE_FORWARD:
            ph[p].gw = fnn_tr_grid(B, tr->dims[l + 1], tr->dims[l], R->nthreads);
            ph[p].ntasks = ph[p].gw.ntasks;
            break;
        case FNN_PHASE_LOSS:
            ph[p].ntasks = row_tasks;
            break;
        case FNN_PHASE_BACKWARD: {
            const int64_t panels = (tr->dims[l + 1] + NR - 1) / NR;
            if (l > 0) ph[p].gx = fnn_tr_grid(B, tr->dims[l], tr->dims[l + 1], R->nthreads);
            ph[p].gw = fnn_tr_grid(tr->dims[l], tr->dims[l + 1], B, R->nthreads);
            ph[p].pack = panels >= (int64_t)PACK_MIN_PANELS * R->nthreads && tr->dims[l] >= 2 * MR;
            ph[p].nbias = tr->has_bias[l]
                ? (panels + BIAS_PANELS_PER_TASK - 1) / BIAS_PANELS_PER_TASK : 0;
            ph[p].ntasks = ph[p].gx.ntasks + ph[p].gw.ntasks + ph[p].nbias;
            break;
        }
        }
    }
    int64_t first = 0;
    for (int p = 0; p < n; p++) { ph[p].first = first; first += ph[p].ntasks; }
    R->nph = n;
    R->per_step = first;
}

/* ---------------------------------------------------------------- gather */

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

/* A[k][0:MR] = a[k * lda + 0:MR] for k < K: one strip of a^T, k-major.  The
 * columns past the layer's width hold whatever follows in a (finite: zeros or
 * the next row), like the rows past mr of any tile, and are dropped. */
static void pack_strip(float *restrict A, const float *restrict a, ptrdiff_t lda, ptrdiff_t K)
{
    for (ptrdiff_t k = 0; k < K; k++) memcpy(A + k * MR, a + k * lda, MR * sizeof(float));
}

/* ----------------------------------------------------------------- tasks */

/* The activations a[l] as this thread reads them: its own copy of a[0] when
 * the gather replicates it. */
static inline float *act(const run_t *R, const step_ctx *c, int l)
{
    if (l == 0 && R->a0rep) return R->a0rep + c->tid * R->a0rep_stride;
    return R->tr->a[l];
}

int fnn_tr_run_task(run_t *R, step_ctx *c, int64_t s, const phase_t *ph, int64_t t)
{
    fnn_trainer *tr = R->tr;
    if (s != c->s) {
        const int64_t B = tr->batch;
        c->s = s;
        c->off = (ptrdiff_t)(s * B);
        c->bs = (int)(R->n - c->off < B ? R->n - c->off : B);
        c->inv_b = R->grad ? R->grad_inv_b : 1.0f / (float)c->bs;
        fnn_tr_opt_scalars(R->opt, s, &c->o);
        if (R->grad) c->o.kind = FNN_OPT_GRAD;
    }
    const int l = ph->layer, L = tr->L, bs = c->bs;
    int stop = 0;
    tile_ep e;
    memset(&e, 0, sizeof(e));
    switch (ph->kind) {
    case FNN_PHASE_GATHER: {
        const int64_t copy = t / R->row_tasks;
        ptrdiff_t lo = (t % R->row_tasks) * ROWS_PER_TASK, hi = lo + ROWS_PER_TASK;
        if (hi > bs) hi = bs;
        if (tr->bf16)            /* the bf16 copies only: no GEMM reads the fp32 a[0] */
            fnn_tr_bf16_gather(R->simd, tr->ab[0], tr->ap[0], tr->ld[0], lo, hi, tr->dims[0],
                               R->x, R->x_u8, R->x_ld, R->idx + c->off);
        else
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
                for (size_t o = 0; o < (size_t)tr->dims[0] * esz; o += CACHE_LINE)
                    __builtin_prefetch(row + o, 0, 1);
            }
        }
        break;
    }
    case FNN_PHASE_FORWARD:
        e.N = tr->dims[l + 1];
        e.bias = tr->has_bias[l] ? tr->b[l] : NULL;
        if (l == L - 1 && tr->fuse_xent) {
            e.kind = EP_XENT;
            e.C = tr->g[L]; e.ldc = tr->ld[L];
            e.y = tr->rowy; e.inv_b = c->inv_b;
            e.rowloss = tr->rowloss; e.rowok = tr->rowok;
        } else {
            e.kind = EP_FWD;
            e.C = tr->a[l + 1]; e.ldc = tr->ld[l + 1];
            e.relu = tr->relu[l];
        }
        if (tr->bf16) {
            /* A = a[l] row-major bf16 (pairs along K = the row), B = W[l]'s row pairs;
             * the epilogue also writes a[l+1]'s bf16 copies (g[L]'s for the loss) */
            if (l < L - 1) { e.Cb = tr->ab[l + 1]; e.Cp = tr->ap[l + 1]; }
            else if (tr->fuse_xent) { e.Cb = tr->gb[L]; e.Cp = tr->gp[L]; }
            /* else: the fp32 logits go to the loss phase, which writes g[L]'s copies */
            gemm_tiles_bf16(R->simd, bs, (tr->dims[l] + 1) / 2, (const uint32_t *)tr->ab[l],
                            tr->ld[l] / 2, 1, MR * tr->ld[l] / 2, tr->Wb[l], tr->ld[l + 1], &e,
                            t / ph->gw.nchunks, t % ph->gw.nchunks * ph->gw.per,
                            (t % ph->gw.nchunks + 1) * ph->gw.per);
            break;
        }
        gemm_tiles(R->avx2, bs, tr->dims[l], act(R, c, l), tr->ld[l], 1, MR * tr->ld[l], tr->W[l],
                   tr->ld[l + 1], &e,
                   t / ph->gw.nchunks, t % ph->gw.nchunks * ph->gw.per,
                   (t % ph->gw.nchunks + 1) * ph->gw.per);
        break;
    case FNN_PHASE_LOSS: {
        ptrdiff_t lo = t * ROWS_PER_TASK, hi = lo + ROWS_PER_TASK;
        if (hi > bs) hi = bs;
        for (ptrdiff_t r = lo; r < hi; r++)
            tr->rowloss[r] = xent_row(tr->a[L] + r * tr->ld[L], tr->dims[L], tr->rowy[r],
                                      c->inv_b, tr->g[L] + r * tr->ld[L], &tr->rowok[r]);
        if (tr->bf16 && hi > lo)     /* lo is even: whole row pairs */
            fnn_tr_bf16_rows(R->simd, tr->g[L], tr->ld[L], lo, hi - lo, tr->ld[L], tr->gb[L],
                             tr->gp[L]);
        break;
    }
    case FNN_PHASE_BACKWARD:
        if (l == L - 1 && t == 0) {
            /* the batch's loss, summed in row order: the same for any thread count */
            double step_loss = 0.0;
            for (int r = 0; r < bs; r++) {
                step_loss += tr->rowloss[r];
                R->correct += tr->rowok[r];
            }
            R->loss_sum += step_loss;
            if (isfinite(step_loss)) R->done_steps = c->s + 1;
            else stop = 1;
        }
        if (t < ph->gx.ntasks) {
            /* g[l] = (g[l+1] W[l]^T) * (a[l] > 0), from this step's copy of W^T */
            e.kind = EP_DX;
            e.C = tr->g[l]; e.ldc = tr->ld[l];
            e.mask = tr->relu[l - 1] ? tr->a[l] : NULL; e.ldm = tr->ld[l];
            e.N = tr->dims[l];
            if (tr->bf16) {
                /* A = g[l+1] row-major bf16, B = this step's W^T row pairs; the
                 * epilogue writes g[l]'s bf16 copies (row-major only for a next dX) */
                e.Cb = l >= 2 ? tr->gb[l] : NULL;
                e.Cp = tr->gp[l];
                gemm_tiles_bf16(R->simd, bs, (tr->dims[l + 1] + 1) / 2,
                                (const uint32_t *)tr->gb[l + 1], tr->ld[l + 1] / 2, 1,
                                MR * tr->ld[l + 1] / 2, tr->WTb[c->s & 1][l], tr->ld[l], &e,
                                t / ph->gx.nchunks, t % ph->gx.nchunks * ph->gx.per,
                                (t % ph->gx.nchunks + 1) * ph->gx.per);
                break;
            }
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
            if (R->grad) {           /* store dW: W and W^T stay as they are */
                e.kind = EP_DWG;
                e.W = R->gW[l]; e.ldw = tr->dims[l + 1];
                e.WT = NULL;
            }
            const ptrdiff_t jp = t / ph->gw.nchunks, ip_lo = t % ph->gw.nchunks * ph->gw.per;
            ptrdiff_t ip_hi = ip_lo + ph->gw.per;
            if (tr->bf16) {
                /* A = a[l]^T: a[l]'s row pairs (pairs along K = the batch rows), B =
                 * g[l+1]'s row pairs; the update epilogue refreshes W's bf16 copies
                 * (W^T's for the next step's dX) */
                if (e.kind == EP_DW) {
                    e.WT = NULL;
                    e.Wb = tr->Wb[l];
                    e.WTb = l > 0 ? tr->WTb[(c->s + 1) & 1][l] : NULL;
                }
                gemm_tiles_bf16(R->simd, tr->dims[l], (bs + 1) / 2, tr->ap[l], 1, tr->ld[l], MR,
                                tr->gp[l + 1], tr->ld[l + 1], &e, jp, ip_lo, ip_hi);
                break;
            }
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
            ptrdiff_t p_lo = t * BIAS_PANELS_PER_TASK, p_hi = p_lo + BIAS_PANELS_PER_TASK;
            if (R->grad)             /* opt kind FNN_OPT_GRAD: gb[l] = db */
                bias_update(R->avx2, tr->g[l + 1], tr->ld[l + 1], bs, tr->dims[l + 1], p_lo,
                            p_hi, R->gb[l], R->gb[l], R->gb[l], &c->o);
            else
                bias_update(R->avx2, tr->g[l + 1], tr->ld[l + 1], bs, tr->dims[l + 1], p_lo,
                            p_hi, tr->b[l], tr->s1b[l], tr->s2b[l], &c->o);
        }
        break;
    }
    return stop;
}
