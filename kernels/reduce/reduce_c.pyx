# The `c` variant of the reduce family: a thin wrapper over kernels/reduce/reduce.c.
# Arrays arrive validated and C-contiguous (fastnn/kernels/reduce/__init__.py).
cimport numpy as cnp

include "simd_api.pxi"

cnp.import_array()

cdef extern from "reduce.h" nogil:
    int fnn_column_sums_f32(Py_ssize_t B, Py_ssize_t N, const float *x, float *out,
                            int accumulate, int nthreads)
    int fnn_column_sums_f64(Py_ssize_t B, Py_ssize_t N, const double *x, double *out,
                            int accumulate, int nthreads)


def column_sums(cnp.ndarray x, cnp.ndarray out, bint accumulate, int nthreads=1):
    cdef Py_ssize_t B = x.shape[0], N = x.shape[1]
    cdef void *px = cnp.PyArray_DATA(x)
    cdef void *po = cnp.PyArray_DATA(out)
    cdef int rc
    if x.dtype.num == cnp.NPY_FLOAT32:
        with nogil:
            rc = fnn_column_sums_f32(B, N, <const float *> px, <float *> po, accumulate, nthreads)
    else:
        with nogil:
            rc = fnn_column_sums_f64(B, N, <const double *> px, <double *> po, accumulate,
                                     nthreads)
    if rc != 0:
        raise MemoryError(f"column_sums: no memory for the {B}x{N} partial sums")
    return out
