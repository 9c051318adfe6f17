# Include in every native kernel module: lets Python read and set this
# module's SIMD level (each extension links its own copy of cpu.c).
# Modules with AVX-512 paths (matmul_c) define these three themselves.
from fnn_common cimport fnn_simd_level, fnn_set_simd_level, fnn_simd_name

def simd_level():
    """Current SIMD level of this module: 0 scalar, 1 AVX2+FMA, 2 AVX-512, 3 AVX-512+BF16."""
    return fnn_simd_level()

def set_simd_level(int level):
    """Set this module's SIMD level (clamped to what the CPU supports); returns it."""
    return fnn_set_simd_level(level)

def simd_name():
    """The code path this module's kernels run at the current level: they have
    AVX2 and scalar paths only, so every AVX-512 level runs AVX2."""
    cdef int level = fnn_simd_level()
    if level >= 2:
        return "avx2+fma (no avx512 path; level " + fnn_simd_name(level).decode() + ")"
    return fnn_simd_name(level).decode()
