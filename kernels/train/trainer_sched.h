/* The fused trainer's scheduler (trainer_sched.c): runs the tasks of every step of a
 * call on the OpenMP team, without barriers, in a fixed assignment with
 * work stealing, and falls back to one thread for a chunk of steps when the
 * team keeps waiting for a thread that lost its core.
 *
 * Tasks: a step is a fixed sequence of phases (trainer_step.c: gather, forward per
 * layer, loss when not fused, backward per layer); each phase is a fixed
 * list of independent tasks (runs of GEMM tiles of one column panel, chunks
 * of rows, groups of bias panels), column-panel major.  A task of phase p of
 * step s may start once every task of the earlier phases (and steps) is done,
 * which one atomic counter (`done`) tells.
 *
 * Owners: each phase's tasks (a backward phase's dX, dW and bias ranges
 * separately) are cut into nthreads contiguous runs, and thread t runs run t
 * in every step: a thread keeps the same column panels of each layer, so the
 * weight columns it updates in dW are the ones it reads in the next forward
 * and they stay in its core's cache.
 *
 * Stealing: a thread with no ready task of its own takes any unclaimed task
 * of the phase in progress, so a thread the OS deschedules only delays the
 * task it holds.  A claim is one compare-and-swap of the task's step slot
 * from s - 1 to s; whoever wins runs the task.
 *
 * Solo fallback: the steps run in chunks of about 0.15 s of work.  A thread
 * whose long waits in the current chunk add up to a large share of it carries
 * on alone to the chunk's end while the others sleep; the next chunk starts
 * with the whole team, unless chunks in a row went solo: then the next
 * 2^(k-1) - 1 chunks (at most 15) stay solo before the team retries (the
 * back-off, kept in the trainer from call to call).
 *
 * No task's result depends on which thread runs it, so the results are
 * bitwise identical for every thread count, steal and fallback. */
#ifndef FNN_TR_SCHED_H
#define FNN_TR_SCHED_H

#include "trainer_impl.h"

/* The tasks of a GEMM of M x N outputs over K: column panels of NR times
 * chunks of row tiles, sized against the scheduler's cost per task. */
FNN_TR_HIDDEN grid_t fnn_tr_grid(int64_t M, int64_t N, int64_t K, int nthreads);

/* Fills R->mine / R->mine_at (allocated by the caller: per_step and
 * nthreads + 1 entries): thread t's own tasks of a step, in step order. */
FNN_TR_HIDDEN void fnn_tr_assign_owners(run_t *R);

/* Runs every step of R (R->n > 0; R->claim holds per_step slots set to -1)
 * on R->nthreads threads; updates the trainer's back-off and opt->solo_out. */
FNN_TR_HIDDEN void fnn_tr_sched_run(run_t *R);

#endif
