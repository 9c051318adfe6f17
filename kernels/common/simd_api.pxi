# Include in every native kernel module: lets Python read and set this
# module's SIMD level (each extension links its own copy of cpu.c).
from fnn_common cimport fnn_simd_level, fnn_set_simd_level, fnn_simd_name

def simd_level():
    """Current SIMD level of this module: 0 scalar, 1 AVX2+FMA."""
    return fnn_simd_level()

def set_simd_level(int level):
    """Set this module's SIMD level (clamped to what the CPU supports); returns it."""
    return fnn_set_simd_level(level)

def simd_name():
    return fnn_simd_name(fnn_simd_level()).decode()
