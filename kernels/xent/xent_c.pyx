# The `c` variant of the xent family: thin wrappers over kernels/xent/xent.c.
# Arrays arrive validated and C-contiguous (fastnn/kernels/xent/__init__.py);
# the interface is documented in fastnn/kernels/xent/reference.py.
cimport numpy as cnp
from libc.stdint cimport int64_t

include "simd_api.pxi"

cnp.import_array()

cdef extern from "xent.h" nogil:
    void fnn_softmax_xent_f32(Py_ssize_t B, Py_ssize_t C, const float *logits,
                              const int64_t *idx, const float *probs, float *losses,
                              float *dlogits, double grad_scale, double ls, int nthreads)
    void fnn_softmax_xent_f64(Py_ssize_t B, Py_ssize_t C, const double *logits,
                              const int64_t *idx, const double *probs, double *losses,
                              double *dlogits, double grad_scale, double ls, int nthreads)
    void fnn_softmax_rows_f32(Py_ssize_t B, Py_ssize_t C, const float *x, float *out, int log,
                              int nthreads)
    void fnn_softmax_rows_f64(Py_ssize_t B, Py_ssize_t C, const double *x, double *out, int log,
                              int nthreads)


def softmax_xent(cnp.ndarray logits, cnp.ndarray labels, cnp.ndarray losses, dlogits,
                 double grad_scale, double label_smoothing, int nthreads=1):
    cdef Py_ssize_t B = logits.shape[0], C = logits.shape[1]
    cdef void *px = cnp.PyArray_DATA(logits)
    cdef void *pl = cnp.PyArray_DATA(losses)
    cdef void *pd = NULL
    cdef const int64_t *idx = NULL
    cdef void *probs = NULL
    if dlogits is not None:
        pd = cnp.PyArray_DATA(<cnp.ndarray> dlogits)
    if labels.ndim == 1:
        idx = <const int64_t *> cnp.PyArray_DATA(labels)
    else:
        probs = cnp.PyArray_DATA(labels)
    if logits.dtype.num == cnp.NPY_FLOAT32:
        with nogil:
            fnn_softmax_xent_f32(B, C, <const float *> px, idx, <const float *> probs,
                                 <float *> pl, <float *> pd, grad_scale, label_smoothing, nthreads)
    else:
        with nogil:
            fnn_softmax_xent_f64(B, C, <const double *> px, idx, <const double *> probs,
                                 <double *> pl, <double *> pd, grad_scale, label_smoothing,
                                 nthreads)
    return losses


cdef _rows(cnp.ndarray x, cnp.ndarray out, int log, int nthreads):
    cdef Py_ssize_t B = x.shape[0], C = x.shape[1]
    cdef void *px = cnp.PyArray_DATA(x)
    cdef void *po = cnp.PyArray_DATA(out)
    if x.dtype.num == cnp.NPY_FLOAT32:
        with nogil:
            fnn_softmax_rows_f32(B, C, <const float *> px, <float *> po, log, nthreads)
    else:
        with nogil:
            fnn_softmax_rows_f64(B, C, <const double *> px, <double *> po, log, nthreads)
    return out


def softmax(cnp.ndarray x, cnp.ndarray out, int nthreads=1):
    return _rows(x, out, 0, nthreads)


def log_softmax(cnp.ndarray x, cnp.ndarray out, int nthreads=1):
    return _rows(x, out, 1, nthreads)
