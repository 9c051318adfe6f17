"""The conv family: 2-D convolution (forward, backward data, backward weights)
and max/average pooling, on NHWC activations and HWIO weights.

Variants (see ``fastnn.kernels.variants("conv")``); each is a module-like
object with the functions of ``fastnn/kernels/conv/reference.py`` (the spec):

    reference  numpy in float64 (im2col + matmul), the specification   fastnn/kernels/conv/reference.py
    c          im2col + the packed GEMM (bias/ReLU/mask epilogues),      kernels/conv/conv.c,
               OpenMP over images, AVX2 im2col/col2im/pooling; direct    conv_tmpl.h, conv_cols.h,
               paths for one input channel (first layers) and for the    conv_c.pyx
               backward data of few input channels (see conv.h)

Shapes: x (N, H, W, Cin); w (KH, KW, Cin, Cout); padding (top, bottom, left,
right); stride (sh, sw); ``OH = (H + top + bottom - KH) // sh + 1`` (likewise
OW) must be >= 1.  x, w, bias and outputs share one dtype, float32 or float64.
Inputs may be non-contiguous (they are copied); outputs (``out=``, ``dw``,
``argmax``, ...) must be C-contiguous and are written in place, so a training
step that passes its buffers (and a ``workspace`` of
``conv2d_workspace_size(...)`` elements) allocates nothing.
Results are the same bits for every thread count.
"""
from __future__ import annotations

import importlib
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

from ... import _threads
from ...errors import DTypeError, ShapeError
from .._checks import check_variant, float_input, no_overlap, output, writable_contiguous
from .._registry import available, get, native_module, register
from . import reference as _ref

__all__ = ["conv2d_forward", "conv2d_backward_data", "conv2d_backward_weights",
           "conv2d_workspace_size", "maxpool2d_forward", "maxpool2d_backward",
           "avgpool2d_forward", "avgpool2d_backward"]

register("conv", "reference", lambda: importlib.import_module(__name__ + ".reference"),
         description="numpy float64 (specification)", simd=lambda: "numpy float64")
register("conv", "c", lambda: native_module("conv_c"),
         description="C, im2col + packed GEMM with fused epilogues, OpenMP over images",
         simd=lambda: native_module("conv_c").simd_name())



def pick(family: str, variant: Optional[str]) -> Any:
    """The variant to run: ``variant`` if given, else ``c`` when built, else the reference."""
    if variant is not None:
        return get(family, variant)
    return get(family, "c" if available(family, "c") else "reference")


Pair = Tuple[int, int]
Pad = Tuple[int, int, int, int]
Array = npt.NDArray[np.floating]


# ---------------------------------------------------------------- argument checks

