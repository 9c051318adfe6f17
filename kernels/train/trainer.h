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
 * Threads: one OpenMP region per call; threads take the tasks of each phase
 * (runs of tiles, row chunks) from a shared counter, every output element
 * (and every weight update) is computed by exactly one task in a fixed
 * order: results are bitwise identical for any thread count.  On a machine
 * shared with other jobs, a thread that keeps waiting for a partner that
 * lost its core finishes the current chunk of steps (about 0.15 s of work)
 * alone; the next chunk starts with the whole team again (same results).
 */
#ifndef FNN_TRAINER_H
#define FNN_TRAINER_H

#include <stddef.h>
#include <stdint.h>

#define FNN_TR_MAXL 16
#define FNN_TR_PROFILE_SLOTS (2 * FNN_TR_MAXL + 4)

enum { FNN_OPT_SGD = 0, FNN_OPT_ADAM = 1, FNN_OPT_ADAMW = 2 };

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
                              * on one thread because a thread kept losing its core (see
                              * trainer.c) */
    int64_t solo_after;      /* tests: >= 0 makes the thread taking this ticket of each chunk
                              * (counted from the chunk's first ticket) go solo */
    int64_t chunk_steps;     /* steps per chunk (a fallback to one thread lasts until the end
                              * of its chunk); <= 0: automatic, about 0.15 s of work */
} fnn_train_opt;

typedef struct fnn_trainer fnn_trainer;

/* dims[0..nlayers]: widths; relu[l]: ReLU after layer l; has_bias[l]. */
fnn_trainer *fnn_trainer_new(int nlayers, const int *dims, const int *relu, const int *has_bias,
                             int batch);
void fnn_trainer_free(fnn_trainer *tr);

/* Runs the batches idx[0:n] in chunks of the trainer's batch size (the last
 * one partial).  W[l] (dims[l] x dims[l+1], row-major), b[l] (or NULL) and
 * the optimizer state arrays of the same shapes (s1: momentum / Adam m,
 * s2: Adam v; NULL when unused) are read at the start and written back at
 * the end.  x: n_rows x x_ld, uint8 (x_u8) or float.  y[0:n]: the labels
 * of the rows idx[0:n], in that order, in [0, dims[L]).  Fills loss_sum and correct; returns the number of steps
 * whose batch loss was finite.  A non-finite batch loss ends the run after
 * that step (the caller reports divergence at step = the returned count).
 * Returns -1, with nothing read or written, when the scheduler's few
 * bytes per task cannot be allocated. */
int64_t fnn_trainer_run(fnn_trainer *tr,
                        float *const *W, float *const *b,
                        float *const *s1W, float *const *s1b,
                        float *const *s2W, float *const *s2b,
                        const void *x, int x_u8, ptrdiff_t x_ld,
                        const int64_t *y, const int64_t *idx, ptrdiff_t n,
                        const fnn_train_opt *opt, int nthreads,
                        double *loss_sum, int64_t *correct);

/* dst = src * float32(1/255), the scaling of uint8 pixels (exposed for tests). */
void fnn_trainer_u8_to_f32(const uint8_t *src, float *dst, ptrdiff_t n);

#endif
