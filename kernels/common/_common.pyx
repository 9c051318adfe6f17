# Build facts and the FMA peak probe, for fastnn.show_config() and the benchmarks.
from fnn_common cimport fnn_cpu_has_avx2_fma, fnn_cpu_has_avx512f

include "simd_api.pxi"

cdef extern from *:
    """
    double fnn_fma_probe(long iters, int nthreads, float *sink);
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
    int fnn_have_openmp()
    int fnn_omp_version()
    int fnn_omp_max_threads()


def cpu_features():
    """CPU features that matter to fastnn, as the running CPU reports them."""
    return {"avx2": bool(fnn_cpu_has_avx2_fma()), "fma": bool(fnn_cpu_has_avx2_fma()),
            "avx512f": bool(fnn_cpu_has_avx512f())}


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
