# The fused native training loop (trainer.c and the other .c files of this
# folder, see trainer_impl.h) does not call the GEMM engine:
# its 6x16 tile kernel reads operands in place with the epilogues (optimizer,
# softmax cross-entropy) that the engine's API cannot express.
# The fused native training loop: an epoch of Dense/ReLU layers,
# softmax cross-entropy and the optimizer update in one call.  Arrays arrive
# validated by fastnn/_fused.py (dtype, contiguity, label range, index range);
# this wrapper only collects pointers.
cimport numpy as cnp
import numpy as np
from libc.stdint cimport int64_t, uint8_t
from libc.string cimport memset

include "simd_api.pxi"

cnp.import_array()

cdef extern from "trainer.h" nogil:
    enum: FNN_TR_MAXL           # enum: usable as a C array size below
    enum: FNN_TR_PROFILE_SLOTS
    int FNN_OPT_SGD
    int FNN_OPT_ADAM
    int FNN_OPT_ADAMW
    int FNN_PHASE_GATHER
    int FNN_PHASE_FORWARD
    int FNN_PHASE_LOSS
    int FNN_PHASE_BACKWARD
    ctypedef struct fnn_train_opt:
        int kind
        float lr, weight_decay
        float momentum, dampening
        int nesterov
        double beta1, beta2
        float eps
        int64_t step
        const float *lrs
        double *profile
        int *solo_out
        int64_t solo_after
        int64_t chunk_steps
        int64_t fail_alloc_at
    ctypedef struct fnn_trainer:
        pass
    fnn_trainer *fnn_trainer_new_failing(int nlayers, const int *dims, const int *relu,
                                         const int *has_bias, int batch, int64_t fail_alloc_at)
    fnn_trainer *fnn_trainer_new_prec(int nlayers, const int *dims, const int *relu,
                                      const int *has_bias, int batch, int bf16,
                                      int64_t fail_alloc_at)
    void fnn_trainer_free(fnn_trainer *tr)
    int fnn_trainer_phases(const fnn_trainer *tr, int *kind, int *layer)
    int64_t fnn_trainer_run(fnn_trainer *tr, float **W, float **b,
                            float **s1W, float **s1b, float **s2W, float **s2b,
                            const void *x, int x_u8, Py_ssize_t x_ld,
                            const int64_t *y, const int64_t *idx, Py_ssize_t n,
                            const fnn_train_opt *opt, int nthreads,
                            double *loss_sum, int64_t *correct)
    int64_t fnn_trainer_grad_step(fnn_trainer *tr, float **W, float **b,
                                  float **gW, float **gb,
                                  const void *x, int x_u8, Py_ssize_t x_ld,
                                  const int64_t *y, const int64_t *idx, Py_ssize_t n,
                                  float inv_b, int nthreads, double *loss_sum, int64_t *correct)
    void fnn_trainer_grad_apply(fnn_trainer *tr, float **W, float **b,
                                float **s1W, float **s1b, float **s2W, float **s2b,
                                const float **gW, const float **gb,
                                const fnn_train_opt *opt, int nthreads)
    ctypedef struct fnn_grad_signal:
        pass
    fnn_grad_signal *fnn_grad_signal_new()
    void fnn_grad_signal_free(fnn_grad_signal *sig)
    void fnn_grad_signal_reset(fnn_grad_signal *sig, int nlayers)
    void fnn_grad_signal_finish(fnn_grad_signal *sig, int ok)
    int fnn_grad_signal_wait(fnn_grad_signal *sig, int layer, double timeout_s)
    int fnn_grad_signal_order(fnn_grad_signal *sig, int *order)
    int64_t fnn_trainer_grad_step_sig(fnn_trainer *tr, float **W, float **b,
                                      float **gW, float **gb,
                                      const void *x, int x_u8, Py_ssize_t x_ld,
                                      const int64_t *y, const int64_t *idx, Py_ssize_t n,
                                      float inv_b, int nthreads, fnn_grad_signal *sig,
                                      double *loss_sum, int64_t *correct)
    void fnn_trainer_grad_apply_sum(fnn_trainer *tr, float **W, float **b,
                                    float **s1W, float **s1b, float **s2W, float **s2b,
                                    const float **gW, const float **gb,
                                    int nsrc, Py_ssize_t src_stride,
                                    const fnn_train_opt *opt, int nthreads)
    void fnn_trainer_u8_to_f32(const uint8_t *src, float *dst, Py_ssize_t n)
    void fnn_trainer_alloc_stats(int64_t *live, int64_t *calls)

