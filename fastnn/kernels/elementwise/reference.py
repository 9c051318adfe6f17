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


# ---------------------------------------------------------------- dropout
#
# Inverted dropout with a counter-based mask (kernels/elementwise/dropout.c):
#     keep[i] = hash(i, key) >= threshold,   threshold = floor(rate * 2**32)
#     y[i]  = x[i] * scale if keep[i] else 0,   scale = 1 / (1 - rate)
#     dx[i] = dy[i] * scale if keep[i] else 0
# hash: two rounds of a 32-bit xorshift-multiply finaliser, keyed by the 64-bit
# ``key`` (low word xored in before round one, high word added before round two).
# The mask depends on (key, i) only.  Variant interface, on flat C-contiguous arrays:
#     dropout_forward(x, y, mask, key, threshold, scale, nthreads)   y may be x; mask uint8
#     dropout_backward(dy, mask, dx, scale, nthreads)                dx may be dy

_M32 = np.uint64(0xFFFFFFFF)


def _mix32(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """One finaliser round on uint32 values held in uint64 (products reduced mod 2**32)."""
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x21F0AAAD)) & _M32
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(0xD35A2D97)) & _M32
    return x ^ (x >> np.uint64(15))


def dropout_keep(n: int, key: int, threshold: int) -> npt.NDArray[np.bool_]:
    """The keep mask of ``n`` elements: ``hash(i, key) >= threshold``."""
    i = np.arange(n, dtype=np.uint64)
    k = np.uint64(key)
    hi = ((i >> np.uint64(32)) * np.uint64(0x9E3779B9)) & _M32
    x = (i & _M32) ^ (k & _M32) ^ hi
    x = _mix32(x)
    x = (x + (k >> np.uint64(32))) & _M32
    return _mix32(x) >= np.uint64(threshold)


def dropout_forward(x: npt.NDArray[np.floating], y: npt.NDArray[np.floating],
                    mask: npt.NDArray[np.uint8], key: int, threshold: int, scale: float,
                    nthreads: int = 1) -> npt.NDArray[np.floating]:
    keep = dropout_keep(x.size, key, threshold)
    mask[...] = keep
    y[...] = np.where(keep, x * x.dtype.type(scale), 0)
    return y


def dropout_backward(dy: npt.NDArray[np.floating], mask: npt.NDArray[np.uint8],
                     dx: npt.NDArray[np.floating], scale: float,
                     nthreads: int = 1) -> npt.NDArray[np.floating]:
    dx[...] = np.where(mask != 0, dy * dy.dtype.type(scale), 0)
    return dx


# ---------------------------------------------------------------- batch normalisation
#
# Over the channels of an (M, C) matrix x (the N*H*W pixels of an NHWC batch), as
# kernels/elementwise/batchnorm.c computes it:
#     training:  mean = sum x / M,  var = sum (x - mean)^2 / M   (biased; float64, C each)
#     eval:      mean, var given (the running statistics)
#     inv_std = 1 / sqrt(var + eps),  xhat = (x - mean) inv_std,  y = gamma xhat + beta
#     backward:  sum_dy = sum dy,  sum_dyx = sum dy xhat  (float64, C each)
#                dx = gamma inv_std (dy - sum_dy / M - xhat sum_dyx / M)   (batch statistics)
#                dx = gamma inv_std dy                                     (running statistics)
# Variant interface, on (M, C) C-contiguous arrays of one dtype (mean, var, sums float64):
#     batchnorm_forward(x, gamma, beta, eps, training, mean, var, inv_std, y, xhat, ws,
#                       scratch, nthreads)        xhat may be None; ws/scratch: workspace
#     batchnorm_backward(dy, xhat, gamma, inv_std, batch_stats, sums, dx, ws, scratch,
#                        nthreads)                sums: (2C,) float64 [sum_dy, sum_dyx]


def batchnorm_forward(x: npt.NDArray[np.floating], gamma: npt.NDArray[np.floating],
                      beta: npt.NDArray[np.floating], eps: float, training: bool,
                      mean: npt.NDArray[np.float64], var: npt.NDArray[np.float64],
                      inv_std: npt.NDArray[np.floating], y: npt.NDArray[np.floating],
                      xhat: "npt.NDArray[np.floating] | None", ws: object = None,
                      scratch: object = None, nthreads: int = 1) -> npt.NDArray[np.floating]:
    x64 = x.astype(np.float64)
    if training:
        mean[...] = x64.mean(axis=0)
        var[...] = ((x64 - mean) ** 2).mean(axis=0)
    inv = 1.0 / np.sqrt(var + eps)
    inv_std[...] = inv
    h = (x64 - mean) * inv
    if xhat is not None:
        xhat[...] = h
    y[...] = h * gamma.astype(np.float64) + beta.astype(np.float64)
    return y


def batchnorm_backward(dy: npt.NDArray[np.floating], xhat: npt.NDArray[np.floating],
                       gamma: npt.NDArray[np.floating], inv_std: npt.NDArray[np.floating],
                       batch_stats: bool, sums: npt.NDArray[np.float64],
                       dx: npt.NDArray[np.floating], ws: object = None, scratch: object = None,
                       nthreads: int = 1) -> npt.NDArray[np.floating]:
    g = dy.astype(np.float64)
    h = xhat.astype(np.float64)
    m, c = g.shape
    sums[:c] = g.sum(axis=0)
    sums[c:] = (g * h).sum(axis=0)
    s = gamma.astype(np.float64) * inv_std.astype(np.float64)
    if batch_stats:
        dx[...] = s * (g - sums[:c] / m - h * (sums[c:] / m))
    else:
        dx[...] = s * g
    return dx
