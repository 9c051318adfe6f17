"""The specification of the elementwise family (activations and their
derivatives), in float64 numpy.

Forward, y = f(x):
    relu     max(x, 0)                         (NaN stays NaN)
    sigmoid  1 / (1 + exp(-x))
    tanh     tanh(x)
    step     1 where x > 0 else 0              (NaN gives 0)

Backward, from the forward OUTPUT y and the upstream gradient dout:
    relu     dout * (y > 0)
    sigmoid  dout * y * (1 - y)
    tanh     dout * (1 - y * y)
    step     0   (the derivative is 0 almost everywhere; the step passes no gradient)
    dx = result, or dx += result when accumulating.

Variant interface (every variant module provides both, on flat 1-D
C-contiguous arrays of one dtype; ``kind`` is an index into KINDS):

    activation_forward(kind, x, out, nthreads)              out may be x
    activation_backward(kind, y, dout, dx, accumulate, nthreads)   dx may be dout
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

KINDS = ("relu", "sigmoid", "tanh", "step")
RELU, SIGMOID, TANH, STEP = range(4)


def forward64(kind: int, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
    x = np.asarray(x, dtype=np.float64)
    if kind == RELU:
        return np.where(x < 0, 0.0, x)
    if kind == SIGMOID:
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-x))
    if kind == TANH:
        return np.tanh(x)
    if kind == STEP:
        return (x > 0).astype(np.float64)
    raise ValueError(f"unknown activation code {kind!r}")


def backward64(kind: int, y: npt.ArrayLike, dout: npt.ArrayLike) -> npt.NDArray[np.float64]:
    y = np.asarray(y, dtype=np.float64)
    dout = np.asarray(dout, dtype=np.float64)
    if kind == RELU:
        return np.where(y > 0, dout, 0.0)
    if kind == SIGMOID:
        return dout * y * (1.0 - y)
    if kind == TANH:
        return dout * (1.0 - y * y)
    if kind == STEP:
        return np.zeros_like(dout)
    raise ValueError(f"unknown activation code {kind!r}")


def activation_forward(kind: int, x: npt.NDArray[np.floating], out: npt.NDArray[np.floating],
                       nthreads: int = 1) -> npt.NDArray[np.floating]:
    out[...] = forward64(kind, x)
    return out


def activation_backward(kind: int, y: npt.NDArray[np.floating], dout: npt.NDArray[np.floating],
                        dx: npt.NDArray[np.floating], accumulate: bool = False,
                        nthreads: int = 1) -> npt.NDArray[np.floating]:
    g = backward64(kind, y, dout)
    if accumulate:
        dx[...] = np.asarray(dx, dtype=np.float64) + g
    else:
        dx[...] = g
    return dx
