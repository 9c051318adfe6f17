/* The fused native training loop's driver: the trainer's life cycle and
 * fnn_trainer_run (see trainer.h for the math and layout, trainer_impl.h for
 * the files of the trainer).  A run copies the caller's parameters into the
 * trainer's padded buffers, plans the step (trainer_step.c), allocates the run's
 * buffers, lets the scheduler (trainer_sched.c) run every step on the threads and
 * copies the parameters back.  Every buffer goes through one counted
 * allocator, so that tests can refuse any one allocation and check that
 * every error path frees what it took (fnn_trainer_alloc_stats).
 */
#include "trainer_sched.h"
#include "trainer_epilogue.h"     /* opt_update: fnn_trainer_grad_apply */
#include "trainer_gemm_bf16.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
/* Rows of the padded matrices: a stride of a multiple of L1_ALIAS_FLOATS
 * floats (256 bytes) would map every row of a B panel to the same few L1 sets. */
#define L1_ALIAS_FLOATS 64
#define ALIGN_BYTES CACHE_LINE       /* blocks start on a line: aligned AVX2 loads, no sharing */
#define ALIGN_FLOATS (ALIGN_BYTES / (int)sizeof(float))

/* ------------------------------------------------------------- allocation */

/* Live blocks and allocation attempts of the trainer, over all trainers
 * (fnn_trainer_alloc_stats); atomics, as runs may overlap in threads. */
static int64_t live_blocks, alloc_calls;

typedef struct {             /* one fnn_trainer_new or fnn_trainer_run call */
    int64_t n;               /* allocations attempted so far */
    int64_t fail_at;         /* tests: refuse the fail_at-th (from 1); 0: none */
} alloc_ctx;

static void *counted(alloc_ctx *ac, size_t bytes, size_t align, int zero)
{
    __atomic_fetch_add(&alloc_calls, 1, __ATOMIC_RELAXED);
    if (++ac->n == ac->fail_at) return NULL;
    void *p;
    if (align) {
        bytes = (bytes + align - 1) / align * align;
        p = aligned_alloc(align, bytes ? bytes : align);
        if (p && zero) memset(p, 0, bytes ? bytes : align);
    } else {
        p = zero ? calloc(bytes ? bytes : 1, 1) : malloc(bytes ? bytes : 1);
    }
    if (p) __atomic_fetch_add(&live_blocks, 1, __ATOMIC_RELAXED);
    return p;
}

/* nfloat zeroed floats on a cache line of their own */
static float *zalloc(alloc_ctx *ac, size_t nfloat)
{
    return counted(ac, nfloat * sizeof(float), ALIGN_BYTES, 1);
}

static void *xmalloc(alloc_ctx *ac, size_t bytes) { return counted(ac, bytes, 0, 0); }
static void *xcalloc(alloc_ctx *ac, size_t bytes) { return counted(ac, bytes, 0, 1); }

static void xfree(void *p)
{
    if (!p) return;
    __atomic_fetch_sub(&live_blocks, 1, __ATOMIC_RELAXED);
    free(p);
}

void fnn_trainer_alloc_stats(int64_t *live, int64_t *calls)
{
    *live = __atomic_load_n(&live_blocks, __ATOMIC_RELAXED);
    *calls = __atomic_load_n(&alloc_calls, __ATOMIC_RELAXED);
}

static ptrdiff_t pad_ld(ptrdiff_t n)
{
    ptrdiff_t ld = (n + NR - 1) / NR * NR;
    if (ld == 0) ld = NR;
    if (ld % L1_ALIAS_FLOATS == 0) ld += NR;
    return ld;
}

/* ---------------------------------------------------------- life cycle */

