/* The fused native training step: a whole epoch of an MLP in one call.
 *
 * Model: L Dense layers  a[l+1] = act_l(a[l] @ W[l] + b[l]),  act_l = ReLU or
 * identity, the last layer gives logits; loss = mean over the batch of the
 * softmax cross-entropy.  Per step (batch = perm[s : s + B]):
 *
 *   gather   a[0][r, :] = x[perm[s + r], :] (uint8 pixels * float32(1/255), or float copy)
 *   forward  a[l+1] = act(a[l] W[l] + b[l])                       (bias/ReLU in the tile epilogue)
 *   loss     g[L] = (softmax(a[L]) - onehot(y)) / B,  loss_sum += -log p[y], correct += argmax == y
 *   backward g[l] = (g[l+1] W[l]^T) * (a[l] > 0)                  (mask in the tile epilogue)
 *            dW[l] = a[l]^T g[l+1],  db[l] = sum_rows g[l+1]     (never stored: the optimizer
 *            update of each W tile runs in the epilogue of the tile that computed its gradient)
 *
 * Optimizers, in PyTorch's semantics (state zero-initialised, which equals
 * PyTorch's "first step copies the gradient" when dampening == 0):
 *   SGD:   g += wd*w;  v = mu*v + (1-damp)*g;  g = nesterov ? g + mu*v : v;  w -= lr*g
 *   Adam:  g += wd*w (Adam) or w *= 1 - lr*wd (AdamW);  m = b1 m + (1-b1) g;
 *          v = b2 v + (1-b2) g^2;  w -= lr * (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps)
 *
 * Layout: the trainer keeps working copies of W, W^T and b with rows padded
 * to a multiple of 16 floats (plus 16 when the stride would be a multiple of
 * 256 bytes, which maps every row to the same few L1 sets).  Padding stays
 * zero, so every GEMM tile is a full 6 x 16 tile in the N direction.
 *
 * Threads: one OpenMP region per call, no barriers (trainer_sched.h).  Each
 * phase of a step (gather, forward per layer, loss when not fused, backward per
 * layer) is a fixed list of tasks (runs of tiles of one column panel, chunks
 * of rows, groups of bias panels), column-panel major; a task may start once
 * every task of the earlier phases is done (one atomic count).  Thread t owns
 * a fixed contiguous run of every phase's tasks, the same column panels in
 * every step, so the weights it updates stay in its core's cache.  A thread
 * with nothing of its own ready steals unclaimed tasks of the phase in
 * progress: a claim is a compare-and-swap of the task's step slot.  Every
 * output element (and every weight update) is computed by exactly one task,
 * the same way whoever runs it: results are bitwise identical for any thread
 * count.  On a machine shared with other jobs, a thread that keeps waiting
 * for a partner that lost its core finishes the current chunk of steps
 * (about 0.15 s of work) alone while the others sleep; the next chunk starts
 * with the whole team again unless chunks in a row went solo, which holds
 * the next 2^(k-1) - 1 chunks (at most 15) solo before the team retries
 * (same results either way).
 *
 * Code: trainer.c (this API), trainer_step.c (phases and tasks),
 * trainer_sched.c (threads), trainer_gemm.c (microkernels, tiles),
 * trainer_epilogue.h/.c (epilogues, optimizer); see trainer_impl.h.
 */
#ifndef FNN_TRAINER_H
#define FNN_TRAINER_H

#include <stddef.h>
#include <stdint.h>

#define FNN_TR_MAXL 16                          /* most Dense layers of a trainer */
/* profile slots: one per phase (at most 2 * FNN_TR_MAXL + 2 phases, see
 * fnn_trainer_phases), a spare, and last the time threads waited */
#define FNN_TR_PROFILE_SLOTS (2 * FNN_TR_MAXL + 4)

enum { FNN_OPT_SGD = 0, FNN_OPT_ADAM = 1, FNN_OPT_ADAMW = 2 };

/* The kinds of phases of a step (fnn_trainer_phases). */
enum { FNN_PHASE_GATHER = 0, FNN_PHASE_FORWARD = 1, FNN_PHASE_LOSS = 2, FNN_PHASE_BACKWARD = 3 };

typedef struct {
    int kind;                /* FNN_OPT_* */
    float lr, weight_decay;
    float momentum, dampening; int nesterov;     /* SGD */
    double beta1, beta2;     /* Adam, in double: 1 - beta and the bias corrections are
                              * formed from them as the optim kernels do (1 - 0.999f in
                              * float32 is 1.3e-5 off 0.001) */
    float eps; int64_t step; /* Adam: step = updates done before this call */
    const float *lrs;        /* NULL, or one learning rate per step of the call (a schedule) */
    double *profile;         /* NULL, or FNN_TR_PROFILE_SLOTS doubles: CPU seconds per phase
                              * of a step (summed over threads), the last slot the time
                              * threads waited for an earlier phase to finish */
    int *solo_out;           /* NULL, or set to the number of chunks of steps that finished
                              * on one thread because a thread kept losing its core
                              * (see trainer_sched.c) */
    int64_t solo_after;      /* tests: >= 0 makes the thread taking this ticket of each chunk
                              * (a task's place in the call, step * tasks per step + index,
                              * counted from the chunk's first ticket) go solo */
    int64_t chunk_steps;     /* steps per chunk (a fallback to one thread lasts until the end
                              * of its chunk); <= 0: automatic, about 0.15 s of work */
    int64_t fail_alloc_at;   /* tests: > 0 makes the run's fail_alloc_at-th allocation (from
                              * 1) fail, as if memory ran out; 0: none */
} fnn_train_opt;