def _int(v: Any, fn: str, name: str, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{fn}: {name} must hold ints, got {v!r} ({type(v).__name__})")
    if int(v) < lo:
        raise ValueError(f"{fn}: {name} entries must be >= {lo}, got {int(v)}")
    return int(v)


def _tuple(v: Any, n: int, fn: str, name: str, lo: int) -> Tuple[int, ...]:
    """An int (repeated n times) or a sequence of n ints >= lo."""
    if type(v) is tuple and len(v) == n and all(type(e) is int and e >= lo for e in v):
        return v        # what the layers pass every step: nothing to convert
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return (_int(v, fn, name, lo),) * n
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if not isinstance(v, (tuple, list)):
        raise TypeError(f"{fn}: {name} must be a tuple of {n} ints, got {type(v).__name__}")
    if len(v) != n:
        raise ValueError(f"{fn}: {name} must have {n} entries, got {len(v)}: {tuple(v)!r}")
    return tuple(_int(e, fn, name, lo) for e in v)


def _pair(v: Any, fn: str, name: str) -> Pair:
    a, b = _tuple(v, 2, fn, name, 1)
    return a, b


def _padding(v: Any, fn: str) -> Pad:
    t, b, l, r = _tuple(v, 4, fn, "padding", 0)
    return t, b, l, r


def _shape4(v: Any, fn: str, name: str) -> Tuple[int, int, int, int]:
    a, b, c, d = _tuple(v, 4, fn, name, 0)
    return a, b, c, d


def _same_dtype(fn: str, ref: Array, name: str, a: Any, aname: str) -> None:
    if a.dtype != ref.dtype:
        raise DTypeError(f"{fn}: {aname} has dtype {a.dtype} but {name} has {ref.dtype}; "
                         "pass one dtype")


def _out_hw(fn: str, x_shape: Sequence[int], w_shape: Sequence[int], stride: Pair,
            padding: Pad) -> Pair:
    N, H, W, Cin = x_shape
    KH, KW, wc, Cout = w_shape
    if wc != Cin:
        raise ShapeError(f"{fn}: w has {wc} input channels (shape {tuple(w_shape)}) but x has "
                         f"{Cin} (shape {tuple(x_shape)})")
    if KH < 1 or KW < 1 or Cout < 1 or Cin < 1:
        raise ShapeError(f"{fn}: w must have KH, KW, Cin, Cout >= 1, got shape {tuple(w_shape)}")
    OH, OW = _ref.out_size(H, W, KH, KW, stride, padding)
    if OH < 1 or OW < 1:
        raise ShapeError(f"{fn}: kernel {KH}x{KW} (w shape {tuple(w_shape)}) is larger than the "
                         f"padded input {H + padding[0] + padding[1]}x{W + padding[2] + padding[3]}"
                         f" (x shape {tuple(x_shape)}, padding {padding})")
    return OH, OW


_PLANS: Dict[Tuple[Any, ...], Tuple[int, int, int, int]] = {}


def _plan(fn: str, x_shape: Sequence[int], w_shape: Sequence[int], stride: Pair,
          padding: Pad) -> Tuple[int, int, int, int]:
    """reference.plan, memoised per geometry (a training step asks for the same few)."""
    key = (tuple(x_shape), tuple(w_shape), stride, padding, _ref.COLS_CAP, _ref.ROW_BLOCK,
           _ref.MAX_BLOCKS)
    plan = _PLANS.get(key)
    if plan is None:
        N, H, W, Cin = x_shape
        KH, KW, _, Cout = w_shape
        plan = _ref.plan(N, H, W, Cin, KH, KW, Cout, stride, padding)
        if len(_PLANS) > 1024:
            _PLANS.clear()
        _PLANS[key] = plan
    return plan


def _workspace(fn: str, workspace: Optional[Array], need: int, dtype: Any) -> Array:
    if workspace is None:
        return np.empty(need, dtype=dtype)
    if not isinstance(workspace, np.ndarray):
        raise TypeError(f"{fn}: workspace must be a numpy array, got {type(workspace).__name__}")
    if workspace.dtype != dtype:
        raise DTypeError(f"{fn}: workspace must have dtype {dtype}, got {workspace.dtype}")
    writable_contiguous(workspace, fn, "workspace")
    if workspace.size < need:
        raise ShapeError(f"{fn}: workspace has {workspace.size} elements, needs {need} "
                         "(see conv2d_workspace_size)")
    return workspace.reshape(-1)


def conv2d_workspace_size(x_shape: Sequence[int], w_shape: Sequence[int],
                          stride: Any = (1, 1), padding: Any = (0, 0, 0, 0)) -> int:
    """Elements (of x's dtype) of the ``workspace`` the three conv2d kernels need.

    One buffer of this size serves forward and both backward kernels of one
    layer; it does not depend on the thread count.  It holds the im2col
    columns of a chunk of images (at most about 4M elements) and the
    weight-gradient partial sums.

    >>> from fastnn.kernels import conv2d_workspace_size
    >>> conv2d_workspace_size((128, 28, 28, 1), (5, 5, 1, 6), padding=(2, 2, 2, 2)) > 0
    True
    """
    fn = "conv2d_workspace_size"
    xs, ws = _shape4(x_shape, fn, "x_shape"), _shape4(w_shape, fn, "w_shape")
    st, pd = _pair(stride, fn, "stride"), _padding(padding, fn)
    _out_hw(fn, xs, ws, st, pd)
    return _plan(fn, xs, ws, st, pd)[3]


# ---------------------------------------------------------------- convolution

PRECISIONS = ("fp32", "bf16")


def _bf16(fn: str, precision: Any, a: Array, cin: int) -> bool:
    """Whether the call runs bf16 products: ``precision == "bf16"`` and more than one
    input channel (see conv2d_forward); ValueError/DTypeError for a bad ``precision``."""
    if precision not in PRECISIONS:
        raise ValueError(f"{fn}: precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16" and a.dtype != np.float32:
        raise DTypeError(f"{fn}: precision='bf16' needs float32 arrays, got {a.dtype}")
    return precision == "bf16" and cin > 1


def conv2d_forward(x: npt.ArrayLike, w: npt.ArrayLike, bias: Optional[npt.ArrayLike] = None,
                   stride: Any = (1, 1), padding: Any = (0, 0, 0, 0),
                   activation: Optional[str] = None, out: Optional[Array] = None,
                   workspace: Optional[Array] = None, *,
                   variant: Optional[str] = None, precision: str = "fp32") -> Array:
    """2-D convolution (cross-correlation, as every framework): NHWC in, NHWC out.

        y[n, oh, ow, co] = act(bias[co] + sum_{kh, kw, ci} xp[n, oh*sh + kh, ow*sw + kw, ci]
                                                           * w[kh, kw, ci, co])

    with xp = x zero-padded by (top, bottom, left, right) and act = identity or
    ReLU (``activation="relu"``).  Shapes: x (N, H, W, Cin), w (KH, KW, Cin,
    Cout), bias (Cout,) or None, out (N, OH, OW, Cout).

    ``precision="bf16"`` (float32 only; all three conv functions): the products
    take bf16-rounded inputs (round to nearest even) with float32 sums, on the
    bf16 GEMM (``vdpbf16ps`` where the CPU has AVX512_BF16, the same rounded
    products with float32 FMAs otherwise); bias, ReLU, masks and dbias stay
    float32.  A layer with one input channel (an image network's first) stays
    float32: its products are only KH*KW long, too short for the bf16 GEMM to pay
    off, and its direct kernels (no GEMM) are faster.  See
    fastnn/kernels/conv/reference.py.

    >>> import numpy as np
    >>> from fastnn.kernels import conv2d_forward
    >>> x = np.ones((1, 3, 3, 1), np.float32); w = np.ones((2, 2, 1, 1), np.float32)
    >>> conv2d_forward(x, w)[0, :, :, 0].tolist()
    [[4.0, 4.0], [4.0, 4.0]]
    """
    fn = "conv2d_forward"
    check_variant(fn, variant)
    x = float_input(x, fn, "x", ndim=4)
    w = float_input(w, fn, "w", ndim=4)
    _same_dtype(fn, x, "x", w, "w")
    st, pd = _pair(stride, fn, "stride"), _padding(padding, fn)
    if activation not in (None, "relu"):
        raise ValueError(f"{fn}: activation must be None or 'relu', got {activation!r}")
    OH, OW = _out_hw(fn, x.shape, w.shape, st, pd)
    Cout = w.shape[3]
    if bias is not None:
        bias = float_input(bias, fn, "bias", ndim=1)
        _same_dtype(fn, x, "x", bias, "bias")
        if bias.shape[0] != Cout:
            raise ShapeError(f"{fn}: bias must have shape ({Cout},) (w shape {w.shape}), got "
                             f"{bias.shape}")
    out = output(out, fn, "out", (x.shape[0], OH, OW, Cout), x.dtype)
    no_overlap(fn, out, "out", {"x": x, "w": w, "bias": bias})
    plan = _plan(fn, x.shape, w.shape, st, pd)
    ws = _workspace(fn, workspace, plan[3], x.dtype)
    no_overlap(fn, ws, "workspace", {"x": x, "w": w, "bias": bias, "out": out})
    bf16 = _bf16(fn, precision, x, w.shape[2])
    pick("conv", variant).conv2d_forward(x, w, bias, st, pd, activation == "relu", out, ws,
                                         plan[:3], _threads.get_num_threads(), bf16)
    return out


def conv2d_backward_data(dy: npt.ArrayLike, w: npt.ArrayLike, x_shape: Sequence[int],
                         stride: Any = (1, 1), padding: Any = (0, 0, 0, 0),
                         out: Optional[Array] = None, workspace: Optional[Array] = None,
                         mask: Optional[npt.ArrayLike] = None, *,
                         variant: Optional[str] = None, precision: str = "fp32") -> Array:
    """Gradient of conv2d_forward (without activation) with respect to x.

        dx = col2im(dy.reshape(M, Cout) @ w.reshape(K, Cout)^T) * (mask > 0)

    col2im adds each entry back at the input position im2col read it from
    (padding positions are dropped).  ``mask`` (x's shape and dtype, optional)
    fuses the previous layer's ReLU backward.  Shapes: dy (N, OH, OW, Cout),
    w (KH, KW, Cin, Cout), x_shape (N, H, W, Cin), out (N, H, W, Cin).

    >>> import numpy as np
    >>> from fastnn.kernels import conv2d_backward_data
    >>> dy = np.ones((1, 2, 2, 1)); w = np.ones((2, 2, 1, 1))
    >>> conv2d_backward_data(dy, w, (1, 3, 3, 1))[0, :, :, 0].tolist()
    [[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]
    """
    fn = "conv2d_backward_data"
    check_variant(fn, variant)
    dy = float_input(dy, fn, "dy", ndim=4)
    w = float_input(w, fn, "w", ndim=4)
    _same_dtype(fn, dy, "dy", w, "w")
    xs = _shape4(x_shape, fn, "x_shape")
    st, pd = _pair(stride, fn, "stride"), _padding(padding, fn)
    OH, OW = _out_hw(fn, xs, w.shape, st, pd)
    want = (xs[0], OH, OW, w.shape[3])
    if dy.shape != want:
        raise ShapeError(f"{fn}: dy must have shape {want} (x_shape {xs}, w shape {w.shape}), "
                         f"got {dy.shape}")
    if mask is not None:
        mask = float_input(mask, fn, "mask", ndim=4)
        _same_dtype(fn, dy, "dy", mask, "mask")
        if mask.shape != xs:
            raise ShapeError(f"{fn}: mask must have x's shape {xs}, got {mask.shape}")
    out = output(out, fn, "out", xs, dy.dtype)
    no_overlap(fn, out, "out", {"dy": dy, "w": w, "mask": mask})
    plan = _plan(fn, xs, w.shape, st, pd)
    ws = _workspace(fn, workspace, plan[3], dy.dtype)
    no_overlap(fn, ws, "workspace", {"dy": dy, "w": w, "mask": mask, "out": out})
    bf16 = _bf16(fn, precision, dy, w.shape[2])
    pick("conv", variant).conv2d_backward_data(dy, w, st, pd, out, mask, ws, plan[:3],
                                               _threads.get_num_threads(), bf16)
    return out


def conv2d_backward_weights(x: npt.ArrayLike, dy: npt.ArrayLike, w_shape: Sequence[int],
                            stride: Any, padding: Any, dw: Array,
                            dbias: Optional[Array] = None, accumulate: bool = True,
                            workspace: Optional[Array] = None, *,
                            variant: Optional[str] = None, precision: str = "fp32") -> Array:
    """Gradient of conv2d_forward (without activation) with respect to w and bias.

        dw    (+)= (im2col(x)^T @ dy.reshape(M, Cout)).reshape(KH, KW, Cin, Cout)
        dbias (+)= sum over n, oh, ow of dy

    ``+=`` with ``accumulate=True`` (the default: gradients accumulate, zeroing
    is one fill), ``=`` otherwise.  Shapes: x (N, H, W, Cin), dy (N, OH, OW,
    Cout), dw (KH, KW, Cin, Cout) = w_shape, dbias (Cout,).  Returns dw.

    >>> import numpy as np
    >>> from fastnn.kernels import conv2d_backward_weights
    >>> x = np.ones((1, 3, 3, 1)); dy = np.ones((1, 2, 2, 1))
    >>> dw = np.zeros((2, 2, 1, 1)); db = np.zeros(1)
    >>> conv2d_backward_weights(x, dy, dw.shape, (1, 1), (0, 0, 0, 0), dw, db)[:, :, 0, 0].tolist(), db.tolist()
    ([[4.0, 4.0], [4.0, 4.0]], [4.0])
    """
    fn = "conv2d_backward_weights"
    check_variant(fn, variant)
    x = float_input(x, fn, "x", ndim=4)
    dy = float_input(dy, fn, "dy", ndim=4)
    _same_dtype(fn, x, "x", dy, "dy")
    ws_ = _shape4(w_shape, fn, "w_shape")
    st, pd = _pair(stride, fn, "stride"), _padding(padding, fn)
    OH, OW = _out_hw(fn, x.shape, ws_, st, pd)
    want = (x.shape[0], OH, OW, ws_[3])
    if dy.shape != want:
        raise ShapeError(f"{fn}: dy must have shape {want} (x shape {x.shape}, w_shape {ws_}), "
                         f"got {dy.shape}")
    if not isinstance(dw, np.ndarray):
        raise TypeError(f"{fn}: dw must be a numpy array, got {type(dw).__name__}")
    dw = output(dw, fn, "dw", ws_, x.dtype)
    no_overlap(fn, dw, "dw", {"x": x, "dy": dy})
    if dbias is not None:
        dbias = output(dbias, fn, "dbias", (ws_[3],), x.dtype)
        no_overlap(fn, dbias, "dbias", {"x": x, "dy": dy, "dw": dw})
    plan = _plan(fn, x.shape, ws_, st, pd)
    ws = _workspace(fn, workspace, plan[3], x.dtype)
    no_overlap(fn, ws, "workspace", {"x": x, "dy": dy, "dw": dw, "dbias": dbias})
    bf16 = _bf16(fn, precision, x, ws_[2])
    pick("conv", variant).conv2d_backward_weights(x, dy, st, pd, dw, dbias, bool(accumulate),
                                                  ws, plan[:3], _threads.get_num_threads(), bf16)
    return dw


# ---------------------------------------------------------------- pooling

def _pool_out(fn: str, x_shape: Sequence[int], pool: Pair, stride: Pair) -> Pair:
    N, H, W, C = x_shape
    if pool[0] > H or pool[1] > W:
        raise ShapeError(f"{fn}: pool {pool} does not fit in the input of shape {tuple(x_shape)} "
                         "(no padding)")
    return (H - pool[0]) // stride[0] + 1, (W - pool[1]) // stride[1] + 1


def _pool_stride(fn: str, pool: Any, stride: Any) -> Tuple[Pair, Pair]:
    p = _pair(pool, fn, "pool")
    return p, (p if stride is None else _pair(stride, fn, "stride"))


def maxpool2d_forward(x: npt.ArrayLike, pool: Any = (2, 2), stride: Any = None,
                      out: Optional[Array] = None,
                      argmax: Optional[npt.NDArray[np.int32]] = None, *,
                      variant: Optional[str] = None) -> Tuple[Array, npt.NDArray[np.int32]]:
    """Max pooling without padding ("valid"); ``stride`` defaults to ``pool``.

        y[n, oh, ow, c] = max_{i < ph, j < pw} x[n, oh*sh + i, ow*sw + j, c]
        argmax[n, oh, ow, c] = h*W + w of the first maximum (row-major window order)

    A NaN counts as the maximum (the first NaN wins).  Shapes: x (N, H, W, C);
    y and argmax (int32) (N, OH, OW, C), OH = (H - ph) // sh + 1.

    >>> import numpy as np
    >>> from fastnn.kernels import maxpool2d_forward
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    >>> y, a = maxpool2d_forward(x, (2, 2), (2, 2))
    >>> y[0, :, :, 0].tolist(), a[0, :, :, 0].tolist()
    ([[5.0, 7.0], [13.0, 15.0]], [[5, 7], [13, 15]])
    """
    fn = "maxpool2d_forward"
    check_variant(fn, variant)
    x = float_input(x, fn, "x", ndim=4)
    p, s = _pool_stride(fn, pool, stride)
    OH, OW = _pool_out(fn, x.shape, p, s)
    shape = (x.shape[0], OH, OW, x.shape[3])
    out = output(out, fn, "out", shape, x.dtype)
    argmax = output(argmax, fn, "argmax", shape, np.dtype(np.int32))
    no_overlap(fn, out, "out", {"x": x, "argmax": argmax})
    no_overlap(fn, argmax, "argmax", {"x": x})
    pick("conv", variant).maxpool2d_forward(x, p, s, out, argmax, _threads.get_num_threads())
    return out, argmax


def maxpool2d_backward(dy: npt.ArrayLike, argmax: npt.ArrayLike, x_shape: Sequence[int],
                       out: Optional[Array] = None, mask: Optional[npt.ArrayLike] = None, *,
                       variant: Optional[str] = None) -> Array:
    """Gradient of max pooling: ``dx = 0; dx[n, argmax[n,oh,ow,c], c] += dy[n, oh, ow, c]``.

    Overlapping windows that share a maximum add their gradients.  ``mask``
    (dy's shape and dtype, optional): only entries with ``mask > 0`` scatter --
    pass the pooled output of a ReLU layer to fuse that ReLU's backward (the
    pool's output is the ReLU output at the argmax).  Shapes: dy and argmax
    (N, OH, OW, C) (argmax int32 from maxpool2d_forward, each entry in
    [0, H*W)); out (N, H, W, C) = x_shape.

    >>> import numpy as np
    >>> from fastnn.kernels import maxpool2d_backward
    >>> dx = maxpool2d_backward(np.ones((1, 1, 1, 1)), np.array([[[[3]]]], np.int32), (1, 2, 2, 1))
    >>> dx[0, :, :, 0].tolist()
    [[0.0, 0.0], [0.0, 1.0]]
    """
    fn = "maxpool2d_backward"
    check_variant(fn, variant)
    dy = float_input(dy, fn, "dy", ndim=4)
    xs = _shape4(x_shape, fn, "x_shape")
    if not isinstance(argmax, np.ndarray):
        argmax = np.asarray(argmax)
    if argmax.dtype != np.int32:
        raise DTypeError(f"{fn}: argmax must be int32 (from maxpool2d_forward), got dtype "
                         f"{argmax.dtype}")
    if argmax.shape != dy.shape:
        raise ShapeError(f"{fn}: argmax has shape {argmax.shape} but dy has {dy.shape}")
    if dy.shape[0] != xs[0] or dy.shape[3] != xs[3]:
        raise ShapeError(f"{fn}: dy shape {dy.shape} does not match x_shape {xs} "
                         "(batch and channels must agree)")
    if mask is not None:
        mask = float_input(mask, fn, "mask", ndim=4)
        _same_dtype(fn, dy, "dy", mask, "mask")
        if mask.shape != dy.shape:
            raise ShapeError(f"{fn}: mask must have dy's shape {dy.shape}, got {mask.shape}")
    argmax = np.require(argmax, requirements=("C", "A"))
    out = output(out, fn, "out", xs, dy.dtype)
    no_overlap(fn, out, "out", {"dy": dy, "argmax": argmax, "mask": mask})
    # the kernel checks the argmax range as it scatters (no extra pass) and skips bad entries
    bad = pick("conv", variant).maxpool2d_backward(dy, argmax, out, mask,
                                                   _threads.get_num_threads())
    if bad:
        raise ValueError(f"{fn}: argmax entries must be in [0, H*W) = [0, {xs[1] * xs[2]}) for "
                         f"x_shape {xs}")
    return out


def avgpool2d_forward(x: npt.ArrayLike, pool: Any = (2, 2), stride: Any = None,
                      out: Optional[Array] = None, *, variant: Optional[str] = None) -> Array:
    """Average pooling without padding; ``stride`` defaults to ``pool``.

        y[n, oh, ow, c] = (1 / (ph*pw)) * sum_{i < ph, j < pw} x[n, oh*sh + i, ow*sw + j, c]

    Shapes: x (N, H, W, C), out (N, OH, OW, C).

    >>> import numpy as np
    >>> from fastnn.kernels import avgpool2d_forward
    >>> float(avgpool2d_forward(np.arange(4.0).reshape(1, 2, 2, 1), (2, 2))[0, 0, 0, 0])
    1.5
    """
    fn = "avgpool2d_forward"
    check_variant(fn, variant)
    x = float_input(x, fn, "x", ndim=4)
    p, s = _pool_stride(fn, pool, stride)
    OH, OW = _pool_out(fn, x.shape, p, s)
    out = output(out, fn, "out", (x.shape[0], OH, OW, x.shape[3]), x.dtype)
    no_overlap(fn, out, "out", {"x": x})
    pick("conv", variant).avgpool2d_forward(x, p, s, out, _threads.get_num_threads())
    return out


def avgpool2d_backward(dy: npt.ArrayLike, x_shape: Sequence[int], pool: Any = (2, 2),
                       stride: Any = None, out: Optional[Array] = None, *,
                       variant: Optional[str] = None) -> Array:
    """Gradient of average pooling: ``dx[window] += dy / (ph*pw)`` (overlaps add).

    Shapes: dy (N, OH, OW, C), out (N, H, W, C) = x_shape.

    >>> import numpy as np
    >>> from fastnn.kernels import avgpool2d_backward
    >>> avgpool2d_backward(np.ones((1, 1, 1, 1)), (1, 2, 2, 1), (2, 2))[0, :, :, 0].tolist()
    [[0.25, 0.25], [0.25, 0.25]]
    """
    fn = "avgpool2d_backward"
    check_variant(fn, variant)
    dy = float_input(dy, fn, "dy", ndim=4)
    xs = _shape4(x_shape, fn, "x_shape")
    p, s = _pool_stride(fn, pool, stride)
    OH, OW = _pool_out(fn, xs, p, s)
    want = (xs[0], OH, OW, xs[3])
    if dy.shape != want:
        raise ShapeError(f"{fn}: dy must have shape {want} (x_shape {xs}, pool {p}, stride {s}),"
                         f" got {dy.shape}")
    out = output(out, fn, "out", xs, dy.dtype)
    no_overlap(fn, out, "out", {"dy": dy})
    pick("conv", variant).avgpool2d_backward(dy, p, s, out, _threads.get_num_threads())
    return out