void fnn_trainer_free(fnn_trainer *tr)
{
    if (!tr) return;
    for (int l = 0; l < FNN_TR_MAXL; l++) {
        xfree(tr->W[l]); xfree(tr->b[l]); xfree(tr->WT[0][l]); xfree(tr->WT[1][l]);
        xfree(tr->s1W[l]); xfree(tr->s1b[l]); xfree(tr->s2W[l]); xfree(tr->s2b[l]);
    }
    for (int l = 0; l <= FNN_TR_MAXL; l++) { xfree(tr->a[l]); xfree(tr->g[l]); }
    for (int l = 0; l < FNN_TR_MAXL; l++) { xfree(tr->Wb[l]); xfree(tr->WTb[0][l]); xfree(tr->WTb[1][l]); }
    for (int l = 0; l <= FNN_TR_MAXL; l++) {
        xfree(tr->ab[l]); xfree(tr->ap[l]); xfree(tr->gb[l]); xfree(tr->gp[l]);
    }
    xfree(tr->rowloss);
    xfree(tr->rowok);
    xfree(tr->rowy);
    xfree(tr);
}

/* The bf16 copies of a bf16 trainer (trainer_impl.h), zeroed: the padding of
 * every copy stays zero, so that a K pair past the valid range adds nothing.
 * Sizes in 4-byte words, each with a line of slack for the tiles that read up
 * to MR - 1 columns or rows past the valid ones. */
static int alloc_bf16(alloc_ctx *ac, fnn_trainer *tr)
{
    const int L = tr->L;
    const size_t pair_rows = (size_t)tr->rows / 2 + 1;
    for (int l = 0; l < L; l++) {
        size_t in = (size_t)tr->dims[l];
        size_t wpairs = ((in + MR - 1) / MR * MR + 1) / 2 + 1;
        if (!(tr->Wb[l] = (uint32_t *)zalloc(ac, wpairs * tr->ld[l + 1] + NR))) return 0;
        if (l > 0) {
            size_t tpairs = ((size_t)tr->dims[l + 1] + NR) / 2 + 1;
            for (int k = 0; k < 2; k++)
                if (!(tr->WTb[k][l] = (uint32_t *)zalloc(ac, tpairs * tr->ld[l] + NR))) return 0;
        }
        /* a[l]: row-major bf16 (half a word each) and pairs of rows */
        if (!(tr->ab[l] = (uint16_t *)zalloc(ac, ((size_t)tr->rows * tr->ld[l] + 1) / 2 + NR)))
            return 0;
        if (!(tr->ap[l] = (uint32_t *)zalloc(ac, pair_rows * tr->ld[l] + NR))) return 0;
    }
    for (int l = 1; l <= L; l++) {
        if (l >= 2 &&
            !(tr->gb[l] = (uint16_t *)zalloc(ac, ((size_t)tr->rows * tr->ld[l] + 1) / 2 + NR)))
            return 0;
        if (!(tr->gp[l] = (uint32_t *)zalloc(ac, pair_rows * tr->ld[l] + NR))) return 0;
    }
    return 1;
}

int fnn_trainer_is_bf16(const fnn_trainer *tr) { return tr->bf16; }

fnn_trainer *fnn_trainer_new_failing(int nlayers, const int *dims, const int *relu,
                                     const int *has_bias, int batch, int64_t fail_alloc_at)
{
    return fnn_trainer_new_prec(nlayers, dims, relu, has_bias, batch, 0, fail_alloc_at);
}

