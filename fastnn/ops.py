"""The tutorial's ops, with TensorFlow's names: ``fastnn.one_hot``, ``fastnn.softmax``,
``fastnn.softmax_cross_entropy_with_logits``, ``fastnn.argmax``, ...

They run on fastnn's kernels (``fastnn.kernels.softmax``, ``softmax_xent``)
and differ from TensorFlow where TensorFlow is silently forgiving: an
out-of-range class index is an error here, not a row of zeros.

NaN: NaN in a row of logits gives NaN for that row's probabilities and loss
(it is not masked); ``argmax`` follows numpy (the first NaN wins);
``accuracy`` counts a row whose prediction is NaN as wrong only through
argmax, so check the loss for NaN first.
"""
from __future__ import annotations

import numbers
from typing import Any, Callable, SupportsIndex

import numpy as np
import numpy.typing as npt

from .errors import DTypeError, ShapeError
from .kernels import xent as _xent

__all__ = ["one_hot", "softmax", "log_softmax", "softmax_cross_entropy_with_logits",
           "sparse_softmax_cross_entropy_with_logits", "argmax", "accuracy"]

_XENT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def _int_indices(indices: npt.ArrayLike, fn: str, name: str) -> npt.NDArray[Any]:
    a = np.asarray(indices)
    if a.dtype.kind not in "iu":
        raise DTypeError(f"{fn}: {name} must be integers (class indices), got dtype {a.dtype}")
    return a


def one_hot(indices: npt.ArrayLike, depth: SupportsIndex, on_value: float = 1.0,
            off_value: float = 0.0, dtype: npt.DTypeLike = np.float32) -> npt.NDArray[Any]:
    """One-hot encoding: ``out[..., k] = on_value if indices[...] == k else off_value``.

    Shapes: indices any shape of integers in [0, depth); the result has shape
    ``indices.shape + (depth,)`` and the given dtype.

    Unlike TensorFlow's ``tf.one_hot``, which silently writes a row of
    ``off_value`` for an index outside [0, depth), this raises ValueError
    naming the bad value: a wrong label is a bug, not data.

    >>> import fastnn
    >>> fastnn.one_hot([0, 2], 3).tolist()
    [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    """
    fn = "one_hot"
    if isinstance(depth, (bool, np.bool_)) or not isinstance(depth, numbers.Integral):
        raise TypeError(f"{fn}: depth must be a positive integer, got {type(depth).__name__}")
    depth = int(depth)
    if depth <= 0:
        raise ValueError(f"{fn}: depth must be a positive integer, got {depth}")
    idx = _int_indices(indices, fn, "indices")
    try:
        dtype = np.dtype(dtype)
    except TypeError as exc:
        raise DTypeError(f"{fn}: dtype {dtype!r} is not a numpy dtype") from exc
    bad = (idx < 0) | (idx >= depth)
    if bad.any():
        pos = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{fn}: indices{list(pos)} = {int(idx[pos])} is outside [0, {depth}) "
                         f"({int(bad.sum())} bad index(es) in all)")
    out = np.full(idx.shape + (depth,), off_value, dtype=dtype)
    np.put_along_axis(out, idx[..., None].astype(np.intp), np.asarray(on_value, dtype=dtype),
                      axis=-1)
    return out


def _float_array(x: npt.ArrayLike, fn: str, name: str) -> npt.NDArray[np.floating]:
    a = np.asarray(x)
    if a.dtype not in _XENT_DTYPES:
        raise DTypeError(f"{fn}: {name} must be float16, float32 or float64, got dtype {a.dtype}")
    return a


def _axis(a: npt.NDArray[Any], axis: SupportsIndex, fn: str) -> int:
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"{fn}: axis must be an integer, got {type(axis).__name__}")
    if a.ndim == 0:
        raise ShapeError(f"{fn}: x must have at least one dimension, got a scalar")
    # typeshed's numbers.Integral declares __lt__ but not __ge__
    if not -a.ndim <= axis < a.ndim:  # type: ignore[operator]
        raise ShapeError(f"{fn}: axis {axis} is out of range for an array of rank {a.ndim}")
    return int(axis) % a.ndim