MAX_LAYERS = FNN_TR_MAXL
PROFILE_SLOTS = FNN_TR_PROFILE_SLOTS
OPT_KINDS = {"sgd": FNN_OPT_SGD, "adam": FNN_OPT_ADAM, "adamw": FNN_OPT_ADAMW}
# the precisions a Trainer runs (fastnn.fusion.check reads this): "bf16" is mixed
# precision, bf16 GEMM inputs with fp32 sums, everything else fp32 (trainer.h)
PRECISIONS = ("fp32", "bf16")


cdef float *_fptr(a) except? NULL:
    if a is None:
        return NULL
    return <float *> cnp.PyArray_DATA(<cnp.ndarray> a)


def u8_to_f32(cnp.ndarray src, cnp.ndarray dst):
    """dst = src / 255 (float32), the scalar conversion the trainer uses."""
    fnn_trainer_u8_to_f32(<const uint8_t *> cnp.PyArray_DATA(src),
                          <float *> cnp.PyArray_DATA(dst), src.size)


def _alloc_stats():
    """Tests: (blocks the trainers hold now, allocation attempts so far), over
    every trainer of the process."""
    cdef int64_t live = 0, calls = 0
    fnn_trainer_alloc_stats(&live, &calls)
    return int(live), int(calls)


cdef fnn_train_opt _train_opt(str kind, float lr, float weight_decay, float momentum,
                              float dampening, bint nesterov, double beta1, double beta2,
                              float eps, int64_t step) except *:
    """The optimizer fields of fnn_train_opt (trainer.h); every other field zero/NULL."""
    cdef fnn_train_opt opt
    memset(&opt, 0, sizeof(opt))
    opt.kind = OPT_KINDS[kind]
    opt.lr = lr
    opt.weight_decay = weight_decay
    opt.momentum = momentum
    opt.dampening = dampening
    opt.nesterov = nesterov
    opt.beta1 = beta1
    opt.beta2 = beta2
    opt.eps = eps
    opt.step = step
    return opt


cdef class GradSignal:
    """Per-layer completion of a ``Trainer.grad_step(..., signal=sig)`` (fnn_grad_signal,
    trainer.h): the backward pass finishes layer L-1's gradient first, layer 0's last;
    ``wait(l)`` blocks (without the GIL, asleep) until the gradients of layers l..L-1
    are written, so that another thread can start reducing them while the step
    computes the earlier layers'.

    ``reset(L)`` before each step (no step with this signal may be running);
    ``wait(layer, timeout=0)``: True when layers ``layer..L-1`` are done, False when
    the step ended in failure first; raises TimeoutError past ``timeout`` seconds
    (> 0; 0 waits for ever).  ``finish(ok)``: end the step by hand (a step that
    never reached the native code); ``order()``: the layers published since the
    reset, in order (tests)."""
    cdef fnn_grad_signal *sig
    cdef readonly int nlayers

    def __cinit__(self):
        self.sig = fnn_grad_signal_new()
        if self.sig == NULL:
            raise MemoryError("could not allocate a GradSignal")
        self.nlayers = 0

    def __dealloc__(self):
        fnn_grad_signal_free(self.sig)

    def reset(self, int nlayers):
        if nlayers < 1 or nlayers > FNN_TR_MAXL:
            raise ValueError(f"GradSignal.reset: nlayers must be in 1..{FNN_TR_MAXL}, "
                             f"got {nlayers}")
        self.nlayers = nlayers
        fnn_grad_signal_reset(self.sig, nlayers)

    def finish(self, bint ok=True):
        fnn_grad_signal_finish(self.sig, 1 if ok else 0)

    def wait(self, int layer, double timeout=0.0):
        if self.nlayers == 0:
            raise RuntimeError("GradSignal.wait before reset()")
        if layer < 0 or layer >= self.nlayers:
            raise ValueError(f"GradSignal.wait: layer must be in 0..{self.nlayers - 1}, "
                             f"got {layer}")
        if not timeout >= 0:
            raise ValueError(f"GradSignal.wait: timeout must be >= 0, got {timeout}")
        cdef int r
        with nogil:
            r = fnn_grad_signal_wait(self.sig, layer, timeout)
        if r < 0:
            raise TimeoutError(f"GradSignal.wait: layer {layer}'s gradient not done within "
                               f"{timeout:g} s")
        return r == 1

    def order(self):
        cdef int order[FNN_TR_MAXL]
        cdef int n = fnn_grad_signal_order(self.sig, order)
        return [int(order[i]) for i in range(n)]


