/* Internal to the fused trainer (the .c files of kernels/train): the
 * trainer's state, the plan of a run and what every file of the trainer
 * shares.  Not an API: the public one is trainer.h.
 *
 * Files (one concern each):
 *   trainer.h             the public API, the math and the layout
 *   trainer_impl.h        this: tile shape, struct fnn_trainer, the run's plan (run_t)
 *   trainer_epilogue.h/.c the tile epilogues with the optimizer updates (static
 *                         inline, compiled into the GEMM tiles), the bias-gradient
 *                         update and the per-step optimizer scalars
 *   trainer_gemm.h/.c     the 6x16 microkernels (scalar, AVX2) and the tile loops
 *   trainer_gemm_bf16.h/.c  bf16 mode: the same tiles on bf16 pairs (vdpbf16ps at
 *                         level 3, emulated below), its dW-with-update tiles, the
 *                         bf16 gather and row copies
 *   trainer_step.c        one step as phases of tasks: the plan, what each task computes
 *   trainer_sched.h/.c    the work-stealing scheduler that runs the tasks on the threads
 *   trainer.c             the driver: fnn_trainer_new/free/run, buffers, copies in/out
 *
 * Functions shared between these files are hidden (not exported from the
 * module) so that calls between them go straight to the local definition. */
#ifndef FNN_TRAINER_IMPL_H
#define FNN_TRAINER_IMPL_H

#include "trainer.h"
#include "cpu.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if FNN_X86
#include <immintrin.h>
#endif

#define FNN_TR_HIDDEN __attribute__((visibility("hidden")))

/* The register tile: 6 rows x 16 columns = 12 ymm accumulators of the AVX2
 * microkernel, leaving 4 of the 16 ymm registers for the B rows and the
 * broadcast A value.  Rows of every matrix are padded to a multiple of NR. */
#define MR 6
#define NR 16

#define CACHE_LINE 64                /* bytes, on every x86-64 and most ARM cores */

/* The most phases a step has: gather, L forwards, loss, L backwards. */
#define MAX_PHASES (FNN_TR_PROFILE_SLOTS - 1)

struct fnn_trainer {
    int L, batch, rows;
    int fuse_xent;                    /* the loss runs in the last GEMM's epilogue (see
                                       * fnn_trainer_new): no separate loss phase */
    int dims[FNN_TR_MAXL + 1], ld[FNN_TR_MAXL + 1];
    int relu[FNN_TR_MAXL], has_bias[FNN_TR_MAXL];
    float *W[FNN_TR_MAXL], *b[FNN_TR_MAXL];
    float *WT[2][FNN_TR_MAXL];        /* W^T, double-buffered: read by dX while dW
                                       * writes the next */
    float *s1W[FNN_TR_MAXL], *s1b[FNN_TR_MAXL], *s2W[FNN_TR_MAXL], *s2b[FNN_TR_MAXL];
    float *a[FNN_TR_MAXL + 1];        /* activations, rows x ld[l] */
    float *g[FNN_TR_MAXL + 1];        /* dL/da[l], rows x ld[l] (l >= 1) */
    double *rowloss;
    int *rowok;
    int64_t *rowy;                    /* labels of the batch rows */
    int solo_streak, solo_hold;       /* the fallback's back-off, carried from call to call
                                       * (an epoch per call: the load outlasts a call) */
    /* bf16 mode (fnn_trainer_new_prec): the GEMMs read bf16 copies, as uint32 pairs
     * of bf16 along K (what vdpbf16ps multiplies), accumulate in fp32; W, b, the
     * optimizer state, a[], g[] (ReLU masks, bias gradients, the loss) stay fp32.
     *   Wb[l]     W[l] in pairs of rows: pair-row k/2, lane j = (W[k, j], W[k+1, j]),
     *             stride ld[l+1] pairs (forward B)
     *   WTb[s][l] W[l]^T likewise (pairs of columns of W, stride ld[l]; dX B),
     *             double-buffered as WT
     *   ab[l]     a[l] row-major bf16, stride ld[l] (forward A, l < L)
     *   ap[l]     a[l] in pairs of rows, stride ld[l] pairs (dW A, l < L)
     *   gb[l]     g[l] row-major bf16 (dX A, 2 <= l <= L)
     *   gp[l]     g[l] in pairs of rows (dW B, l >= 1)
     * The forward / dX / loss epilogues write them from the fp32 rows, the dW
     * epilogue refreshes Wb / WTb from the updated master weights. */
    int bf16;
    uint32_t *Wb[FNN_TR_MAXL], *WTb[2][FNN_TR_MAXL];
    uint16_t *ab[FNN_TR_MAXL + 1], *gb[FNN_TR_MAXL + 1];
    uint32_t *ap[FNN_TR_MAXL + 1], *gp[FNN_TR_MAXL + 1];
};