def _rowwise(x: npt.ArrayLike, axis: SupportsIndex, fn: str,
             kernel: Callable[..., npt.NDArray[np.floating]]) -> npt.NDArray[np.floating]:
    a = _float_array(x, fn, "x")
    ax = _axis(a, axis, fn)
    work = np.float32 if a.dtype == np.float16 else a.dtype
    moved = np.moveaxis(a, ax, -1)
    n_rows = int(np.prod(moved.shape[:-1], dtype=np.int64))
    rows = np.ascontiguousarray(moved, dtype=work).reshape(n_rows, moved.shape[-1])
    res = kernel(rows, out=np.empty_like(rows))     # never writes the caller's array
    return np.moveaxis(res.reshape(moved.shape).astype(a.dtype, copy=False), -1, ax)


def softmax(x: npt.ArrayLike, axis: SupportsIndex = -1) -> npt.NDArray[np.floating]:
    """``exp(x - max) / sum(exp(x - max))`` along ``axis`` (any rank, any axis).

    float16 is computed in float32 and returned as float16.

    >>> import numpy as np, fastnn
    >>> fastnn.softmax(np.zeros((2, 2), np.float32), axis=0).tolist()
    [[0.5, 0.5], [0.5, 0.5]]
    """
    return _rowwise(x, axis, "softmax", _xent.softmax)


def log_softmax(x: npt.ArrayLike, axis: SupportsIndex = -1) -> npt.NDArray[np.floating]:
    """``x - max - log(sum(exp(x - max)))`` along ``axis`` (any rank, any axis).

    >>> import numpy as np, fastnn
    >>> round(float(fastnn.log_softmax(np.zeros(4))[0]), 6)
    -1.386294
    """
    return _rowwise(x, axis, "log_softmax", _xent.log_softmax)


def _logits_2d(logits: npt.ArrayLike, fn: str) -> npt.NDArray[np.floating]:
    z = _float_array(logits, fn, "logits")
    if z.ndim != 2:
        raise ShapeError(f"{fn}: logits must be 2-D [batch, classes], got shape {z.shape}")
    if z.shape[1] == 0:
        raise ShapeError(f"{fn}: logits must have at least one class, got shape {z.shape}")
    return z


def softmax_cross_entropy_with_logits(*, labels: npt.ArrayLike,
                                      logits: npt.ArrayLike) -> npt.NDArray[np.floating]:
    """Per-example cross-entropy between probability rows ``labels`` and softmax(logits):

        loss_b = -sum_c labels[b, c] * log_softmax(logits[b])_c

    Shapes: labels and logits both [batch, classes] with the same float dtype
    (float16, float32 or float64); returns [batch] in that dtype (float16 is
    computed in float32).  An empty batch gives an empty result.  Arguments
    are keyword-only, as in TensorFlow 2.

    >>> import numpy as np, fastnn
    >>> z = np.zeros((1, 2), np.float32); t = np.array([[0.0, 1.0]], np.float32)
    >>> round(float(fastnn.softmax_cross_entropy_with_logits(labels=t, logits=z)[0]), 6)
    0.693147
    """
    fn = "softmax_cross_entropy_with_logits"
    z = _logits_2d(logits, fn)
    t = _float_array(labels, fn, "labels")
    if t.dtype != z.dtype:
        raise DTypeError(f"{fn}: labels and logits must have the same dtype, got {t.dtype} "
                         f"and {z.dtype}")
    if t.shape != z.shape:
        raise ShapeError(f"{fn}: labels and logits must have the same shape [batch, classes], "
                         f"got {t.shape} and {z.shape}")
    work = np.float32 if z.dtype == np.float16 else z.dtype
    losses = _xent.softmax_xent(z.astype(work, copy=False), t.astype(work, copy=False))
    return losses.astype(z.dtype, copy=False)


