"""The elementwise family: activation functions and their derivatives.

Variants (see ``fastnn.kernels.variants("elementwise")``); each is a
module-like object with ``activation_forward`` and ``activation_backward``
(interface in ``fastnn/kernels/elementwise/reference.py``):

    reference  numpy in float64, the specification    fastnn/kernels/elementwise/reference.py
    numba      prange over the flat array              fastnn/kernels/elementwise/numba_impl.py
    cython     OpenMP prange, libm exp/tanh             kernels/elementwise/elementwise_cy.pyx
    c          OpenMP over chunks, AVX2/FMA exp         kernels/elementwise/elementwise.c (+ _c.pyx)

Inverted dropout (``dropout_forward``/``dropout_backward``) is the family
``"dropout"``: ``reference`` (numpy, reference.py) and ``c``
(kernels/elementwise/dropout.c), the same counter-based mask bit for bit.

Batch normalisation over channels (``batchnorm_forward``/``batchnorm_backward``,
BatchNorm2D's kernels) is the family ``"batchnorm"``: ``reference`` (numpy in
float64, reference.py) and ``c`` (kernels/elementwise/batchnorm.c).
"""
from __future__ import annotations

import importlib
from typing import Any, Optional, Tuple

import numpy as np
import numpy.typing as npt

from ... import _threads
from ...errors import DTypeError, ShapeError
from .._registry import native_module, register, register_module_variants
from .._checks import check_variant, float_input, no_overlap, output, pick
from .reference import KINDS

__all__ = ["activation_forward", "activation_backward", "KINDS", "dropout_forward",
           "dropout_backward", "dropout_threshold", "batchnorm_forward", "batchnorm_backward"]


register_module_variants("elementwise", __name__, "elementwise",
                         numba="Numba, prange over the flat array",
                         cython="Cython, OpenMP prange over the flat array, libm exp/tanh",
                         c="C, OpenMP over chunks, AVX2/FMA exp")
register("dropout", "reference", lambda: importlib.import_module(__name__ + ".reference"),
         description="numpy (specification)", simd=lambda: "numpy")
register("dropout", "c", lambda: native_module("elementwise_c"),
         description="C, one pass: counter-based mask, y and a byte mask",
         simd=lambda: native_module("elementwise_c").simd_name())
register("batchnorm", "reference", lambda: importlib.import_module(__name__ + ".reference"),
         description="numpy in float64 (specification)", simd=lambda: "numpy")
register("batchnorm", "c", lambda: native_module("elementwise_c"),
         description="C, blocked per-channel sums (deterministic), fused normalise pass",
         simd=lambda: native_module("elementwise_c").simd_name())


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


def dropout_threshold(rate: float, fn: str = "dropout") -> int:
    """``floor(rate * 2**32)``: element i is dropped when its 32-bit hash is below it."""
    if not (0.0 <= rate < 1.0):
        raise ValueError(f"{fn}: rate must be in [0, 1), got {rate!r}")
    return min(int(rate * 4294967296.0), 4294967295)


def _key(key: int, fn: str) -> int:
    if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)):
        raise TypeError(f"{fn}: key must be an integer, got {type(key).__name__}")
    if not 0 <= int(key) < 1 << 64:
        raise ValueError(f"{fn}: key must be in [0, 2**64), got {key}")
    return int(key)


def dropout_forward(x: npt.ArrayLike, rate: float, key: int,
                    out: Optional[npt.NDArray[np.floating]] = None,
                    mask: Optional[npt.NDArray[np.uint8]] = None, *,
                    variant: Optional[str] = None
                    ) -> Tuple[npt.NDArray[np.floating], npt.NDArray[np.uint8]]:
    """Inverted dropout: ``y = x * m / (1 - rate)``, ``m[i] = hash(i, key) >= rate * 2**32``.

    The keep mask ``m`` (returned as uint8 0/1, for the backward pass) is a
    32-bit hash of each element's flat index keyed by ``key`` (see
    reference.py): it depends on (key, index) only, never on the thread count,
    and each element is kept with probability ``1 - rate`` (to 2**-32).

    Shapes: x any shape, float32/float64; out like x (may be x itself); mask
    uint8 of x's shape, C-contiguous.  Returns ``(out, mask)``.

    >>> import numpy as np
    >>> from fastnn.kernels.elementwise import dropout_forward
    >>> y, m = dropout_forward(np.ones(8, np.float32), 0.5, key=7)
    >>> sorted(set(y.tolist())) == [0.0, 2.0] and int(m.sum()) == int((y != 0).sum())
    True
    """
    fn = "dropout_forward"
    check_variant(fn, variant)
    thr = dropout_threshold(float(rate), fn)
    k = _key(key, fn)
    x = float_input(x, fn, "x")
    out = output(out, fn, "out", x.shape, x.dtype)
    mask = output(mask, fn, "mask", x.shape, np.uint8)
    no_overlap(fn, out, "out", {"x": x}, allow_same=("x",))
    no_overlap(fn, mask, "mask", {"x": x, "out": out})
    scale = 1.0 / (1.0 - float(rate))
    pick("dropout", variant).dropout_forward(x.reshape(-1), out.reshape(-1), mask.reshape(-1),
                                             k, thr, scale, _threads.get_num_threads())
    return out, mask