fnn_trainer *fnn_trainer_new_prec(int nlayers, const int *dims, const int *relu,
                                  const int *has_bias, int batch, int bf16, int64_t fail_alloc_at)
{
    if (nlayers < 1 || nlayers > FNN_TR_MAXL || batch < 1) return NULL;
    alloc_ctx ac = {0, fail_alloc_at};
    fnn_trainer *tr = xcalloc(&ac, sizeof(*tr));
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
    /* The loss goes into the last forward's epilogue when the logits fit one
     * column panel (each tile then holds whole rows); otherwise it is a phase
     * of its own.  The one place that decides: the phases follow from it. */
    tr->fuse_xent = tr->dims[nlayers] <= NR;
    for (int l = 0; ok && l < nlayers; l++) {
        size_t in = (size_t)tr->dims[l], ldo = (size_t)tr->ld[l + 1];
        size_t wrows = (in + MR - 1) / MR * MR + 1;
        tr->relu[l] = relu[l] != 0;
        tr->has_bias[l] = has_bias[l] != 0;
        ok = (tr->W[l] = zalloc(&ac, wrows * ldo)) && (tr->s1W[l] = zalloc(&ac, wrows * ldo))
             && (tr->s2W[l] = zalloc(&ac, wrows * ldo)) && (tr->b[l] = zalloc(&ac, ldo))
             && (tr->s1b[l] = zalloc(&ac, ldo)) && (tr->s2b[l] = zalloc(&ac, ldo));
        if (ok && l > 0) {
            size_t n = (size_t)(tr->dims[l + 1] + NR) * (size_t)(tr->ld[l] + MR);
            ok = (tr->WT[0][l] = zalloc(&ac, n)) && (tr->WT[1][l] = zalloc(&ac, n));
        }
    }
    for (int l = 0; ok && l <= nlayers; l++) {
        ok = (tr->a[l] = zalloc(&ac, (size_t)tr->rows * tr->ld[l] + MR)) != NULL;
        if (ok && l > 0) ok = (tr->g[l] = zalloc(&ac, (size_t)tr->rows * tr->ld[l] + MR)) != NULL;
    }
    if (ok) {
        ok = (tr->rowloss = xcalloc(&ac, (size_t)tr->rows * sizeof(double)))
             && (tr->rowok = xcalloc(&ac, (size_t)tr->rows * sizeof(int)))
             && (tr->rowy = xcalloc(&ac, (size_t)tr->rows * sizeof(int64_t)));
    }
    tr->bf16 = bf16 != 0;
    if (ok && tr->bf16) ok = alloc_bf16(&ac, tr);
    if (!ok) {
        fnn_trainer_free(tr);
        return NULL;
    }
    return tr;
}

fnn_trainer *fnn_trainer_new(int nlayers, const int *dims, const int *relu, const int *has_bias,
                             int batch)
{
    return fnn_trainer_new_failing(nlayers, dims, relu, has_bias, batch, 0);
}

/* ------------------------------------------------------------------ copies */

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



/* ------------------------------------------------- per-layer completion */

/* fnn_grad_signal (trainer.h): a count of finished layers under a mutex, and a
 * condition variable the waiters sleep on (the reduction thread must not spin:
 * on a shared machine it would take the core the backward pass needs). */
struct fnn_grad_signal {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int nlayers;                 /* L of the step (reset) */
    int ndone;                   /* layers done, from the top: layers [L - ndone, L) */
    int ended, ok;               /* the step returned; whether it succeeded */
    int npub, order[FNN_TR_MAXL];  /* tests: the layers in the order published */
};

fnn_grad_signal *fnn_grad_signal_new(void)
{
    fnn_grad_signal *sig = calloc(1, sizeof(*sig));
    if (!sig) return NULL;
    if (pthread_mutex_init(&sig->mu, NULL) != 0) { free(sig); return NULL; }
    if (pthread_cond_init(&sig->cv, NULL) != 0) {
        pthread_mutex_destroy(&sig->mu);
        free(sig);
        return NULL;
    }
    return sig;
}

void fnn_grad_signal_free(fnn_grad_signal *sig)
{
    if (!sig) return;
    pthread_cond_destroy(&sig->cv);
    pthread_mutex_destroy(&sig->mu);
    free(sig);
}

void fnn_grad_signal_reset(fnn_grad_signal *sig, int nlayers)
{
    pthread_mutex_lock(&sig->mu);
    sig->nlayers = nlayers;
    sig->ndone = 0;
    sig->ended = 0;
    sig->ok = 0;
    sig->npub = 0;
    pthread_mutex_unlock(&sig->mu);
}