typedef struct fnn_trainer fnn_trainer;

/* dims[0..nlayers]: widths; relu[l]: ReLU after layer l; has_bias[l]. */
fnn_trainer *fnn_trainer_new(int nlayers, const int *dims, const int *relu, const int *has_bias,
                             int batch);
/* tests: fnn_trainer_new with its fail_alloc_at-th allocation (from 1) refused */
fnn_trainer *fnn_trainer_new_failing(int nlayers, const int *dims, const int *relu,
                                     const int *has_bias, int batch, int64_t fail_alloc_at);
/* bf16 != 0: the bf16 mixed-precision trainer.  Every GEMM of a step (forward,
 * dX, dW) reads bf16 copies of its two inputs (rounded to nearest even once,
 * when written: activations and gradients by the epilogue of the tile or the
 * gather that produced them, the weights by the optimizer's update epilogue) and
 * accumulates in fp32 (vdpbf16ps with AVX512_BF16, emulated below it: see
 * trainer_gemm_bf16.h).  The master weights, biases, optimizer state, bias
 * add, ReLU and its mask, softmax, loss and bias gradients stay fp32: the spec
 * is fastnn._fused.reference_run(precision="bf16").  fail_alloc_at as above. */
fnn_trainer *fnn_trainer_new_prec(int nlayers, const int *dims, const int *relu,
                                  const int *has_bias, int batch, int bf16,
                                  int64_t fail_alloc_at);
/* 1 for a bf16 trainer, 0 for fp32. */
int fnn_trainer_is_bf16(const fnn_trainer *tr);
void fnn_trainer_free(fnn_trainer *tr);

/* The phases of a step, in the order they run and fill the profile's slots:
 * kind[i] (FNN_PHASE_*) and layer[i] (-1 for the gather and the loss), both
 * arrays of at least FNN_TR_PROFILE_SLOTS entries; returns the count.  The
 * loss is a phase of its own only when the logits are wider than one 16-float
 * column panel; otherwise it runs in the last forward's tile epilogue. */
int fnn_trainer_phases(const fnn_trainer *tr, int *kind, int *layer);

/* Runs the batches idx[0:n] in chunks of the trainer's batch size (the last
 * one partial).  W[l] (dims[l] x dims[l+1], row-major), b[l] (or NULL) and
 * the optimizer state arrays of the same shapes (s1: momentum / Adam m,
 * s2: Adam v; NULL when unused) are read at the start and written back at
 * the end.  x: n_rows x x_ld, uint8 (x_u8) or float.  y[0:n]: the labels
 * of the rows idx[0:n], in that order, in [0, dims[L]).  Fills loss_sum and
 * correct; returns the number of steps whose batch loss was finite.  A
 * non-finite batch loss ends the run after that step (the caller reports
 * divergence at step = the returned count).
 * Returns -1, with none of the caller's arrays read or written and nothing
 * left allocated, when a buffer the run needs cannot be allocated (the
 * scheduler's few bytes per task; the per-thread copies of a[0] and of a^T
 * strips are optional and only speed the run up). */
int64_t fnn_trainer_run(fnn_trainer *tr,
                        float *const *W, float *const *b,
                        float *const *s1W, float *const *s1b,
                        float *const *s2W, float *const *s2b,
                        const void *x, int x_u8, ptrdiff_t x_ld,
                        const int64_t *y, const int64_t *idx, ptrdiff_t n,
                        const fnn_train_opt *opt, int nthreads,
                        double *loss_sum, int64_t *correct);

/* One step's gradient without the update, for data-parallel training (the
 * gradients of the ranks are summed before an update that every rank applies,
 * fastnn/distributed.py).  The same forward, loss and backward as a step of
 * fnn_trainer_run on the rows idx[0:n] (n <= the trainer's batch), with
 *   g[L] = (softmax(a[L]) - onehot(y)) * inv_b     (inv_b = 1/B of the GLOBAL batch B,
 *                                                    so the ranks' sum is its mean gradient)
 * and dW[l] = a[l]^T g[l+1], db[l] = sum_rows g[l+1] written to gW[l] (dims[l] x
 * dims[l+1], dense row-major) and gb[l] (or NULL) instead of consumed by an
 * update: the same tiles, so the same bits as the gradient the fused step
 * applies when inv_b = 1.0f / n.  W and b are only read.  Fills loss_sum
 * (the rows' sum of -log p[y]) and correct; returns 1 when the loss is
 * finite, 0 when not, -1 when the run's buffers cannot be allocated (the
 * outputs are then untouched). */
