"""The xent family: row-wise softmax, log-softmax and the fused softmax
cross-entropy (loss and its gradient in one pass over each row).

Variants (see ``fastnn.kernels.variants("xent")``); each is a module-like
object with ``softmax_xent``, ``softmax`` and ``log_softmax`` (interface in
``fastnn/kernels/xent/reference.py``):

    reference  numpy in float64, the specification    fastnn/kernels/xent/reference.py
    numba      prange over rows                        fastnn/kernels/xent/numba_impl.py
    cython     OpenMP prange over rows, plain C math    kernels/xent/xent_cy.pyx
    c          OpenMP over rows, AVX2/FMA exp           kernels/xent/xent.c, kernels/xent/xent_c.pyx
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import numpy.typing as npt

from ... import _threads
from ...errors import DTypeError, ShapeError
from .._registry import register_module_variants
from .._checks import (check_variant, float_input, no_overlap, output, pick,
                                   real_scalar)

__all__ = ["softmax_xent", "softmax", "log_softmax"]


register_module_variants("xent", __name__, "xent",
                         numba="Numba, prange over rows",
                         cython="Cython, OpenMP prange over rows",
                         c="C, OpenMP over rows, AVX2/FMA exp, fused loss+grad")


def _labels(labels: npt.ArrayLike, B: int, C: int, dtype: np.dtype[Any],
            fn: str) -> npt.NDArray[Any]:
    """Class indices as contiguous int64 (range-checked) or probability rows."""
    if not isinstance(labels, np.ndarray):
        labels = np.asarray(labels)
    if labels.ndim == 1:
        if labels.dtype.kind not in "iu":
            raise DTypeError(f"{fn}: 1-D labels must be integer class indices, got dtype "
                             f"{labels.dtype} (pass probability rows as a 2-D array)")
        if labels.shape[0] != B:
            raise ShapeError(f"{fn}: labels has {labels.shape[0]} entries but logits has "
                             f"{B} rows")
        if B and (labels.min() < 0 or labels.max() >= C):
            bad = np.flatnonzero((labels < 0) | (labels >= C))
            if bad.size:
                i = int(bad[0])
                raise ValueError(f"{fn}: labels[{i}] = {int(labels[i])} is not a class index "
                                 f"in [0, {C}) ({bad.size} bad label(s) in all)")
        return np.require(labels, dtype=np.int64, requirements=("C", "A"))
    if labels.ndim == 2:
        if labels.dtype != dtype:
            raise DTypeError(f"{fn}: probability labels must have the logits' dtype {dtype}, "
                             f"got {labels.dtype}")
        if labels.shape != (B, C):
            raise ShapeError(f"{fn}: probability labels must have the logits' shape {(B, C)}, "
                             f"got {labels.shape}")
        return np.require(labels, requirements=("C", "A"))
    raise ShapeError(f"{fn}: labels must be class indices (B,) or probability rows (B, C), "
                     f"got shape {labels.shape}")


def softmax_xent(logits: npt.ArrayLike, labels: npt.ArrayLike, *,
                 losses: Optional[npt.NDArray[np.floating]] = None,
                 dlogits: Optional[npt.NDArray[np.floating]] = None, grad_scale: float = 1.0,
                 label_smoothing: float = 0.0,
                 variant: Optional[str] = None) -> npt.NDArray[np.floating]:
    """Per-example softmax cross-entropy and, fused in the same pass, its gradient.

        t'       = (1 - label_smoothing) * t + label_smoothing / C
        losses_b = -sum_c t'_bc * log_softmax(logits_b)_c
        dlogits  = (softmax(logits) - t') * grad_scale           (only when dlogits is given)

    t is one-hot when ``labels`` are class indices.  The max of each row is
    subtracted first, so any finite logits (even +-1e4) give finite results;
    NaN or inf in a row gives NaN for that row.  Probability labels are used
    as given (not checked to sum to 1).

    Shapes: logits (B, C) float32/float64; labels (B,) integers in [0, C) or
    (B, C) of the logits' dtype; losses (B,) and dlogits (B, C) of the logits'
    dtype, C-contiguous, not overlapping the inputs.  Parallel over rows.
    ``grad_scale`` is typically 1/B (gradient of the mean loss).

    >>> import numpy as np
    >>> from fastnn.kernels import softmax_xent
    >>> z = np.array([[0.0, 0.0]], np.float32)
    >>> d = np.empty_like(z)
    >>> float(softmax_xent(z, np.array([1]), dlogits=d)[0]), d.tolist()
    (0.6931471824645996, [[0.5, -0.5]])
    """
    fn = "softmax_xent"
    check_variant(fn, variant)
    logits = float_input(logits, fn, "logits", ndim=2)
    B, C = logits.shape
    if C == 0:
        raise ShapeError(f"{fn}: logits must have at least one class (column), got shape "
                         f"{logits.shape}")
    labels = _labels(labels, B, C, logits.dtype, fn)
    grad_scale = real_scalar(grad_scale, fn, "grad_scale")
    label_smoothing = real_scalar(label_smoothing, fn, "label_smoothing", lo=0.0, hi=1.0)
    losses = output(losses, fn, "losses", (B,), logits.dtype)
    no_overlap(fn, losses, "losses", {"logits": logits, "labels": labels})
    if dlogits is not None:
        dlogits = output(dlogits, fn, "dlogits", (B, C), logits.dtype)
        no_overlap(fn, dlogits, "dlogits",
                   {"logits": logits, "labels": labels, "losses": losses})
    impl = pick("xent", variant)
    impl.softmax_xent(logits, labels, losses, dlogits, grad_scale, label_smoothing,
                      _threads.get_num_threads())
    return losses


def _rowwise(x: npt.ArrayLike, out: Optional[npt.NDArray[np.floating]], variant: Optional[str],
             fn: str) -> npt.NDArray[np.floating]:
    check_variant(fn, variant)
    x = float_input(x, fn, "x", ndim=2)
    out = output(out, fn, "out", x.shape, x.dtype)
    # Both kernels read a row fully before writing it element by element, so
    # out may be x itself (in place), but not a shifted view of it.
    no_overlap(fn, out, "out", {"x": x}, allow_same=("x",))
    impl = pick("xent", variant)
    getattr(impl, fn)(x, out, _threads.get_num_threads())
    return out


def softmax(x: npt.ArrayLike, out: Optional[npt.NDArray[np.floating]] = None, *,
            variant: Optional[str] = None) -> npt.NDArray[np.floating]:
    """Row-wise softmax: ``out[b, c] = exp(x[b, c] - max_k x[b, k]) / sum_k exp(x[b, k] - max)``.

    Shapes: x (B, C) float32/float64, out the same (may be x itself).

    >>> import numpy as np
    >>> from fastnn.kernels import softmax
    >>> softmax(np.zeros((1, 4), np.float32)).tolist()
    [[0.25, 0.25, 0.25, 0.25]]
    """
    return _rowwise(x, out, variant, "softmax")


def log_softmax(x: npt.ArrayLike, out: Optional[npt.NDArray[np.floating]] = None, *,
                variant: Optional[str] = None) -> npt.NDArray[np.floating]:
    """Row-wise log-softmax: ``out[b, c] = x[b, c] - max_k x[b, k] - log sum_k exp(x[b, k] - max)``.

    Shapes: x (B, C) float32/float64, out the same (may be x itself).

    >>> import numpy as np
    >>> from fastnn.kernels import log_softmax
    >>> round(float(log_softmax(np.zeros((1, 2)))[0, 0]), 6)
    -0.693147
    """
    return _rowwise(x, out, variant, "log_softmax")