def sparse_softmax_cross_entropy_with_logits(*, labels: npt.ArrayLike,
                                             logits: npt.ArrayLike) -> npt.NDArray[np.floating]:
    """Per-example cross-entropy with integer class ``labels``:

        loss_b = -log_softmax(logits[b])[labels[b]]

    Shapes: labels [batch] integers in [0, classes) (an index out of range
    raises ValueError naming it); logits [batch, classes] float16/32/64;
    returns [batch] in the logits' dtype.

    >>> import numpy as np, fastnn
    >>> z = np.zeros((1, 4), np.float64)
    >>> round(float(fastnn.sparse_softmax_cross_entropy_with_logits(labels=[3], logits=z)[0]), 6)
    1.386294
    """
    fn = "sparse_softmax_cross_entropy_with_logits"
    z = _logits_2d(logits, fn)
    y = _int_indices(labels, fn, "labels")
    if y.ndim != 1 or y.shape[0] != z.shape[0]:
        raise ShapeError(f"{fn}: labels must have shape [batch] = ({z.shape[0]},) to match "
                         f"logits {z.shape}, got {y.shape}")
    work = np.float32 if z.dtype == np.float16 else z.dtype
    losses = _xent.softmax_xent(z.astype(work, copy=False), y)
    return losses.astype(z.dtype, copy=False)


def argmax(x: npt.ArrayLike, axis: SupportsIndex = -1) -> npt.NDArray[np.int64]:
    """Index of the largest value along ``axis`` (the first one on ties), as int64.

    >>> import fastnn
    >>> fastnn.argmax([[1, 3, 2]]).tolist()
    [1]
    """
    a = np.asarray(x)
    ax = _axis(a, axis, "argmax")
    if a.shape[ax] == 0:
        raise ShapeError(f"argmax: axis {axis} has length 0; there is no largest value")
    return np.argmax(a, axis=ax).astype(np.int64, copy=False)


def accuracy(logits_or_probs: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Fraction of rows whose argmax matches the label, as a Python float.

    Shapes: logits_or_probs [batch, classes]; labels [batch] class indices or
    [batch, classes] one-hot (or probability) rows, compared by their argmax.
    An empty batch raises ValueError (the accuracy of nothing is undefined).

    >>> import numpy as np, fastnn
    >>> fastnn.accuracy(np.array([[0.1, 0.9], [0.8, 0.2]]), [1, 1])
    0.5
    """
    fn = "accuracy"
    z = np.asarray(logits_or_probs)
    if z.dtype.kind not in "fiu":
        raise DTypeError(f"{fn}: logits_or_probs must be numeric, got dtype {z.dtype}")
    if z.ndim != 2:
        raise ShapeError(f"{fn}: logits_or_probs must be 2-D [batch, classes], got shape "
                         f"{z.shape}")
    B, C = z.shape
    if B == 0:
        raise ValueError(f"{fn}: empty batch; accuracy is undefined for 0 examples")
    if C == 0:
        raise ShapeError(f"{fn}: logits_or_probs has no classes (shape {z.shape})")
    y = np.asarray(labels)
    if y.ndim == 1:
        if y.dtype.kind not in "iu":
            raise DTypeError(f"{fn}: 1-D labels must be integer class indices, got dtype "
                             f"{y.dtype}")
        if y.shape[0] != B:
            raise ShapeError(f"{fn}: labels has {y.shape[0]} entries for {B} rows")
        bad = (y < 0) | (y >= C)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{fn}: labels[{i}] = {int(y[i])} is not a class index in "
                             f"[0, {C})")
        target = y
    elif y.ndim == 2:
        if y.dtype.kind not in "fiub":
            raise DTypeError(f"{fn}: one-hot labels must be numeric, got dtype {y.dtype}")
        if y.shape != (B, C):
            raise ShapeError(f"{fn}: one-hot labels must have shape {(B, C)}, got {y.shape}")
        target = np.argmax(y, axis=1)
    else:
        raise ShapeError(f"{fn}: labels must be [batch] indices or [batch, classes] one-hot, "
                         f"got shape {y.shape}")
    return float(np.mean(np.argmax(z, axis=1) == target))
