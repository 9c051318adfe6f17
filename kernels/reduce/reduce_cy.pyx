# The `cython` variant of the reduce family: column sums with the same
# thread-count-independent order as the C kernel (fixed blocks of ROW_BLOCK
# rows summed in double in prange, block sums then added in block order).
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.stdlib cimport free, malloc

include "simd_api.pxi"

cnp.import_array()

DEF RB = 256          # = fastnn.kernels.reduce.reference.ROW_BLOCK
DEF PAR_MIN = 32768


cdef int _column_sums(const floating *x, floating *out, Py_ssize_t B, Py_ssize_t N, bint acc,
                      int nt) noexcept nogil:
    cdef Py_ssize_t nb = (B + RB - 1) // RB, b, i, j, r1
    cdef double tot
    cdef double *part = <double *> malloc((nb * N if nb * N > 0 else 1) * sizeof(double))
    if part == NULL:
        return -1
    for b in prange(nb, num_threads=nt, schedule="static"):
        r1 = min(B, (b + 1) * RB)
        for j in range(N):
            part[b * N + j] = 0
        for i in range(b * RB, r1):
            for j in range(N):
                part[b * N + j] = part[b * N + j] + <double> x[i * N + j]
    for j in prange(N, num_threads=nt, schedule="static"):
        tot = 0
        for b in range(nb):
            tot = tot + part[b * N + j]
        if acc:
            out[j] = <floating> (<double> out[j] + tot)
        else:
            out[j] = <floating> tot
    free(part)
    return 0


def column_sums(cnp.ndarray x, cnp.ndarray out, bint accumulate, int nthreads=1):
    cdef Py_ssize_t B = x.shape[0], N = x.shape[1]
    cdef void *px = cnp.PyArray_DATA(x)
    cdef void *po = cnp.PyArray_DATA(out)
    cdef int rc
    if nthreads < 1 or B * N < PAR_MIN:
        nthreads = 1
    if x.dtype.num == cnp.NPY_FLOAT32:
        with nogil:
            rc = _column_sums(<const float *> px, <float *> po, B, N, accumulate, nthreads)
    else:
        with nogil:
            rc = _column_sums(<const double *> px, <double *> po, B, N, accumulate, nthreads)
    if rc != 0:
        raise MemoryError(f"column_sums: no memory for the {B}x{N} partial sums")
    return out
