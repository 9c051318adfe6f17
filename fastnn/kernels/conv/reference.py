"""The specification of the conv family (2-D convolution and pooling), in float64 numpy.

Layout: activations NHWC (N, H, W, C); weights HWIO (KH, KW, Cin, Cout);
padding (top, bottom, left, right); stride (sh, sw).

    OH = (H + top + bottom - KH) // sh + 1        OW likewise
    xp = x zero-padded                            (N, H+top+bottom, W+left+right, Cin)
    cols[n,oh,ow, (kh,kw,ci)] = xp[n, oh*sh+kh, ow*sw+kw, ci]      "im2col", (M, K) with
                                                  M = N*OH*OW, K = KH*KW*Cin
    conv2d_forward:          y  = act(cols @ w.reshape(K, Cout) + bias)    -> (N, OH, OW, Cout)
    conv2d_backward_data:    dx = col2im(dy @ w.reshape(K, Cout)^T) * (mask > 0)
                             (col2im adds every column entry back where im2col read it)
    conv2d_backward_weights: dw (+)= (cols^T @ dy).reshape(KH, KW, Cin, Cout);
                             dbias (+)= sum of dy over N, OH, OW
    maxpool2d_forward:       y[n,oh,ow,c] = max over the window xv = x[n, oh*sh:oh*sh+ph, ow*sw:ow*sw+pw, c];
                             argmax = flat index h*W + w (within the image, per channel) of the
                             first maximum in window row-major order; a NaN counts as the
                             maximum (the first NaN wins, as np.argmax)
    maxpool2d_backward:      dx = 0; dx[n, argmax, c] += dy[n, oh, ow, c]
    avgpool2d_forward:       y = mean of the window (no padding: ph*pw terms)
    avgpool2d_backward:      dx[window] += dy / (ph*pw)

bf16 (float32 only, ``bf16=True`` on the three conv functions): every product takes
bf16-rounded inputs (round to nearest even, ``fastnn.kernels.matmul.reference.bf16_round``):
x and w in the forward, dy and w in the backward data, x and dy in the backward weights;
sums, bias, ReLU, the mask and dbias stay in full precision.

Variant interface (arrays arrive validated, C-contiguous, of one dtype; outputs
are written; ``workspace`` is a 1-D array of at least ``workspace_size`` elements,
``plan`` the tuple from ``plan``; ``nthreads`` the thread count):

    conv2d_forward(x, w, bias|None, stride, padding, relu, out, workspace, plan, nthreads, bf16)
    conv2d_backward_data(dy, w, stride, padding, out, mask|None, workspace, plan, nthreads, bf16)
    conv2d_backward_weights(x, dy, stride, padding, dw, dbias|None, accumulate, workspace,
                            plan, nthreads, bf16)
    maxpool2d_forward(x, pool, stride, out, argmax, nthreads)
    maxpool2d_backward(dy, argmax, out, nthreads)
    avgpool2d_forward(x, pool, stride, out, nthreads)
    avgpool2d_backward(dy, pool, stride, out, nthreads)

The plan (the same for every thread count, so results are too): the batch is
cut into chunks of ``chunk`` images whose im2col columns fit in COLS_CAP
elements; a chunk's rows are cut into at most MAX_BLOCKS blocks (ROW_BLOCK rows
or more) whose weight-gradient partials are added in block order.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from ..matmul.reference import bf16_round

Pair = Tuple[int, int]
Pad = Tuple[int, int, int, int]

COLS_CAP = 1 << 22      # elements of im2col columns held at once (16 MiB in float32)
ROW_BLOCK = 512         # minimum rows of a weight-gradient block
MAX_BLOCKS = 16         # weight-gradient partials per chunk (fixed: determinism)


def out_size(H: int, W: int, KH: int, KW: int, stride: Pair, padding: Pad) -> Pair:
    """(OH, OW); either may be < 1 when the window does not fit (the caller checks)."""
    top, bottom, left, right = padding
    return ((H + top + bottom - KH) // stride[0] + 1, (W + left + right - KW) // stride[1] + 1)


def plan(N: int, H: int, W: int, Cin: int, KH: int, KW: int, Cout: int, stride: Pair,
         padding: Pad) -> Tuple[int, int, int, int]:
    """(chunk, row_block, max_blocks, workspace elements) for a convolution."""
    OH, OW = out_size(H, W, KH, KW, stride, padding)
    P, K = max(OH * OW, 1), KH * KW * Cin
    max_imgs = max(1, COLS_CAP // max(P * K, 1))
    nchunks = max(1, -(-N // max_imgs))
    chunk = max(1, -(-N // nchunks))
    # dbias partials (double: 2 elements each, first so they are 8-byte aligned),
    # weight partials, then the columns of one chunk
    size = 2 * MAX_BLOCKS * Cout + MAX_BLOCKS * K * Cout + chunk * P * K
    return chunk, ROW_BLOCK, MAX_BLOCKS, size


def im2col(x: npt.NDArray[Any], KH: int, KW: int, stride: Pair, padding: Pad) -> npt.NDArray[np.float64]:
    """cols (N*OH*OW, KH*KW*Cin) in float64."""
    top, bottom, left, right = padding
    xp = np.pad(np.asarray(x, dtype=np.float64), ((0, 0), (top, bottom), (left, right), (0, 0)))
    N, C = x.shape[0], x.shape[3]
    v = sliding_window_view(xp, (KH, KW), axis=(1, 2))[:, ::stride[0], ::stride[1]]
    # v: (N, OH, OW, C, KH, KW) -> (N, OH, OW, KH, KW, C)
    OH, OW = v.shape[1], v.shape[2]
    return np.ascontiguousarray(v.transpose(0, 1, 2, 4, 5, 3)).reshape(N * OH * OW, KH * KW * C)


def col2im(cols: npt.NDArray[np.float64], x_shape: Sequence[int], KH: int, KW: int,
           stride: Pair, padding: Pad) -> npt.NDArray[np.float64]:
    """The adjoint of im2col: every column entry added back where im2col read it."""
    N, H, W, C = x_shape
    top, bottom, left, right = padding
    OH, OW = out_size(H, W, KH, KW, stride, padding)
    sh, sw = stride
    c6 = cols.reshape(N, OH, OW, KH, KW, C)
    xp = np.zeros((N, H + top + bottom, W + left + right, C))
    for kh in range(KH):
        for kw in range(KW):
            xp[:, kh:kh + sh * (OH - 1) + 1:sh, kw:kw + sw * (OW - 1) + 1:sw, :] += c6[:, :, :, kh, kw, :]
    return xp[:, top:top + H, left:left + W, :]


def _bf16(a: npt.ArrayLike, on: bool) -> npt.NDArray[Any]:
    """``a`` rounded to bfloat16 (as float32) when ``on``: the inputs of every product of
    a bf16 convolution; sums, bias, ReLU, masks and dbias stay in full precision."""
    return bf16_round(np.asarray(a, dtype=np.float32)) if on else np.asarray(a)


def conv2d_forward(x: npt.NDArray[Any], w: npt.NDArray[Any], bias: Optional[npt.NDArray[Any]],
                   stride: Pair, padding: Pad, relu: bool, out: npt.NDArray[Any],
                   workspace: Any = None, plan: Any = None, nthreads: int = 1,
                   bf16: bool = False) -> npt.NDArray[Any]:
    KH, KW, Cin, Cout = w.shape
    cols = im2col(_bf16(x, bf16), KH, KW, stride, padding)
    y = cols @ np.asarray(_bf16(w, bf16), dtype=np.float64).reshape(KH * KW * Cin, Cout)
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64)
    if relu:
        y = np.maximum(y, 0.0)
    out[...] = y.reshape(out.shape)
    return out


def conv2d_backward_data(dy: npt.NDArray[Any], w: npt.NDArray[Any], stride: Pair, padding: Pad,
                         out: npt.NDArray[Any], mask: Optional[npt.NDArray[Any]] = None,
                         workspace: Any = None, plan: Any = None,
                         nthreads: int = 1, bf16: bool = False) -> npt.NDArray[Any]:
    KH, KW, Cin, Cout = w.shape
    dcols = np.asarray(_bf16(dy, bf16), dtype=np.float64).reshape(-1, Cout) @ \
        np.asarray(_bf16(w, bf16), dtype=np.float64).reshape(KH * KW * Cin, Cout).T
    dx = col2im(dcols, out.shape, KH, KW, stride, padding)
    if mask is not None:
        dx = np.where(np.asarray(mask) > 0, dx, 0.0)
    out[...] = dx
    return out


def conv2d_backward_weights(x: npt.NDArray[Any], dy: npt.NDArray[Any], stride: Pair, padding: Pad,
                            dw: npt.NDArray[Any], dbias: Optional[npt.NDArray[Any]],
                            accumulate: bool, workspace: Any = None, plan: Any = None,
                            nthreads: int = 1, bf16: bool = False) -> npt.NDArray[Any]:
    KH, KW, Cin, Cout = dw.shape
    cols = im2col(_bf16(x, bf16), KH, KW, stride, padding)
    d64 = np.asarray(dy, dtype=np.float64).reshape(-1, Cout)
    g = (cols.T @ np.asarray(_bf16(d64, bf16), dtype=np.float64)).reshape(dw.shape)
    dw[...] = (np.asarray(dw, dtype=np.float64) + g) if accumulate else g
    if dbias is not None:
        s = d64.sum(axis=0)
        dbias[...] = (np.asarray(dbias, dtype=np.float64) + s) if accumulate else s
    return dw


def _windows(x: npt.NDArray[Any], pool: Pair, stride: Pair) -> npt.NDArray[np.float64]:
    """(N, OH, OW, C, ph*pw) windows, row-major within a window."""
    v = sliding_window_view(np.asarray(x, dtype=np.float64), pool, axis=(1, 2))
    v = v[:, ::stride[0], ::stride[1]]
    return v.reshape(v.shape[:4] + (pool[0] * pool[1],))


def maxpool2d_forward(x: npt.NDArray[Any], pool: Pair, stride: Pair, out: npt.NDArray[Any],
                      argmax: npt.NDArray[np.int32], nthreads: int = 1) -> npt.NDArray[Any]:
    W = x.shape[2]
    win = _windows(x, pool, stride)
    a = np.argmax(win, axis=-1)            # first maximum; first NaN if any
    out[...] = np.take_along_axis(win, a[..., None], axis=-1)[..., 0]
    OH, OW = out.shape[1], out.shape[2]
    oh = np.arange(OH).reshape(1, OH, 1, 1)
    ow = np.arange(OW).reshape(1, 1, OW, 1)
    h = oh * stride[0] + a // pool[1]
    ww = ow * stride[1] + a % pool[1]
    argmax[...] = h * W + ww
    return out


def maxpool2d_backward(dy: npt.NDArray[Any], argmax: npt.NDArray[np.int32],
                       out: npt.NDArray[Any], mask: Optional[npt.NDArray[Any]] = None,
                       nthreads: int = 1) -> int:
    """out = the scatter of dy (times mask > 0) to argmax; returns the number of
    argmax entries outside [0, H*W), which are skipped."""
    N, H, W, C = out.shape
    g = np.asarray(dy, dtype=np.float64)
    if mask is not None:
        g = np.where(np.asarray(mask) > 0, g, 0.0)
    ok = (argmax >= 0) & (argmax < H * W)
    dx = np.zeros((N, H * W, C))
    n = np.broadcast_to(np.arange(N).reshape(N, 1, 1, 1), argmax.shape)
    c = np.broadcast_to(np.arange(C).reshape(1, 1, 1, C), argmax.shape)
    np.add.at(dx, (n[ok], argmax[ok], c[ok]), g[ok])
    out[...] = dx.reshape(out.shape)
    return int(np.count_nonzero(~ok))


def avgpool2d_forward(x: npt.NDArray[Any], pool: Pair, stride: Pair, out: npt.NDArray[Any],
                      nthreads: int = 1) -> npt.NDArray[Any]:
    out[...] = _windows(x, pool, stride).mean(axis=-1)
    return out


def avgpool2d_backward(dy: npt.NDArray[Any], pool: Pair, stride: Pair, out: npt.NDArray[Any],
                       nthreads: int = 1) -> npt.NDArray[Any]:
    N, H, W, C = out.shape
    OH, OW = dy.shape[1], dy.shape[2]
    g = np.asarray(dy, dtype=np.float64) / (pool[0] * pool[1])
    dx = np.zeros((N, H, W, C))
    sh, sw = stride
    for i in range(pool[0]):
        for j in range(pool[1]):
            dx[:, i:i + sh * (OH - 1) + 1:sh, j:j + sw * (OW - 1) + 1:sw, :] += g
    out[...] = dx
    return out
