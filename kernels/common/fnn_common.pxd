# Declarations shared by every native kernel module (see kernels/common/cpu.h).
cdef extern from "cpu.h" nogil:
    int FNN_SIMD_SCALAR
    int FNN_SIMD_AVX2
    int FNN_SIMD_AVX512
    int FNN_SIMD_AVX512_BF16
    int fnn_cpu_has_avx2_fma()
    int fnn_cpu_has_avx512f()
    int fnn_cpu_has_avx512()
    int fnn_cpu_has_avx512bf16()
    int fnn_cpu_max_level()
    int fnn_cpu_double_pumped_512()
    const char *fnn_cpu_model_name()
    int fnn_simd_level()
    int fnn_set_simd_level(int level)
    const char *fnn_simd_name(int level)
    int fnn_simd_env_level()
