"""fastnn's kernels: one sub-package per family, each with a numpy reference
(the specification) and its fast variants, all listed in one registry.

    family      public entry point(s)                       sources
    matmul      fastnn.kernels.matmul                       kernels/matmul/
    xent        softmax_xent, softmax, log_softmax          kernels/xent/
    elementwise activation_forward, activation_backward     kernels/elementwise/
    dropout     elementwise.dropout_forward, _backward      kernels/elementwise/dropout.c
    reduce      column_sums                                 kernels/reduce/
    optim       sgd_update, adam_update                     kernels/optim/
    conv        conv2d_forward, conv2d_backward_data,       kernels/conv/
                conv2d_backward_weights, maxpool2d_*, avgpool2d_*

A variant of xent/elementwise/reduce/optim is a module-like object holding
that family's functions (interfaces in fastnn/kernels/<family>/reference.py);
``variant=None`` runs the fastest native variant built (c, then cython), else
the numpy reference; Numba runs only when asked for (``variant="numba"``).

``variants(family)`` lists what is available here; ``describe()`` says which
SIMD path each variant runs.
"""
from ._registry import describe, get, register, set_simd_level, simd_level, variants  # noqa: F401
from .matmul import matmul  # noqa: F401
from .xent import log_softmax, softmax, softmax_xent  # noqa: F401
from .elementwise import activation_backward, activation_forward  # noqa: F401
from .reduce import column_sums  # noqa: F401
from .optim import adam_update, sgd_update  # noqa: F401
from .conv import (avgpool2d_backward, avgpool2d_forward, conv2d_backward_data,  # noqa: F401
                   conv2d_backward_weights, conv2d_forward, conv2d_workspace_size,
                   maxpool2d_backward, maxpool2d_forward)