cdef class Trainer:
    """Workspace of the fused loop for one (architecture, batch size).

    ``Trainer(dims, relu, has_bias, batch, precision="fp32")``: ``dims`` the L+1
    layer widths, ``relu[l]`` / ``has_bias[l]`` per Dense layer, ``precision`` one
    of ``PRECISIONS`` ("bf16": the GEMMs read bf16 copies of their inputs and sum
    in fp32; see trainer.h).  Everything a step needs is allocated here, once.
    ``_fail_alloc_at`` (tests): refuse that allocation (from 1), as if memory ran
    out."""
    cdef fnn_trainer *tr
    cdef int nlayers
    cdef readonly int batch
    cdef readonly tuple dims
    cdef readonly str precision

    def __cinit__(self, dims, relu, has_bias, int batch, str precision="fp32",
                  int64_t _fail_alloc_at=0):
        cdef int L = len(dims) - 1
        cdef int cdims[FNN_TR_MAXL + 1]
        cdef int crelu[FNN_TR_MAXL]
        cdef int cbias[FNN_TR_MAXL]
        if L < 1 or L > FNN_TR_MAXL:
            raise ValueError(f"the fused trainer takes 1..{FNN_TR_MAXL} layers, got {L}")
        for i in range(L + 1):
            cdims[i] = dims[i]
        for i in range(L):
            crelu[i] = 1 if relu[i] else 0
            cbias[i] = 1 if has_bias[i] else 0
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.tr = fnn_trainer_new_prec(L, cdims, crelu, cbias, batch,
                                       1 if precision == "bf16" else 0, _fail_alloc_at)
        if self.tr == NULL:
            raise MemoryError("could not allocate the fused trainer's workspace")
        self.nlayers = L
        self.batch = batch
        self.dims = tuple(int(d) for d in dims)
        self.precision = precision

    def phase_names(self):
        """Names of a step's phases in the order they run (the profile's slots),
        as the trainer plans them (fnn_trainer_phases)."""
        cdef int kind[FNN_TR_PROFILE_SLOTS]
        cdef int layer[FNN_TR_PROFILE_SLOTS]
        cdef int n = fnn_trainer_phases(self.tr, kind, layer)
        names = []
        for i in range(n):
            if kind[i] == FNN_PHASE_GATHER:
                names.append("gather")
            elif kind[i] == FNN_PHASE_FORWARD:
                names.append(f"forward{layer[i]}")
            elif kind[i] == FNN_PHASE_LOSS:
                names.append("loss")
            else:
                names.append(f"backward{layer[i]}")
        return names

    def __dealloc__(self):
        fnn_trainer_free(self.tr)

    def run(self, W, b, s1W, s1b, s2W, s2b, cnp.ndarray x, bint x_u8, Py_ssize_t x_ld,
            cnp.ndarray y, cnp.ndarray idx, str kind, float lr, float weight_decay=0.0,
            float momentum=0.0, float dampening=0.0, bint nesterov=False,
            double beta1=0.9, double beta2=0.999, float eps=1e-8, int64_t step=0,
            int nthreads=1, lrs=None, profile=None, int64_t _solo_after=-1,
            int64_t _chunk_steps=0, int64_t _fail_alloc_at=0):
        """Train on the rows idx (int64) of x; see trainer.h.  ``lrs``: None or
        a float32 array with one learning rate per step (replaces ``lr``).
        ``profile``: None or a float64 array of PROFILE_SLOTS, to which the
        task seconds per phase (``phase_names()`` order) and the wait time
        (last slot) are added.
        Returns (loss_sum, correct, steps, solo): solo is the number of chunks
        of steps (about 0.15 s of work each, or ``_chunk_steps`` steps) that
        finished on one thread because its partner kept losing its core.
        ``_solo_after`` (tests): the thread taking this ticket of each chunk
        goes solo.  ``_fail_alloc_at`` (tests): the run's allocation with this
        number (from 1) fails, as if memory ran out.
        Raises MemoryError when a buffer the run needs cannot be allocated
        (the arrays are then untouched)."""
        cdef float *pW[FNN_TR_MAXL]
        cdef float *pb[FNN_TR_MAXL]
        cdef float *ps1W[FNN_TR_MAXL]
        cdef float *ps1b[FNN_TR_MAXL]
        cdef float *ps2W[FNN_TR_MAXL]
        cdef float *ps2b[FNN_TR_MAXL]
        cdef int L = self.nlayers
        for l in range(L):
            pW[l] = _fptr(W[l])
            pb[l] = _fptr(b[l])
            ps1W[l] = _fptr(s1W[l])
            ps1b[l] = _fptr(s1b[l])
            ps2W[l] = _fptr(s2W[l])
            ps2b[l] = _fptr(s2b[l])
        cdef fnn_train_opt opt = _train_opt(kind, lr, weight_decay, momentum, dampening,
                                            nesterov, beta1, beta2, eps, step)
        opt.lrs = <const float *> _fptr(lrs)
        opt.profile = NULL
        cdef int solo = 0
        opt.solo_out = &solo
        opt.solo_after = _solo_after
        opt.chunk_steps = _chunk_steps
        opt.fail_alloc_at = _fail_alloc_at
        if profile is not None:
            if profile.dtype != np.float64 or profile.shape != (FNN_TR_PROFILE_SLOTS,):
                raise ValueError(f"profile must be float64 of shape ({FNN_TR_PROFILE_SLOTS},)")
            opt.profile = <double *> cnp.PyArray_DATA(<cnp.ndarray> profile)
        cdef double loss_sum = 0.0
        cdef int64_t correct = 0, steps = 0
        cdef const void *px = cnp.PyArray_DATA(x)
        cdef const int64_t *py = <const int64_t *> cnp.PyArray_DATA(y)
        cdef const int64_t *pidx = <const int64_t *> cnp.PyArray_DATA(idx)
        cdef Py_ssize_t n = idx.shape[0]
        with nogil:
            steps = fnn_trainer_run(self.tr, pW, pb, ps1W, ps1b, ps2W, ps2b,
                                    px, x_u8, x_ld, py, pidx, n, &opt, nthreads,
                                    &loss_sum, &correct)
        if steps < 0:
            raise MemoryError("the fused trainer could not allocate its run's buffers")
        return loss_sum, int(correct), int(steps), int(solo)

    def grad_step(self, W, b, gW, gb, cnp.ndarray x, bint x_u8, Py_ssize_t x_ld,
                  cnp.ndarray y, cnp.ndarray idx, float inv_b, int nthreads=1,
                  GradSignal signal=None):
        """One step's gradients without the update (fnn_trainer_grad_step, trainer.h):
        dW/db of the rows idx (at most ``batch``) into gW[l] / gb[l], with the loss
        gradient scaled by ``inv_b`` (1/B of the global batch).  W, b are read only;
        ``W=None`` (b then ignored): the trainer's own copies as the last
        ``grad_apply`` left them (no copy).  ``signal``: a ``GradSignal`` told as each
        layer's gradient is done and finished when the step returns (also on an
        error); reset it first.  Returns (loss_sum, correct, finite).
        Raises MemoryError when the step's buffers cannot be allocated."""
        cdef float *pW[FNN_TR_MAXL]
        cdef float *pb[FNN_TR_MAXL]
        cdef float *pgW[FNN_TR_MAXL]
        cdef float *pgb[FNN_TR_MAXL]
        cdef int L = self.nlayers
        cdef bint resident = W is None
        for l in range(L):
            pW[l] = NULL if resident else _fptr(W[l])
            pb[l] = NULL if resident else _fptr(b[l])
            pgW[l] = _fptr(gW[l])
            pgb[l] = _fptr(gb[l])
        cdef double loss_sum = 0.0
        cdef int64_t correct = 0, ok = 0
        cdef const void *px = cnp.PyArray_DATA(x)
        cdef const int64_t *py = <const int64_t *> cnp.PyArray_DATA(y)
        cdef const int64_t *pidx = <const int64_t *> cnp.PyArray_DATA(idx)
        cdef Py_ssize_t n = idx.shape[0]
        cdef fnn_grad_signal *psig = NULL
        if signal is not None:
            if signal.nlayers != L:
                signal.finish(False)
                raise ValueError(f"grad_step: the signal was reset for {signal.nlayers} "
                                 f"layers, the trainer has {L}")
            psig = signal.sig
        if n > self.batch:
            if signal is not None:
                signal.finish(False)
            raise ValueError(f"grad_step: {n} rows, more than the trainer's batch {self.batch}")
        with nogil:
            ok = fnn_trainer_grad_step_sig(self.tr, NULL if resident else pW, pb, pgW, pgb, px,
                                           x_u8, x_ld, py, pidx, n, inv_b, nthreads, psig,
                                           &loss_sum, &correct)
        if ok < 0:
            raise MemoryError("the fused trainer could not allocate the step's buffers")
        return loss_sum, int(correct), bool(ok > 0 or n == 0)

    def grad_apply(self, W, b, s1W, s1b, s2W, s2b, gW, gb, str kind, float lr,
                   float weight_decay=0.0, float momentum=0.0, float dampening=0.0,
                   bint nesterov=False, double beta1=0.9, double beta2=0.999, float eps=1e-8,
                   int64_t step=0, int nthreads=1, int nsrc=1, Py_ssize_t src_stride=0):
        """The update of a data-parallel step (fnn_trainer_grad_apply, trainer.h): W, b
        and the optimizer state s1*/s2* (per-layer arrays or None, dense) updated in
        place from the summed gradients gW, gb by the fused step's rule (``step``:
        updates so far), and the trainer's own copies written from them, for the
        next ``grad_step(None, ...)``.  ``nsrc`` > 1: the gradient is the sum, in
        source order, of nsrc buffers, source k's at gW[l] / gb[l] + k * src_stride
        floats (fnn_trainer_grad_apply_sum; the caller checks the extent)."""
        cdef float *pW[FNN_TR_MAXL]
        cdef float *pb[FNN_TR_MAXL]
        cdef float *ps1W[FNN_TR_MAXL]
        cdef float *ps1b[FNN_TR_MAXL]
        cdef float *ps2W[FNN_TR_MAXL]
        cdef float *ps2b[FNN_TR_MAXL]
        cdef const float *pgW[FNN_TR_MAXL]
        cdef const float *pgb[FNN_TR_MAXL]
        cdef int L = self.nlayers
        for l in range(L):
            pW[l] = _fptr(W[l])
            pb[l] = _fptr(b[l])
            ps1W[l] = _fptr(s1W[l])
            ps1b[l] = _fptr(s1b[l])
            ps2W[l] = _fptr(s2W[l])
            ps2b[l] = _fptr(s2b[l])
            pgW[l] = _fptr(gW[l])
            pgb[l] = _fptr(gb[l])
        cdef fnn_train_opt opt = _train_opt(kind, lr, weight_decay, momentum, dampening,
                                            nesterov, beta1, beta2, eps, step)
        opt.solo_after = -1
        if nsrc < 1:
            raise ValueError(f"grad_apply: nsrc must be >= 1, got {nsrc}")
        with nogil:
            fnn_trainer_grad_apply_sum(self.tr, pW, pb, ps1W, ps1b, ps2W, ps2b, pgW, pgb, nsrc,
                                       src_stride, &opt, nthreads)