int64_t fnn_trainer_grad_step(fnn_trainer *tr, float *const *W, float *const *b,
                              float *const *gW, float *const *gb,
                              const void *x, int x_u8, ptrdiff_t x_ld,
                              const int64_t *y, const int64_t *idx, ptrdiff_t n, float inv_b,
                              int nthreads, double *loss_sum, int64_t *correct);

/* Per-layer completion of a gradient step, for overlapping the gradient
 * allreduce with the rest of the backward pass (fastnn/distributed.py): the
 * backward runs last layer first, and layer l's gW[l] / gb[l] are final as soon
 * as its backward phase's last task is done, while the earlier layers' phases
 * still run.  fnn_trainer_grad_step_sig publishes that moment: the thread whose
 * task completes layer l's phase raises sig's count of finished layers (from the
 * top: L - l) under its mutex and wakes the waiters; another thread (the
 * reduction thread) blocks in fnn_grad_signal_wait until the layers it needs are
 * done, then reads them.  Nothing about the step's results changes.
 *   reset   before a step: no layer done (not while a step with sig runs)
 *   finish  after the step (fnn_trainer_grad_step_sig calls it; callers that skip
 *           the native step, e.g. for an empty slice, call it themselves): every
 *           waiter returns, with ok == 0 as a failure
 *   wait    until layers [layer, L) are done: 1; the step ended failed: 0;
 *           timeout_s (> 0) passed first: -1 */
typedef struct fnn_grad_signal fnn_grad_signal;
fnn_grad_signal *fnn_grad_signal_new(void);
void fnn_grad_signal_free(fnn_grad_signal *sig);
void fnn_grad_signal_reset(fnn_grad_signal *sig, int nlayers);
void fnn_grad_signal_finish(fnn_grad_signal *sig, int ok);
int fnn_grad_signal_wait(fnn_grad_signal *sig, int layer, double timeout_s);
/* tests: the order in which the layers were published since the last reset
 * (layer indices into order[0:FNN_TR_MAXL]); returns their count. */
int fnn_grad_signal_order(fnn_grad_signal *sig, int *order);

/* fnn_trainer_grad_step, publishing each layer's completion to sig (or none when
 * NULL) and calling fnn_grad_signal_finish(sig, ok) at the end. */
int64_t fnn_trainer_grad_step_sig(fnn_trainer *tr, float *const *W, float *const *b,
                                  float *const *gW, float *const *gb,
                                  const void *x, int x_u8, ptrdiff_t x_ld,
                                  const int64_t *y, const int64_t *idx, ptrdiff_t n,
                                  float inv_b, int nthreads, fnn_grad_signal *sig,
                                  double *loss_sum, int64_t *correct);

/* W == NULL in fnn_trainer_grad_step: the trainer's own copies of W, b (and W^T),
 * as the last fnn_trainer_grad_apply left them, are read: no copy per step.  The
 * apply: W, b, s1*, s2* (the model's and the optimizer's, dense; s* NULL where
 * the rule keeps none) updated from the summed gradients gW, gb by the fused
 * step's rule with opt (opt->step: updates so far; opt->lrs, when set, its lr), and the
 * trainer's copies written from the updated rows. */
void fnn_trainer_grad_apply(fnn_trainer *tr, float *const *W, float *const *b,
                            float *const *s1W, float *const *s1b,
                            float *const *s2W, float *const *s2b,
                            const float *const *gW, const float *const *gb,
                            const fnn_train_opt *opt, int nthreads);

/* fnn_trainer_grad_apply from the sum of nsrc gradients: source k's gW[l], gb[l] at
 * gW[l] + k * src_stride, gb[l] + k * src_stride (floats), added in source order
 * (((g0 + g1) + g2) ...) row block by row block as the update reads them, never
 * written out (the ranks' slots of a shared-memory exchange).  nsrc == 1: the
 * plain apply; bitwise the plain apply of the summed gradient. */
void fnn_trainer_grad_apply_sum(fnn_trainer *tr, float *const *W, float *const *b,
                                float *const *s1W, float *const *s1b,
                                float *const *s2W, float *const *s2b,
                                const float *const *gW, const float *const *gb,
                                int nsrc, ptrdiff_t src_stride,
                                const fnn_train_opt *opt, int nthreads);

/* dst = src * float32(1/255), the scaling of uint8 pixels (exposed for tests). */
void fnn_trainer_u8_to_f32(const uint8_t *src, float *dst, ptrdiff_t n);

/* tests: the trainers' blocks allocated now and allocation attempts so far,
 * over every trainer of the process (fnn_trainer_new and fnn_trainer_run). */
void fnn_trainer_alloc_stats(int64_t *live, int64_t *calls);

#endif
