# The `cython` variant of the xent family: the plain per-row algorithm of
# fastnn/kernels/xent/reference.py in Cython, rows split over an OpenMP team
# with prange.  No intrinsics: gcc compiles it for the baseline ISA.  Sums in
# double.  Arrays arrive validated and C-contiguous.
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp, expf, log
from libc.stdint cimport int64_t

include "simd_api.pxi"

cnp.import_array()


cdef inline double _exp(floating z) noexcept nogil:
    if floating is float:
        return expf(z)
    else:
        return exp(z)


cdef floating _xent_row(const floating *x, Py_ssize_t C, int64_t y, const floating *t,
                        floating *d, double scale, double ls) noexcept nogil:
    cdef Py_ssize_t c
    cdef floating m = x[0], z
    cdef double s = 0.0, sz = 0.0, st = 0.0, stz = 0.0, e, tc, inv
    cdef double u = ls / C, hot = 1.0 - ls
    for c in range(1, C):
        if x[c] > m:
            m = x[c]
    for c in range(C):
        z = x[c] - m
        e = _exp(z)
        if d != NULL:
            d[c] = <floating> e
        s += e
        sz += z
        if t != NULL:
            st += t[c]
            stz += t[c] * <double> z
    if t == NULL:
        st = 1.0
        stz = x[y] - m
    if d != NULL:
        inv = 1.0 / s
        for c in range(C):
            if t != NULL:
                tc = hot * t[c] + u
            elif c == y:
                tc = hot + u
            else:
                tc = u
            d[c] = <floating> ((d[c] * inv - tc) * scale)
    return <floating> (log(s) * (hot * st + ls) - (hot * stz + u * sz))


cdef void _xent(const floating *x, Py_ssize_t B, Py_ssize_t C, const int64_t *idx,
                const floating *t, floating *losses, floating *d, double scale, double ls,
                int nthreads) noexcept nogil:
    cdef Py_ssize_t b
    for b in prange(B, num_threads=nthreads, schedule="static"):
        losses[b] = _xent_row(x + b * C, C, idx[b] if idx != NULL else 0,
                              t + b * C if t != NULL else NULL,
                              d + b * C if d != NULL else NULL, scale, ls)


cdef void _rows(const floating *x, floating *out, Py_ssize_t B, Py_ssize_t C, bint lg,
                int nthreads) noexcept nogil:
    cdef Py_ssize_t b, c
    cdef floating m, lz
    cdef double s, e
    if C == 0:
        return
    for b in prange(B, num_threads=nthreads, schedule="static"):
        m = x[b * C]
        for c in range(1, C):
            if x[b * C + c] > m:
                m = x[b * C + c]
        s = 0.0
        for c in range(C):
            e = _exp(x[b * C + c] - m)
            if not lg:
                out[b * C + c] = <floating> e     # out may be x: read before written
            s = s + e
        if lg:
            lz = <floating> log(s)
            for c in range(C):
                out[b * C + c] = (x[b * C + c] - m) - lz
        else:
            for c in range(C):
                out[b * C + c] = <floating> (out[b * C + c] / s)


def softmax_xent(cnp.ndarray logits, cnp.ndarray labels, cnp.ndarray losses, dlogits,
                 double grad_scale, double label_smoothing, int nthreads=1):
    cdef Py_ssize_t B = logits.shape[0], C = logits.shape[1]
    cdef void *x = cnp.PyArray_DATA(logits)
    cdef void *l = cnp.PyArray_DATA(losses)
    cdef void *d = NULL if dlogits is None else cnp.PyArray_DATA(<cnp.ndarray> dlogits)
    cdef const int64_t *idx = NULL
    cdef void *t = NULL
    if labels.ndim == 1:
        idx = <const int64_t *> cnp.PyArray_DATA(labels)
    else:
        t = cnp.PyArray_DATA(labels)
    if nthreads < 1 or B * C < 16384:
        nthreads = 1
    if logits.dtype.num == cnp.NPY_FLOAT32:
        with nogil:
            _xent(<const float *> x, B, C, idx, <const float *> t, <float *> l, <float *> d,
                  grad_scale, label_smoothing, nthreads)
    else:
        with nogil:
            _xent(<const double *> x, B, C, idx, <const double *> t, <double *> l,
                  <double *> d, grad_scale, label_smoothing, nthreads)
    return losses


def _softmax_rows(cnp.ndarray x, cnp.ndarray out, bint lg, int nthreads):
    cdef Py_ssize_t B = x.shape[0], C = x.shape[1]
    cdef void *px = cnp.PyArray_DATA(x)
    cdef void *po = cnp.PyArray_DATA(out)
    if nthreads < 1 or B * C < 16384:
        nthreads = 1
    if x.dtype.num == cnp.NPY_FLOAT32:
        with nogil:
            _rows(<const float *> px, <float *> po, B, C, lg, nthreads)
    else:
        with nogil:
            _rows(<const double *> px, <double *> po, B, C, lg, nthreads)
    return out


def softmax(x, out, int nthreads=1):
    return _softmax_rows(x, out, False, nthreads)


def log_softmax(x, out, int nthreads=1):
    return _softmax_rows(x, out, True, nthreads)
