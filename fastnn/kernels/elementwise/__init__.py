"""The elementwise family: activation functions and their derivatives.

Variants (see ``fastnn.kernels.variants("elementwise")``); each is a
module-like object with ``activation_forward`` and ``activation_backward``
(interface in ``fastnn/kernels/elementwise/reference.py``):

    reference  numpy in float64, the specification    fastnn/kernels/elementwise/reference.py
    numba      prange over the flat array              fastnn/kernels/elementwise/numba_impl.py
    cython     OpenMP prange, libm exp/tanh             kernels/elementwise/elementwise_cy.pyx
    c          OpenMP over chunks, AVX2/FMA exp         kernels/elementwise/elementwise.c (+ _c.pyx)
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import numpy.typing as npt

from ... import _threads
from ...errors import DTypeError, ShapeError
from .._registry import register_module_variants
from .._checks import check_variant, float_input, no_overlap, output, pick
from .reference import KINDS

__all__ = ["activation_forward", "activation_backward", "KINDS"]


register_module_variants("elementwise", __name__, "elementwise",
                         numba="Numba, prange over the flat array",
                         cython="Cython, OpenMP prange over the flat array, libm exp/tanh",
                         c="C, OpenMP over chunks, AVX2/FMA exp")


def _kind(kind: str, fn: str) -> int:
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"{fn}: kind must be one of {KINDS}, got {kind!r}")
    return KINDS.index(kind)


def activation_forward(kind: str, x: npt.ArrayLike, out: Optional[npt.NDArray[np.floating]] = None,
                       *, variant: Optional[str] = None) -> npt.NDArray[np.floating]:
    """``out = f(x)`` elementwise, f one of:

        relu     max(x, 0)              sigmoid  1 / (1 + exp(-x))
        tanh     tanh(x)                step     1 where x > 0 else 0

    Shapes: x any shape, float32/float64; out the same shape and dtype,
    C-contiguous (may be x itself for an in-place update).

    >>> import numpy as np
    >>> from fastnn.kernels import activation_forward
    >>> activation_forward("relu", np.array([-1.0, 2.0])).tolist()
    [0.0, 2.0]
    """
    fn = "activation_forward"
    check_variant(fn, variant)
    code = _kind(kind, fn)
    x = float_input(x, fn, "x")
    out = output(out, fn, "out", x.shape, x.dtype)
    no_overlap(fn, out, "out", {"x": x}, allow_same=("x",))
    impl = pick("elementwise", variant)
    impl.activation_forward(code, x.reshape(-1), out.reshape(-1), _threads.get_num_threads())
    return out


def activation_backward(kind: str, y: npt.ArrayLike, dout: npt.ArrayLike,
                        dx: Optional[npt.NDArray[np.floating]] = None, *, accumulate: bool = False,
                        variant: Optional[str] = None) -> npt.NDArray[np.floating]:
    """Gradient of an activation from its forward OUTPUT ``y``:

        relu     dx = dout * (y > 0)
        sigmoid  dx = dout * y * (1 - y)
        tanh     dx = dout * (1 - y * y)
        step     dx = 0   (derivative 0 almost everywhere: the step passes no gradient)

    With ``accumulate=True`` the result is added to ``dx`` (``dx += ...``).

    Shapes: y, dout, dx the same shape and dtype (float32/float64); dx
    C-contiguous; it may be dout or y itself (element i is read before it is written)
    but must not partially overlap them.

    >>> import numpy as np
    >>> from fastnn.kernels import activation_backward
    >>> activation_backward("relu", np.array([0.0, 2.0]), np.array([5.0, 5.0])).tolist()
    [0.0, 5.0]
    """
    fn = "activation_backward"
    check_variant(fn, variant)
    code = _kind(kind, fn)
    y = float_input(y, fn, "y")
    dout = float_input(dout, fn, "dout")
    if dout.dtype != y.dtype:
        raise DTypeError(f"{fn}: dout must have y's dtype {y.dtype}, got {dout.dtype}")
    if dout.shape != y.shape:
        raise ShapeError(f"{fn}: dout must have y's shape {y.shape}, got {dout.shape}")
    if dx is None:
        if accumulate:
            raise ValueError(f"{fn}: accumulate=True needs a dx array to add into")
        dx = np.empty_like(y)
    else:
        dx = output(dx, fn, "dx", y.shape, y.dtype)
        no_overlap(fn, dx, "dx", {"y": y, "dout": dout}, allow_same=("y", "dout"))
    impl = pick("elementwise", variant)
    impl.activation_backward(code, y.reshape(-1), dout.reshape(-1), dx.reshape(-1),
                             bool(accumulate), _threads.get_num_threads())
    return dx
