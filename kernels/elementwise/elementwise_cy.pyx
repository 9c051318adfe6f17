# The `cython` variant of the elementwise family: one prange loop per
# activation kind over the flat buffer (interface and math:
# fastnn/kernels/elementwise/reference.py).  libm exp/tanh; gcc vectorises
# the cheap loops for the baseline ISA.
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp, expf, fabs, tanh, tanhf

include "simd_api.pxi"

cnp.import_array()

DEF RELU = 0
DEF SIGMOID = 1
DEF TANH = 2
DEF STEP = 3
DEF PAR_MIN = 65536


cdef inline floating _sigmoid(floating x) noexcept nogil:
    cdef floating e
    if floating is float:
        e = expf(-fabs(x))          # exp of a non-positive number never overflows
    else:
        e = exp(-fabs(x))
    if x >= 0:
        return 1 / (1 + e)
    return e / (1 + e)


cdef inline floating _tanh(floating x) noexcept nogil:
    if floating is float:
        return tanhf(x)
    else:
        return tanh(x)


cdef void _forward(int kind, const floating *x, floating *out, Py_ssize_t n,
                   int nt) noexcept nogil:
    cdef Py_ssize_t i
    if kind == RELU:
        for i in prange(n, num_threads=nt, schedule="static"):
            out[i] = 0 if x[i] < 0 else x[i]
    elif kind == SIGMOID:
        for i in prange(n, num_threads=nt, schedule="static"):
            out[i] = _sigmoid(x[i])
    elif kind == TANH:
        for i in prange(n, num_threads=nt, schedule="static"):
            out[i] = _tanh(x[i])
    else:
        for i in prange(n, num_threads=nt, schedule="static"):
            out[i] = 1 if x[i] > 0 else 0


cdef void _backward(int kind, const floating *y, const floating *g, floating *dx, Py_ssize_t n,
                    bint acc, int nt) noexcept nogil:
    # one branch-free loop per (kind, accumulate): a kind test inside the loop
    # costs a mispredicted branch per element and blocks vectorisation
    cdef Py_ssize_t i
    cdef floating gi
    if kind == STEP:
        if not acc:
            for i in prange(n, num_threads=nt, schedule="static"):
                dx[i] = 0
    elif kind == RELU:
        if acc:
            for i in prange(n, num_threads=nt, schedule="static"):
                gi = g[i]         # loaded unconditionally so that gcc emits a select, not a branch
                dx[i] = dx[i] + (gi if y[i] > 0 else 0)
        else:
            for i in prange(n, num_threads=nt, schedule="static"):
                gi = g[i]
                dx[i] = gi if y[i] > 0 else 0
    elif kind == SIGMOID:
        if acc:
            for i in prange(n, num_threads=nt, schedule="static"):
                dx[i] = dx[i] + g[i] * y[i] * (1 - y[i])
        else:
            for i in prange(n, num_threads=nt, schedule="static"):
                dx[i] = g[i] * y[i] * (1 - y[i])
    else:
        if acc:
            for i in prange(n, num_threads=nt, schedule="static"):
                dx[i] = dx[i] + g[i] * (1 - y[i] * y[i])
        else:
            for i in prange(n, num_threads=nt, schedule="static"):
                dx[i] = g[i] * (1 - y[i] * y[i])


def activation_forward(int kind, cnp.ndarray x, cnp.ndarray out, int nthreads=1):
    cdef Py_ssize_t n = x.shape[0]
    cdef void *px = cnp.PyArray_DATA(x)
    cdef void *po = cnp.PyArray_DATA(out)
    if nthreads < 1 or n < PAR_MIN:
        nthreads = 1
    if x.dtype.num == cnp.NPY_FLOAT32:
        with nogil:
            _forward(kind, <const float *> px, <float *> po, n, nthreads)
    else:
        with nogil:
            _forward(kind, <const double *> px, <double *> po, n, nthreads)
    return out


def activation_backward(int kind, cnp.ndarray y, cnp.ndarray dout, cnp.ndarray dx,
                        bint accumulate, int nthreads=1):
    cdef Py_ssize_t n = y.shape[0]
    cdef void *py = cnp.PyArray_DATA(y)
    cdef void *pg = cnp.PyArray_DATA(dout)
    cdef void *pd = cnp.PyArray_DATA(dx)
    if nthreads < 1 or n < PAR_MIN:
        nthreads = 1
    if y.dtype.num == cnp.NPY_FLOAT32:
        with nogil:
            _backward(kind, <const float *> py, <const float *> pg, <float *> pd, n, accumulate,
                      nthreads)
    else:
        with nogil:
            _backward(kind, <const double *> py, <const double *> pg, <double *> pd, n,
                      accumulate, nthreads)
    return dx