def dropout_backward(dy: npt.ArrayLike, mask: npt.NDArray[np.uint8], rate: float,
                     dx: Optional[npt.NDArray[np.floating]] = None, *,
                     variant: Optional[str] = None) -> npt.NDArray[np.floating]:
    """``dx = dy * m / (1 - rate)`` with the uint8 mask ``m`` of ``dropout_forward``.

    Shapes: dy float32/float64, mask uint8 of dy's shape, dx like dy (may be dy).

    >>> import numpy as np
    >>> from fastnn.kernels.elementwise import dropout_backward
    >>> dropout_backward(np.ones(3), np.array([1, 0, 1], np.uint8), 0.5).tolist()
    [2.0, 0.0, 2.0]
    """
    fn = "dropout_backward"
    check_variant(fn, variant)
    dropout_threshold(float(rate), fn)
    dy = float_input(dy, fn, "dy")
    if not isinstance(mask, np.ndarray) or mask.dtype != np.uint8:
        raise DTypeError(f"{fn}: mask must be a uint8 numpy array (dropout_forward's), "
                         f"got {getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.shape != dy.shape:
        raise ShapeError(f"{fn}: mask must have dy's shape {dy.shape}, got {mask.shape}")
    mask = np.ascontiguousarray(mask)
    dx = output(dx, fn, "dx", dy.shape, dy.dtype)
    no_overlap(fn, dx, "dx", {"dy": dy, "mask": mask}, allow_same=("dy",))
    pick("dropout", variant).dropout_backward(dy.reshape(-1), mask.reshape(-1), dx.reshape(-1),
                                              1.0 / (1.0 - float(rate)),
                                              _threads.get_num_threads())
    return dx


_BN_ROWS = 256      # batchnorm.c's BN_ROWS: rows per partial-sum block


def _bn_workspace(m: int, c: int, dtype: np.dtype, nthreads: int
                  ) -> Tuple[npt.NDArray[np.float64], npt.NDArray[np.floating]]:
    nb = max(1, -(-m // _BN_ROWS))
    return np.empty(2 * nb * c, np.float64), np.empty(4 * c, dtype)


def _bn_vector(v: npt.ArrayLike, fn: str, name: str, c: int, dtype: npt.DTypeLike
               ) -> npt.NDArray[Any]:
    a = np.asarray(v)
    if a.shape != (c,):
        raise ShapeError(f"{fn}: {name} must have shape ({c},) (one per channel), got {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise DTypeError(f"{fn}: {name} must be floating point, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=dtype)


def batchnorm_forward(x: npt.ArrayLike, gamma: npt.ArrayLike, beta: npt.ArrayLike,
                      eps: float = 1e-5, *, training: bool = True,
                      mean: Optional[npt.ArrayLike] = None, var: Optional[npt.ArrayLike] = None,
                      out: Optional[npt.NDArray[np.floating]] = None,
                      xhat: Optional[npt.NDArray[np.floating]] = None,
                      variant: Optional[str] = None
                      ) -> Tuple[npt.NDArray[np.floating], npt.NDArray[np.float64],
                                 npt.NDArray[np.float64], npt.NDArray[np.floating]]:
    """Batch normalisation of the columns (channels) of ``x`` (M, C)::

        mean = sum_i x[i] / M,   var = sum_i (x[i] - mean)^2 / M      (training: biased)
        inv_std = 1 / sqrt(var + eps),   xhat = (x - mean) inv_std,   y = gamma xhat + beta

    With ``training=False`` the given ``mean`` and ``var`` (running statistics)
    are used instead of the batch's.  Shapes: x (M, C) float32/float64 (an NHWC
    batch reshaped to (-1, C)); gamma, beta (C,); out and xhat (M, C) like x
    (xhat is written only when given).  Returns ``(y, mean, var, inv_std)``:
    mean and var float64 (C,), inv_std (C,) in x's dtype.  The sums are blocked
    and reduced in a fixed order: the same bits for any thread count.

    >>> import numpy as np
    >>> from fastnn.kernels.elementwise import batchnorm_forward
    >>> y, mean, var, _ = batchnorm_forward(np.array([[1.0, 0.0], [3.0, 4.0]]), np.ones(2),
    ...                                     np.zeros(2), eps=0.0)
    >>> y.tolist(), mean.tolist(), var.tolist()
    ([[-1.0, -1.0], [1.0, 1.0]], [2.0, 2.0], [1.0, 4.0])
    """
    fn = "batchnorm_forward"
    check_variant(fn, variant)
    x = float_input(x, fn, "x", ndim=2)
    m, c = x.shape
    if c < 1 or (training and m < 1):
        raise ShapeError(f"{fn}: x must have at least one channel and one row, got {x.shape}")
    eps = float(eps)
    if not (eps >= 0.0 and np.isfinite(eps)):
        raise ValueError(f"{fn}: eps must be >= 0, got {eps!r}")
    g = _bn_vector(gamma, fn, "gamma", c, x.dtype)
    b = _bn_vector(beta, fn, "beta", c, x.dtype)
    if training:
        mean64 = np.empty(c, np.float64)
        var64 = np.empty(c, np.float64)
    else:
        if mean is None or var is None:
            raise ValueError(f"{fn}: training=False needs mean and var (the running statistics)")
        mean64 = _bn_vector(mean, fn, "mean", c, np.float64).copy()
        var64 = _bn_vector(var, fn, "var", c, np.float64).copy()
        if (var64 < 0).any():
            raise ValueError(f"{fn}: var must be >= 0, got a minimum of {var64.min()!r}")
    out = output(out, fn, "out", x.shape, x.dtype)
    no_overlap(fn, out, "out", {"x": x}, allow_same=("x",))
    if xhat is not None:
        xhat = output(xhat, fn, "xhat", x.shape, x.dtype)
        no_overlap(fn, xhat, "xhat", {"x": x, "out": out})
    inv = np.empty(c, x.dtype)
    nt = _threads.get_num_threads()
    ws, scratch = _bn_workspace(m, c, x.dtype, nt)
    pick("batchnorm", variant).batchnorm_forward(x, g, b, eps, bool(training), mean64, var64,
                                                 inv, out, xhat, ws, scratch, nt)
    return out, mean64, var64, inv


def batchnorm_backward(dy: npt.ArrayLike, xhat: npt.ArrayLike, gamma: npt.ArrayLike,
                       inv_std: npt.ArrayLike, *, batch_stats: bool = True,
                       dx: Optional[npt.NDArray[np.floating]] = None,
                       variant: Optional[str] = None
                       ) -> Tuple[npt.NDArray[np.floating], npt.NDArray[np.float64],
                                  npt.NDArray[np.float64]]:
    """The backward pass of :func:`batchnorm_forward`::

        sum_dy = sum_i dy[i],   sum_dyx = sum_i dy[i] xhat[i]        (= dbeta, dgamma)
        dx = gamma inv_std (dy - sum_dy / M - xhat sum_dyx / M)      (batch statistics)
        dx = gamma inv_std dy                                        (batch_stats=False)

    Shapes: dy and xhat (M, C) of one float dtype, gamma and inv_std (C,); dx like
    dy (may be dy itself).  Returns ``(dx, sum_dy, sum_dyx)``, the sums float64 (C,).

    >>> import numpy as np
    >>> from fastnn.kernels.elementwise import batchnorm_backward
    >>> dx, sdy, sdx = batchnorm_backward(np.ones((2, 1)), np.array([[-1.0], [1.0]]),
    ...                                   np.ones(1), np.ones(1))
    >>> dx.ravel().tolist(), sdy.tolist(), sdx.tolist()
    ([0.0, 0.0], [2.0], [0.0])
    """
    fn = "batchnorm_backward"
    check_variant(fn, variant)
    dy = float_input(dy, fn, "dy", ndim=2)
    xh = float_input(xhat, fn, "xhat", ndim=2)
    if xh.shape != dy.shape or xh.dtype != dy.dtype:
        raise ShapeError(f"{fn}: xhat must match dy ({dy.shape}, {dy.dtype}), got "
                         f"{xh.shape}, {xh.dtype}")
    m, c = dy.shape
    if c < 1 or m < 1:
        raise ShapeError(f"{fn}: dy must have at least one channel and one row, got {dy.shape}")
    g = _bn_vector(gamma, fn, "gamma", c, dy.dtype)
    inv = _bn_vector(inv_std, fn, "inv_std", c, dy.dtype)
    dx = output(dx, fn, "dx", dy.shape, dy.dtype)
    no_overlap(fn, dx, "dx", {"dy": dy, "xhat": xh}, allow_same=("dy",))
    sums = np.empty(2 * c, np.float64)
    nt = _threads.get_num_threads()
    ws, scratch = _bn_workspace(m, c, dy.dtype, nt)
    pick("batchnorm", variant).batchnorm_backward(dy, xh, g, inv, bool(batch_stats), sums, dx,
                                                  ws, scratch, nt)
    return dx, sums[:c], sums[c:]