/* From the worker whose task finished layer `layer`'s backward phase.  The
 * phases finish in order L-1, ..., 0, so the count from the top is enough. */
void fnn_tr_signal_layer(fnn_grad_signal *sig, int layer)
{
    pthread_mutex_lock(&sig->mu);
    if (sig->npub < FNN_TR_MAXL) sig->order[sig->npub++] = layer;
    if (sig->nlayers - layer > sig->ndone) sig->ndone = sig->nlayers - layer;
    pthread_cond_broadcast(&sig->cv);
    pthread_mutex_unlock(&sig->mu);
}

void fnn_grad_signal_finish(fnn_grad_signal *sig, int ok)
{
    pthread_mutex_lock(&sig->mu);
    sig->ended = 1;
    sig->ok = ok != 0;
    if (ok) sig->ndone = sig->nlayers;
    pthread_cond_broadcast(&sig->cv);
    pthread_mutex_unlock(&sig->mu);
}

int fnn_grad_signal_order(fnn_grad_signal *sig, int *order)
{
    pthread_mutex_lock(&sig->mu);
    const int n = sig->npub;
    memcpy(order, sig->order, (size_t)n * sizeof(int));
    pthread_mutex_unlock(&sig->mu);
    return n;
}

int fnn_grad_signal_wait(fnn_grad_signal *sig, int layer, double timeout_s)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    if (timeout_s > 0) {
        double whole = (double)(time_t)timeout_s;
        until.tv_sec += (time_t)timeout_s;
        until.tv_nsec += (long)((timeout_s - whole) * 1e9);
        if (until.tv_nsec >= 1000000000L) { until.tv_sec++; until.tv_nsec -= 1000000000L; }
    }
    int ret;
    pthread_mutex_lock(&sig->mu);
    for (;;) {
        if (sig->nlayers - sig->ndone <= layer) { ret = 1; break; }
        if (sig->ended) { ret = sig->ok; break; }
        if (timeout_s > 0) {
            if (pthread_cond_timedwait(&sig->cv, &sig->mu, &until) == ETIMEDOUT) {
                ret = sig->nlayers - sig->ndone <= layer ? 1 : sig->ended ? sig->ok : -1;
                break;
            }
        } else {
            pthread_cond_wait(&sig->cv, &sig->mu);
        }
    }
    pthread_mutex_unlock(&sig->mu);
    return ret;
}

/* ------------------------------------------------------------------- run */

/* fnn_trainer_run, or with gW != NULL the gradient-only step of
 * fnn_trainer_grad_step (W and b only read, no optimizer state). */
