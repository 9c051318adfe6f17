# Build facts and the FMA peak probe, for fastnn.show_config() and the benchmarks.
from fnn_common cimport (fnn_cpu_has_avx2_fma, fnn_cpu_has_avx512f, fnn_cpu_has_avx512,
                         fnn_cpu_has_avx512bf16, fnn_cpu_max_level, fnn_cpu_double_pumped_512,
                         fnn_cpu_model_name, fnn_simd_env_level)

include "simd_api.pxi"

cdef extern from *:
    """
    double fnn_fma_probe(long iters, int nthreads, float *sink);
    double fnn_bf16_probe(long iters, int nthreads, float *sink);
    #ifdef FASTNN_HAVE_OPENMP
    #include <omp.h>
    static int fnn_have_openmp(void) { return 1; }
    static int fnn_omp_version(void) { return _OPENMP; }
    static int fnn_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int fnn_have_openmp(void) { return 0; }
    static int fnn_omp_version(void) { return 0; }
    static int fnn_omp_max_threads(void) { return 1; }
    #endif
    """
    double fnn_fma_probe(long iters, int nthreads, float *sink) nogil
    double fnn_bf16_probe(long iters, int nthreads, float *sink) nogil
    int fnn_have_openmp()
    int fnn_omp_version()
    int fnn_omp_max_threads()


def cpu_features():
    """CPU features that matter to fastnn, as the running CPU reports them."""
    return {"avx2": bool(fnn_cpu_has_avx2_fma()), "fma": bool(fnn_cpu_has_avx2_fma()),
            "avx512f": bool(fnn_cpu_has_avx512f()),
            "avx512": bool(fnn_cpu_has_avx512()),
            "avx512_bf16": bool(fnn_cpu_has_avx512bf16())}


def cpu_max_level():
    """Highest SIMD level the CPU and the OS support (0 scalar .. 3 avx512_bf16)."""
    return fnn_cpu_max_level()


def cpu_model():
    """The CPU model class the dispatchers tune for: "zen4" or "other x86-64"."""
    return fnn_cpu_model_name().decode()


def simd_env_level():
    """FASTNN_SIMD as the C side parses it: 0..3, -1 when unset, -2 when unknown."""
    return fnn_simd_env_level()


def openmp_info():
    """(compiled with OpenMP?, _OPENMP version macro, omp_get_max_threads())."""
    return bool(fnn_have_openmp()), int(fnn_omp_version()), int(fnn_omp_max_threads())


def fma_probe(long iters, int nthreads):
    """Run the FMA loop; returns the number of FLOPs executed (time it yourself)."""
    cdef float sink = 0
    cdef double flops
    with nogil:
        flops = fnn_fma_probe(iters, nthreads, &sink)
    return flops


def bf16_probe(long iters, int nthreads):
    """Run the vdpbf16ps loop; returns the FLOPs executed (0 below level avx512_bf16)."""
    cdef float sink = 0
    cdef double flops
    with nogil:
        flops = fnn_bf16_probe(iters, nthreads, &sink)
    return flops
