# Declarations shared by every native kernel module (see kernels/common/cpu.h).
cdef extern from "cpu.h" nogil:
    int FNN_SIMD_SCALAR
    int FNN_SIMD_AVX2
    int fnn_cpu_has_avx2_fma()
    int fnn_cpu_has_avx512f()
    int fnn_simd_level()
    int fnn_set_simd_level(int level)
    const char *fnn_simd_name(int level)