/* opt_sc.kind of the gradient-only step (fnn_trainer_grad_step): the "update" of
 * the bias panels stores the gradient (w = g); internal, not an FNN_OPT_* of the API. */
#define FNN_OPT_GRAD 3

/* Per-step optimizer scalars (Adam's bias corrections change every step). */
typedef struct {
    int kind, nesterov;
    float lr, wd, mu, damp1;
    float b1, b2, c1, c2;                            /* Adam: beta, 1 - beta */
    float eps, step_size, bc2_sqrt, decay;           /* decay = 1 - lr*wd for AdamW */
} opt_sc;

/* ------------------------------------------------------- the plan of a run */

typedef struct {               /* tasks of one GEMM: column panels x chunks of row tiles */
    int64_t per, nchunks, ntasks;
} grid_t;

typedef struct {
    int kind, layer;           /* FNN_PHASE_* */
    grid_t gx, gw;             /* FORWARD: gw; BACKWARD: gx (dX, layer > 0) and gw (dW) */
    int pack;                  /* BACKWARD: the dW tasks read per-thread copies of a[l]^T strips */
    int64_t nbias;             /* BACKWARD: bias tasks, after the dX and dW tasks */
    int64_t ntasks, first;     /* the phase's tasks are [first, first + ntasks) of a step */
} phase_t;

typedef struct {
    fnn_trainer *tr;
    const void *x; int x_u8; ptrdiff_t x_ld;
    const int64_t *y, *idx; ptrdiff_t n;
    const fnn_train_opt *opt;
    int avx2, simd, nthreads;       /* simd: fnn_simd_level() at the start of the run */
    phase_t ph[MAX_PHASES]; int nph;
    int64_t per_step;               /* tasks per step (all phases) */
    int64_t row_tasks;              /* tasks of ROWS_PER_TASK rows in a batch (one gather copy) */
    int64_t *claim;                 /* per task of a step: the last step it was claimed in */
    int32_t *mine;                  /* thread t's own tasks of a step:
                                     * mine[mine_at[t]:mine_at[t+1]] */
    int64_t *mine_at;
    float *pack;                    /* per thread: pack_floats for the strips of a[l]^T */
    int64_t *pack_stamp;            /* per thread, per strip: step * FNN_TR_MAXL + layer packed */
    int64_t pack_floats, pack_strips;
    float *a0rep;                   /* NULL, or one copy of a[0] per thread (see trainer.c) */
    int64_t a0rep_stride;
    double loss_sum; int64_t correct, done_steps;
    /* fnn_trainer_grad_step: gradients to gW/gb instead of the update, g[L] scaled
     * by grad_inv_b instead of 1 / rows */
    int grad; float grad_inv_b;
    float *const *gW, *const *gb;
    fnn_grad_signal *sig;           /* NULL, or told when each layer's gradient is done */
} run_t;

/* trainer.c: layer l's gradient of the grad step is done (fnn_grad_signal) */
FNN_TR_HIDDEN void fnn_tr_signal_layer(fnn_grad_signal *sig, int layer);

typedef struct {                /* what a thread knows about the step it is in */
    int64_t s; int bs; ptrdiff_t off; float inv_b; opt_sc o;
    int tid;
} step_ctx;

/* trainer_step.c: the phases of a step (fills R->ph, nph, per_step, row_tasks;
 * reads R->nthreads and R->a0rep), and one task of it.  fnn_tr_run_task sets up c
 * for step s when c->s differs; it returns nonzero when the step's batch loss
 * is not finite (the run stops after step s). */
FNN_TR_HIDDEN void fnn_tr_plan_phases(run_t *R);
FNN_TR_HIDDEN int fnn_tr_run_task(run_t *R, step_ctx *c, int64_t s, const phase_t *ph,
                                  int64_t t);

#endif