static int64_t run_steps(fnn_trainer *tr,
                         float *const *W, float *const *b,
                         float *const *s1W, float *const *s1b,
                         float *const *s2W, float *const *s2b,
                         float *const *gW, float *const *gb, float grad_inv_b,
                         fnn_grad_signal *sig, const void *x, int x_u8, ptrdiff_t x_ld,
                         const int64_t *y, const int64_t *idx, ptrdiff_t n,
                         const fnn_train_opt *opt, int nthreads,
                         double *loss_sum_out, int64_t *correct_out)
{
    const int L = tr->L;
    const int grad = gW != NULL;
    int64_t ret = -1;
    alloc_ctx ac = {0, opt->fail_alloc_at};
    run_t R;
    memset(&R, 0, sizeof(R));
    R.tr = tr; R.x = x; R.x_u8 = x_u8; R.x_ld = x_ld; R.y = y; R.idx = idx; R.n = n;
    R.opt = opt;
    R.grad = grad; R.grad_inv_b = grad_inv_b; R.gW = gW; R.gb = gb;
    R.sig = grad ? sig : NULL;
    R.avx2 = fnn_use_avx2();
    R.simd = FNN_X86 ? fnn_simd_level() : FNN_SIMD_SCALAR;
    if (nthreads < 1) nthreads = 1;
    R.nthreads = nthreads;

    /* The run's buffers, all before anything is copied: on failure every one
     * taken so far is freed at `out` and the caller's arrays are untouched.
     * The per-thread copies (a[0], a^T strips) are optional: without them the
     * threads share a[0] and read a^T in place (the same results). */
    /* bf16: the threads share the bf16 copy of a[0] (half the bytes of the fp32
     * one; the per-thread copies are an fp32-mode measure) */
    if (n > 0 && nthreads > 1 && nthreads <= REPLICATE_MAX_THREADS && !tr->bf16) {
        /* +MR: tiles read rows past the batch; whole cache lines per copy */
        R.a0rep_stride = ((int64_t)tr->rows * tr->ld[0] + MR + ALIGN_FLOATS - 1)
                         / ALIGN_FLOATS * ALIGN_FLOATS;
        R.a0rep = zalloc(&ac, (size_t)(R.a0rep_stride * nthreads));
    }
    fnn_tr_plan_phases(&R);          /* a gather copy per thread if R.a0rep */
    if (n > 0) {
        R.claim = xmalloc(&ac, (size_t)R.per_step * sizeof(int64_t));
        R.mine = xmalloc(&ac, (size_t)R.per_step * sizeof(int32_t));
        R.mine_at = xmalloc(&ac, (size_t)(nthreads + 1) * sizeof(int64_t));
        if (!R.claim || !R.mine || !R.mine_at) goto out;
        for (int64_t i = 0; i < R.per_step; i++) R.claim[i] = -1;    /* no step yet */
        fnn_tr_assign_owners(&R);
        for (int p = 0; p < R.nph && !tr->bf16; p++) {   /* bf16: dW reads the pair copies */
            if (!R.ph[p].pack) continue;
            int64_t strips = (tr->dims[R.ph[p].layer] + MR - 1) / MR;
            if (strips > R.pack_strips) R.pack_strips = strips;
        }
        if (R.pack_strips > 0) {
            /* + a line of slack after each thread's strips */
            R.pack_floats = R.pack_strips * tr->batch * MR + ALIGN_FLOATS;
            R.pack = zalloc(&ac, (size_t)(R.pack_floats * nthreads));
            if (R.pack)
                R.pack_stamp = xmalloc(&ac, (size_t)(R.pack_strips * nthreads) * sizeof(int64_t));
            if (!R.pack_stamp) {     /* no copies: dW reads a^T in place */
                xfree(R.pack);
                R.pack = NULL;
            } else {
                for (int64_t i = 0; i < R.pack_strips * nthreads; i++) R.pack_stamp[i] = -1;
            }
        }
    }

    for (int l = 0; l < L; l++) {
        int in = tr->dims[l], out = tr->dims[l + 1];
        if (grad && !W) break;       /* resident weights: fnn_trainer_grad_apply wrote them */
        copy_in(tr->W[l], tr->ld[l + 1], W[l], in, out);
        if (grad) {
            if (tr->has_bias[l]) memcpy(tr->b[l], b[l], (size_t)out * sizeof(float));
            if (l > 0) transpose_into(tr->WT[0][l], tr->ld[l], W[l], in, out);
            continue;
        }
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
    /* bf16: the weights' bf16 copies, from the master weights just copied in (then
     * refreshed by every update epilogue) */
    for (int l = 0; l < L && tr->bf16; l++) {
        fnn_tr_bf16_rows(R.simd, tr->W[l], tr->ld[l + 1], 0, tr->dims[l], tr->ld[l + 1], NULL,
                         tr->Wb[l]);
        if (l > 0)
            fnn_tr_bf16_rows(R.simd, tr->WT[0][l], tr->ld[l], 0, tr->dims[l + 1], tr->ld[l],
                             NULL, tr->WTb[0][l]);
    }
    if (n > 0) fnn_tr_sched_run(&R);
    for (int l = 0; l < L && !grad; l++) {
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
    ret = R.done_steps;
out:
    xfree(R.claim);
    xfree(R.mine);
    xfree(R.mine_at);
    xfree(R.pack);
    xfree(R.pack_stamp);
    xfree(R.a0rep);
    return ret;
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
    return run_steps(tr, W, b, s1W, s1b, s2W, s2b, NULL, NULL, 0.0f, NULL, x, x_u8, x_ld, y,
                     idx, n, opt, nthreads, loss_sum_out, correct_out);
}

int64_t fnn_trainer_grad_step_sig(fnn_trainer *tr, float *const *W, float *const *b,
                                  float *const *gW, float *const *gb,
                                  const void *x, int x_u8, ptrdiff_t x_ld,
                                  const int64_t *y, const int64_t *idx, ptrdiff_t n,
                                  float inv_b, int nthreads, fnn_grad_signal *sig,
                                  double *loss_sum_out, int64_t *correct_out)
{
    fnn_train_opt opt;
    memset(&opt, 0, sizeof(opt));
    opt.kind = FNN_OPT_SGD;          /* unused: the step stores gradients */
    opt.solo_after = -1;
    int64_t done = -1;
    if (n >= 0 && n <= tr->batch)
        done = run_steps(tr, W, b, NULL, NULL, NULL, NULL, gW, gb, inv_b, sig, x, x_u8, x_ld,
                         y, idx, n, &opt, nthreads, loss_sum_out, correct_out);
    if (done < 0) done = -1;
    /* n == 0 runs no task and writes no gradient: the caller fills them */
    if (sig) fnn_grad_signal_finish(sig, done >= 0);
    return done;
}

int64_t fnn_trainer_grad_step(fnn_trainer *tr, float *const *W, float *const *b,
                              float *const *gW, float *const *gb,
                              const void *x, int x_u8, ptrdiff_t x_ld,
                              const int64_t *y, const int64_t *idx, ptrdiff_t n, float inv_b,
                              int nthreads, double *loss_sum_out, int64_t *correct_out)
{
    return fnn_trainer_grad_step_sig(tr, W, b, gW, gb, x, x_u8, x_ld, y, idx, n, inv_b,
                                     nthreads, NULL, loss_sum_out, correct_out);
}

/* Rows [i0, i1) of a layer's W (dense, `out` columns) and their state updated
 * from g by opt_update, each copied to the trainer's padded W (ld ldw) while in
 * cache.  With nsrc > 1 the gradient is the sum of nsrc buffers laid out like g,
 * src floats apart (the ranks' slots of fastnn.distributed.SharedGrads), added in
 * source order into a block of SUM_BLOCK floats just before its update: the sum
 * is never written out.  opt_update is elementwise, so updating a row in blocks
 * gives the bits of one call per row.  Compiled twice, like the tile epilogues
 * that apply the same rule (generic and "avx2,fma"), so that the update rounds as
 * the fused step's does: the compiler contracts the same multiply-adds into the
 * same FMAs. */
#define SUM_BLOCK 512
static inline __attribute__((always_inline))
void apply_rows_body(const opt_sc *o, float *w, float *m1, float *m2, const float *g, int out,
                     int i0, int i1, float *tw, ptrdiff_t ldw, int nsrc, ptrdiff_t src)
{
    float sum[SUM_BLOCK];
    for (int i = i0; i < i1; i++) {
        const ptrdiff_t r = (ptrdiff_t)i * out;
        if (nsrc <= 1) {
            opt_update(o, w + r, m1 ? m1 + r : NULL, m2 ? m2 + r : NULL, g + r, out);
        } else {
            for (int c0 = 0; c0 < out; c0 += SUM_BLOCK) {
                const int nc = out - c0 < SUM_BLOCK ? out - c0 : SUM_BLOCK;
                const float *g0 = g + r + c0;
                for (int j = 0; j < nc; j++) sum[j] = g0[j] + g0[src + j];
                for (int k = 2; k < nsrc; k++) {
                    const float *gk = g0 + k * src;
                    for (int j = 0; j < nc; j++) sum[j] += gk[j];
                }
                opt_update(o, w + r + c0, m1 ? m1 + r + c0 : NULL, m2 ? m2 + r + c0 : NULL, sum,
                           nc);
            }
        }
        memcpy(tw + i * ldw, w + r, (size_t)out * sizeof(float));
    }
}

static void apply_rows(const opt_sc *o, float *w, float *m1, float *m2, const float *g,
                       int out, int i0, int i1, float *tw, ptrdiff_t ldw, int nsrc,
                       ptrdiff_t src)
{
    apply_rows_body(o, w, m1, m2, g, out, i0, i1, tw, ldw, nsrc, src);
}

#if FNN_X86
FNN_TARGET_AVX2
static void apply_rows_avx2(const opt_sc *o, float *w, float *m1, float *m2, const float *g,
                            int out, int i0, int i1, float *tw, ptrdiff_t ldw, int nsrc,
                            ptrdiff_t src)
{
    apply_rows_body(o, w, m1, m2, g, out, i0, i1, tw, ldw, nsrc, src);
}
#endif

#if FNN_X86
/* transpose_into for the AVX2 path of fnn_trainer_grad_apply: 8 x 8 blocks in
 * registers (unpack, shuffle, lane permute), the edges as transpose_into.  A
 * pure copy: the same W^T bits as transpose_into. */
FNN_TARGET_AVX2
static void transpose_into_avx2(float *dst, ptrdiff_t ldd, const float *src, int rows, int cols)
{
    int i = 0;
    for (; i + 8 <= rows; i += 8) {
        const float *s = src + (ptrdiff_t)i * cols;
        int j = 0;
        for (; j + 8 <= cols; j += 8) {
            __m256 r0 = _mm256_loadu_ps(s + j), r1 = _mm256_loadu_ps(s + cols + j);
            __m256 r2 = _mm256_loadu_ps(s + 2 * (ptrdiff_t)cols + j);
            __m256 r3 = _mm256_loadu_ps(s + 3 * (ptrdiff_t)cols + j);
            __m256 r4 = _mm256_loadu_ps(s + 4 * (ptrdiff_t)cols + j);
            __m256 r5 = _mm256_loadu_ps(s + 5 * (ptrdiff_t)cols + j);
            __m256 r6 = _mm256_loadu_ps(s + 6 * (ptrdiff_t)cols + j);
            __m256 r7 = _mm256_loadu_ps(s + 7 * (ptrdiff_t)cols + j);
            __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
            __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
            __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
            __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
            __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
            __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
            __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
            __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
            __m256 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
            __m256 u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
            __m256 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
            __m256 u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
            float *d = dst + (ptrdiff_t)j * ldd + i;
            _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
            _mm256_storeu_ps(d + ldd, _mm256_permute2f128_ps(u1, u5, 0x20));
            _mm256_storeu_ps(d + 2 * ldd, _mm256_permute2f128_ps(u2, u6, 0x20));
            _mm256_storeu_ps(d + 3 * ldd, _mm256_permute2f128_ps(u3, u7, 0x20));
            _mm256_storeu_ps(d + 4 * ldd, _mm256_permute2f128_ps(u0, u4, 0x31));
            _mm256_storeu_ps(d + 5 * ldd, _mm256_permute2f128_ps(u1, u5, 0x31));
            _mm256_storeu_ps(d + 6 * ldd, _mm256_permute2f128_ps(u2, u6, 0x31));
            _mm256_storeu_ps(d + 7 * ldd, _mm256_permute2f128_ps(u3, u7, 0x31));
        }
        for (; j < cols; j++)
            for (int ii = i; ii < i + 8; ii++)
                dst[(ptrdiff_t)j * ldd + ii] = src[(ptrdiff_t)ii * cols + j];
    }
    if (i < rows)
        transpose_into(dst + i, ldd, src + (ptrdiff_t)i * cols, rows - i, cols);
}
#endif

/* The update of a data-parallel step, once the ranks have summed the gradients
 * of fnn_trainer_grad_step: the model's W, b and the optimizer state s1/s2
 * (dense, laid out like W and b; NULL where the rule keeps none) updated from
 * gW, gb by the fused step's own rule (opt_update; opt->step = updates so far),
 * and the trainer's padded W, b and W^T written from each updated row while it
 * is in cache.  The next fnn_trainer_grad_step with W == NULL then reads them as
 * they are: no copy of the weights per step, one pass over them instead of
 * optimizer.step()'s pass, the copy and the transpose.  Rows go in blocks of 32
 * (the transpose's), independent of each other, spread over nthreads: the
 * result does not depend on the thread count. */
void fnn_trainer_grad_apply(fnn_trainer *tr, float *const *W, float *const *b,
                            float *const *s1W, float *const *s1b,
                            float *const *s2W, float *const *s2b,
                            const float *const *gW, const float *const *gb,
                            const fnn_train_opt *opt, int nthreads)
{
    fnn_trainer_grad_apply_sum(tr, W, b, s1W, s1b, s2W, s2b, gW, gb, 1, 0, opt, nthreads);
}

void fnn_trainer_grad_apply_sum(fnn_trainer *tr, float *const *W, float *const *b,
                                float *const *s1W, float *const *s1b,
                                float *const *s2W, float *const *s2b,
                                const float *const *gW, const float *const *gb,
                                int nsrc, ptrdiff_t src_stride,
                                const fnn_train_opt *opt, int nthreads)
{
    opt_sc o;
    fnn_tr_opt_scalars(opt, 0, &o);
    const int avx2 = fnn_use_avx2();
    if (nthreads < 1) nthreads = 1;
    for (int l = 0; l < tr->L; l++) {
        const int in = tr->dims[l], out = tr->dims[l + 1];
        const ptrdiff_t ldw = tr->ld[l + 1];
        const int nblk = (in + 31) / 32;
        float *w = W[l], *m1 = s1W[l], *m2 = s2W[l], *tw = tr->W[l];
        const float *g = gW[l];
#ifdef FASTNN_HAVE_OPENMP
#pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1)
#endif
        for (int blk = 0; blk < nblk; blk++) {
            const int i0 = blk * 32, i1 = i0 + 32 < in ? i0 + 32 : in;
#if FNN_X86
            if (avx2) apply_rows_avx2(&o, w, m1, m2, g, out, i0, i1, tw, ldw, nsrc, src_stride);
            else
#endif
                apply_rows(&o, w, m1, m2, g, out, i0, i1, tw, ldw, nsrc, src_stride);
            if (l == 0) continue;
#if FNN_X86
            if (avx2)
                transpose_into_avx2(tr->WT[0][l] + i0, tr->ld[l], w + (ptrdiff_t)i0 * out,
                                    i1 - i0, out);
            else
#endif
                transpose_into(tr->WT[0][l] + i0, tr->ld[l], w + (ptrdiff_t)i0 * out, i1 - i0,
                               out);
        }
        if (tr->has_bias[l]) {
#if FNN_X86
            if (avx2)
                apply_rows_avx2(&o, b[l], s1b[l], s2b[l], gb[l], out, 0, 1, tr->b[l], 0, nsrc,
                                src_stride);
            else
#endif
                apply_rows(&o, b[l], s1b[l], s2b[l], gb[l], out, 0, 1, tr->b[l], 0, nsrc,
                           src_stride);
        }
    }
    (void)avx2;
}
