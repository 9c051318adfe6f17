# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The ``cython`` matmul variant: ``out = act(a @ b + bias)`` with blocked
loops and an OpenMP ``prange`` over output tiles.

    out[i, j] = relu?( sum_k a[i, k] * b[k, j] + bias[j] )

Shapes: a (M, K), b (K, N), out (M, N), bias (N,) or None; float32 or
float64 (fused type); typed memoryviews, so any strides (a transpose is a
view).  Same signature as every matmul variant (see reference.py).

Blocking: a parallel iteration owns one MB x NB tile of ``out``.  For each
KB block of K it copies the MB x KB slice of ``a`` and the KB x NB slice of
``b`` into contiguous per-thread buffers (allocated once per thread per call,
outside the loop over tiles), then runs a 6-row x 2-vector register-blocked
update written in C with GCC vector types.  That update is compiled twice:
for AVX2+FMA (``FNN_TARGET_AVX2``) and for baseline x86-64; ``fnn_simd_level()``
picks one at run time.  Every element's K sum runs in the same order
whatever the thread count, so 1 and n threads agree bit for bit.

>>> import numpy as np
>>> from fastnn._ext.matmul_cy import matmul
>>> a = np.ones((2, 3), np.float32); b = np.ones((3, 4), np.float32)
>>> matmul(a, b, np.empty((2, 4), np.float32), None, False, 1)[0, 0]
3.0
"""
cimport cython
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy
from fnn_common cimport fnn_simd_level

include "simd_api.pxi"

cdef extern from *:
    """
    #include "cpu.h"
    /* Tile sizes: MB x NB of C per parallel iteration, KB deep. */
    #define CY_MB 72
    #define CY_NB 128
    #define CY_KB 256

    /* acc[MB x NB] += ap[mb x KB] . pan[KB x NB] on contiguous buffers, in
     * 6-row x 2-vector register blocks (12 accumulators; 4-row and 1-row
     * blocks for the tail).  Written with GCC
     * vector types (not intrinsics) so one source serves both builds: 32-byte
     * vectors under AVX2+FMA, 16-byte (SSE2) vectors on baseline x86-64.
     * Left to the auto-vectoriser, GCC vectorised the wrong loop (a gather
     * along i); wider-than-native vector types made it spill every step. */
    typedef float cy_f8 __attribute__((vector_size(32), aligned(4)));
    typedef float cy_f4 __attribute__((vector_size(16), aligned(4)));
    typedef double cy_d4 __attribute__((vector_size(32), aligned(8)));
    typedef double cy_d2 __attribute__((vector_size(16), aligned(8)));
    #define CY_TILE(NAME, T, V, ATTR)                                              \
    ATTR static void NAME(int mb, int kb, int nbw, const T *restrict ap,           \
                          const T *restrict pan, T *restrict acc)                  \
    {                                                                              \
        enum { VN = sizeof(V) / sizeof(T) };                                       \
        int i = 0;                                                                 \
        for (; i + 6 <= mb; i += 6) {                                              \
            for (int j0 = 0; j0 < nbw; j0 += 2 * VN) {                             \
                T *o = acc + i * CY_NB + j0;                                       \
                V c00 = *(V *)(o), c01 = *(V *)(o + VN);                           \
                V c10 = *(V *)(o + CY_NB), c11 = *(V *)(o + CY_NB + VN);           \
                V c20 = *(V *)(o + 2 * CY_NB), c21 = *(V *)(o + 2 * CY_NB + VN);   \
                V c30 = *(V *)(o + 3 * CY_NB), c31 = *(V *)(o + 3 * CY_NB + VN);   \
                V c40 = *(V *)(o + 4 * CY_NB), c41 = *(V *)(o + 4 * CY_NB + VN);   \
                V c50 = *(V *)(o + 5 * CY_NB), c51 = *(V *)(o + 5 * CY_NB + VN);   \
                const T *a0 = ap + (i + 0) * CY_KB, *a1 = ap + (i + 1) * CY_KB;    \
                const T *a2 = ap + (i + 2) * CY_KB, *a3 = ap + (i + 3) * CY_KB;    \
                const T *a4 = ap + (i + 4) * CY_KB, *a5 = ap + (i + 5) * CY_KB;    \
                for (int k = 0; k < kb; k++) {                                     \
                    const T *p = pan + k * CY_NB + j0;                             \
                    V p0 = *(const V *)p, p1 = *(const V *)(p + VN);               \
                    c00 += a0[k] * p0; c01 += a0[k] * p1;                          \
                    c10 += a1[k] * p0; c11 += a1[k] * p1;                          \
                    c20 += a2[k] * p0; c21 += a2[k] * p1;                          \
                    c30 += a3[k] * p0; c31 += a3[k] * p1;                          \
                    c40 += a4[k] * p0; c41 += a4[k] * p1;                          \
                    c50 += a5[k] * p0; c51 += a5[k] * p1;                          \
                }                                                                  \
                *(V *)(o) = c00; *(V *)(o + VN) = c01;                             \
                *(V *)(o + CY_NB) = c10; *(V *)(o + CY_NB + VN) = c11;             \
                *(V *)(o + 2 * CY_NB) = c20; *(V *)(o + 2 * CY_NB + VN) = c21;     \
                *(V *)(o + 3 * CY_NB) = c30; *(V *)(o + 3 * CY_NB + VN) = c31;     \
                *(V *)(o + 4 * CY_NB) = c40; *(V *)(o + 4 * CY_NB + VN) = c41;     \
                *(V *)(o + 5 * CY_NB) = c50; *(V *)(o + 5 * CY_NB + VN) = c51;     \
            }                                                                      \
        }                                                                          \
        for (; i + 4 <= mb; i += 4) {                                              \
            for (int j0 = 0; j0 < nbw; j0 += 2 * VN) {                             \
                T *o = acc + i * CY_NB + j0;                                       \
                V c00 = *(V *)(o), c01 = *(V *)(o + VN);                           \
                V c10 = *(V *)(o + CY_NB), c11 = *(V *)(o + CY_NB + VN);           \
                V c20 = *(V *)(o + 2 * CY_NB), c21 = *(V *)(o + 2 * CY_NB + VN);   \
                V c30 = *(V *)(o + 3 * CY_NB), c31 = *(V *)(o + 3 * CY_NB + VN);   \
                const T *a0 = ap + (i + 0) * CY_KB, *a1 = ap + (i + 1) * CY_KB;    \
                const T *a2 = ap + (i + 2) * CY_KB, *a3 = ap + (i + 3) * CY_KB;    \
                for (int k = 0; k < kb; k++) {                                     \
                    const T *p = pan + k * CY_NB + j0;                             \
                    V p0 = *(const V *)p, p1 = *(const V *)(p + VN);               \
                    c00 += a0[k] * p0; c01 += a0[k] * p1;                          \
                    c10 += a1[k] * p0; c11 += a1[k] * p1;                          \
                    c20 += a2[k] * p0; c21 += a2[k] * p1;                          \
                    c30 += a3[k] * p0; c31 += a3[k] * p1;                          \
                }                                                                  \
                *(V *)(o) = c00; *(V *)(o + VN) = c01;                             \
                *(V *)(o + CY_NB) = c10; *(V *)(o + CY_NB + VN) = c11;             \
                *(V *)(o + 2 * CY_NB) = c20; *(V *)(o + 2 * CY_NB + VN) = c21;     \
                *(V *)(o + 3 * CY_NB) = c30; *(V *)(o + 3 * CY_NB + VN) = c31;     \
            }                                                                      \
        }                                                                          \
        for (; i < mb; i++) {                                                      \
            for (int j0 = 0; j0 < nbw; j0 += VN) {                                 \
                V c = *(V *)(acc + i * CY_NB + j0);                                \
                const T *a = ap + i * CY_KB;                                       \
                for (int k = 0; k < kb; k++)                                       \
                    c += a[k] * *(const V *)(pan + k * CY_NB + j0);                \
                *(V *)(acc + i * CY_NB + j0) = c;                                  \
            }                                                                      \
        }                                                                          \
    }

    CY_TILE(cy_tile_f_plain, float, cy_f4, )
    CY_TILE(cy_tile_d_plain, double, cy_d2, )
    #if FNN_X86
    CY_TILE(cy_tile_f_avx2, float, cy_f8, FNN_TARGET_AVX2)
    CY_TILE(cy_tile_d_avx2, double, cy_d4, FNN_TARGET_AVX2)
    #else
    #define cy_tile_f_avx2 cy_tile_f_plain
    #define cy_tile_d_avx2 cy_tile_d_plain
    #endif
    """
    int CY_MB
    int CY_NB
    int CY_KB
    void cy_tile_f_plain(int mb, int kb, int nbw, const float *ap, const float *pan,
                         float *acc) nogil
    void cy_tile_d_plain(int mb, int kb, int nbw, const double *ap, const double *pan,
                         double *acc) nogil
    void cy_tile_f_avx2(int mb, int kb, int nbw, const float *ap, const float *pan,
                        float *acc) nogil
    void cy_tile_d_avx2(int mb, int kb, int nbw, const double *ap, const double *pan,
                        double *acc) nogil


cdef inline void _tile(int mb, int kb, int nbw, floating *ap, floating *pan, floating *acc,
                       int avx2) noexcept nogil:
    if floating is float:
        if avx2:
            cy_tile_f_avx2(mb, kb, nbw, ap, pan, acc)
        else:
            cy_tile_f_plain(mb, kb, nbw, ap, pan, acc)
    else:
        if avx2:
            cy_tile_d_avx2(mb, kb, nbw, ap, pan, acc)
        else:
            cy_tile_d_plain(mb, kb, nbw, ap, pan, acc)


cdef int _matmul(const floating[:, :] a, const floating[:, :] b, floating[:, :] out,
                 const floating[:] bias, bint has_bias, bint relu, int nthreads) noexcept nogil:
    # returns 0, or -1 when a thread could not allocate its buffers
    cdef Py_ssize_t M = a.shape[0], K = a.shape[1], N = b.shape[1]
    cdef Py_ssize_t n_ti = (M + CY_MB - 1) // CY_MB, n_tj = (N + CY_NB - 1) // CY_NB
    cdef Py_ssize_t t, i, j, k, k0, i0, j0, mb, nb, kb, nbw
    # element strides: unit-stride rows are copied with memcpy when packing
    cdef Py_ssize_t sa0 = a.strides[0] // sizeof(floating), sa1 = a.strides[1] // sizeof(floating)
    cdef Py_ssize_t sb0 = b.strides[0] // sizeof(floating), sb1 = b.strides[1] // sizeof(floating)
    cdef const floating *src
    cdef floating *ap
    cdef floating *pan
    cdef floating *acc
    cdef floating v
    cdef int avx2 = fnn_simd_level() >= 1
    cdef int oom_flag = 0
    cdef int *oom = &oom_flag       # shared: any thread may set it
    if M == 0 or N == 0:
        return 0
    if nthreads < 1:
        nthreads = 1
    with parallel(num_threads=nthreads):
        # per-thread buffers, once per call (not per tile)
        ap = <floating *> malloc(sizeof(floating) * CY_MB * CY_KB)
        pan = <floating *> malloc(sizeof(floating) * CY_KB * CY_NB)
        acc = <floating *> malloc(sizeof(floating) * CY_MB * CY_NB)
        for t in prange(n_ti * n_tj, schedule="static"):
            if ap == NULL or pan == NULL or acc == NULL:
                oom[0] = 1    # reported as MemoryError, never a silent gap
                continue
            i0 = (t // n_tj) * CY_MB
            j0 = (t % n_tj) * CY_NB
            mb = M - i0 if M - i0 < CY_MB else CY_MB
            nb = N - j0 if N - j0 < CY_NB else CY_NB
            nbw = (nb + 15) // 16 * 16      # columns the update computes (narrow N)
            for i in range(CY_MB * CY_NB):
                acc[i] = 0
            k0 = 0
            while k0 < K:
                kb = K - k0 if K - k0 < CY_KB else CY_KB
                for i in range(mb):
                    src = &a[i0 + i, k0]
                    if sa1 == 1:
                        memcpy(&ap[i * CY_KB], src, kb * sizeof(floating))
                    else:
                        for k in range(kb):
                            ap[i * CY_KB + k] = src[k * sa1]
                if sb1 != 1 and sb0 == 1:
                    # transposed b (columns contiguous in k): read down columns
                    for j in range(nb):
                        src = &b[k0, j0 + j]
                        for k in range(kb):
                            pan[k * CY_NB + j] = src[k]
                    for k in range(kb):
                        for j in range(nb, nbw):
                            pan[k * CY_NB + j] = 0
                else:
                    for k in range(kb):
                        src = &b[k0 + k, j0]
                        if sb1 == 1:
                            memcpy(&pan[k * CY_NB], src, nb * sizeof(floating))
                        else:
                            for j in range(nb):
                                pan[k * CY_NB + j] = src[j * sb1]
                        for j in range(nb, nbw):
                            pan[k * CY_NB + j] = 0
                _tile(<int> mb, <int> kb, <int> nbw, ap, pan, acc, avx2)
                k0 = k0 + kb
            for i in range(mb):
                for j in range(nb):
                    v = acc[i * CY_NB + j]
                    if has_bias:
                        v = v + bias[j0 + j]
                    if relu and v < 0:
                        v = 0
                    out[i0 + i, j0 + j] = v
        free(ap)
        free(pan)
        free(acc)
    return -1 if oom_flag else 0


def matmul(a, b, out, bias, bint relu, int nthreads=1):
    """out = relu?(a @ b + bias) (inputs validated by fastnn.kernels.matmul)."""
    import numpy as np
    has_bias = bias is not None
    if not has_bias:
        bias = np.zeros(1, dtype=out.dtype)
    cdef int rc
    if out.dtype == np.float32:
        rc = _matmul[float](a, b, out, bias, has_bias, relu, nthreads)
    else:
        rc = _matmul[double](a, b, out, bias, has_bias, relu, nthreads)
    if rc != 0:
        raise MemoryError("matmul (cython): could not allocate the per-thread tile buffers")
    return out
