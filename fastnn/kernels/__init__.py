"""fastnn's kernels: one sub-package per family, each with a numpy reference
(the specification) and its fast variants, all listed in one registry.

    family      public entry point(s)                       sources
    matmul      fastnn.kernels.matmul                       kernels/matmul/
    ...

``variants(family)`` lists what is available here; ``describe()`` says which
SIMD path each variant runs.
"""
from ._registry import describe, get, register, set_simd_level, simd_level, variants  # noqa: F401
from .matmul import matmul  # noqa: F401
