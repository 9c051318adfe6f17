"""Loss functions: ``loss = loss_fn(outputs, targets)`` then ``dout = loss_fn.backward()``.

Every loss returns the MEAN over the batch as a Python float, and
``backward()`` returns d(mean loss)/d(outputs), an array shaped like the
outputs, ready for ``model.backward``.  The gradient is computed in the
same pass as the loss (for cross-entropy by the fused kernel), so
``backward()`` costs nothing but a lookup.

    SoftmaxCrossEntropy(label_smoothing=0.0)
        p = softmax(z) row-wise;  t = (1 - s) * target + s / C
        loss = mean_n( -sum_c t_nc log p_nc );   dL/dz = (p - t) / N
        targets: int class indices (N,) in [0, C), or rows of
        probabilities / one-hot (N, C).
    MeanSquaredError()
        loss = mean over all N*D elements of (y - t)^2;   dL/dy = 2 (y - t) / (N D)
    BinaryCrossEntropyWithLogits()
        loss = mean over all elements of  max(z, 0) - z t + log(1 + exp(-|z|))
        dL/dz = (sigmoid(z) - t) / (N D);  targets in [0, 1], same shape as z.

>>> import numpy as np
>>> from fastnn.losses import SoftmaxCrossEntropy
>>> loss_fn = SoftmaxCrossEntropy()
>>> round(loss_fn(np.zeros((2, 4), np.float32), np.array([0, 3])), 4)   # log(4)
1.3863
>>> loss_fn.backward().shape
(2, 4)
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple, Type, Union

import numpy as np
import numpy.typing as npt

from . import kernels
from ._validation import FLOATS as _FLOATS
from ._validation import real
from .errors import DTypeError, ShapeError
from .fusion import LossSpec, NotFusable, require_own_methods

__all__ = ["Loss", "SoftmaxCrossEntropy", "MeanSquaredError", "BinaryCrossEntropyWithLogits",
           "get_loss", "loss_from_config", "LOSS_CLASSES"]

def _check_outputs(y: Any, who: str) -> npt.NDArray[np.floating]:
    if not isinstance(y, np.ndarray):
        raise TypeError(f"{who}: outputs must be a numpy array, got {type(y).__name__}")
    if y.dtype not in _FLOATS:
        raise DTypeError(f"{who}: outputs must be float32 or float64, got {y.dtype}")
    if y.ndim != 2:
        raise ShapeError(f"{who}: outputs must be 2-D (batch, outputs), got shape {y.shape}")
    if y.shape[0] == 0:
        raise ShapeError(f"{who}: outputs is an empty batch (shape {y.shape})")
    if y.shape[1] == 0:
        raise ShapeError(f"{who}: outputs has no columns (shape {y.shape})")
    return y


def _float_targets(t: npt.ArrayLike, y: npt.NDArray[np.floating],
                   who: str) -> npt.NDArray[np.floating]:
    t = np.asarray(t)
    if t.dtype.kind not in "fiub":
        raise DTypeError(f"{who}: targets must be numeric, got dtype {t.dtype}")
    if t.shape != y.shape:
        raise ShapeError(f"{who}: targets must have the outputs' shape {y.shape}, got {t.shape}")
    if t.dtype != y.dtype:
        t = t.astype(y.dtype)
    return t


def _buffer(buf: Optional[npt.NDArray[Any]], shape: Tuple[int, ...],
            dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    if buf is not None and buf.shape == shape and buf.dtype == dtype:
        return buf
    return np.empty(shape, dtype)


def _per_thread(name: str) -> Any:
    """An attribute kept per thread, in ``self._tls`` (None until set)."""
    return property(lambda self: getattr(self._tls, name, None),
                    lambda self, value: setattr(self._tls, name, value))


class Loss:
    """Base class: ``__call__(outputs, targets) -> float``, ``backward() -> array``.

    The last call's buffers (the gradient, per-sample losses) are kept per
    thread, so one loss object can serve several Python threads: each
    thread's ``backward()`` is the gradient of its own last call."""

    def __init__(self) -> None:
        self._tls = threading.local()

    _grad: Optional[npt.NDArray[np.floating]] = _per_thread("grad")

    if TYPE_CHECKING:   # what every subclass implements
        def __call__(self, outputs: npt.NDArray[np.floating], targets: npt.ArrayLike) -> float: ...

    def __getstate__(self) -> Dict[str, Any]:   # copy / pickle: the settings, not the buffers
        state = self.__dict__.copy()
        del state["_tls"]
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._tls = threading.local()

    def backward(self) -> npt.NDArray[np.floating]:
        """d(mean loss)/d(outputs) of this thread's last call (a buffer reused by its
        next call)."""
        if self._grad is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before the loss")
        return self._grad

    def get_config(self) -> Dict[str, Any]:
        """The loss's settings as a JSON-able dict, ``{"class": name, **arguments}``;
        ``loss_from_config`` rebuilds the loss from it (checkpoints store it)."""
        return {"class": type(self).__name__}

    def fusion_spec(self) -> LossSpec:
        """What this loss is for the fused native trainer (``fastnn.fusion``)."""
        raise NotFusable(f"the fused trainer has no {type(self).__name__} loss")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "class")
        return f"{type(self).__name__}({args})"


class SoftmaxCrossEntropy(Loss):
    """Softmax + cross-entropy on logits, fused into one kernel pass (see module doc).

    Shapes: logits (N, C) float; targets (N,) integer class indices or
    (N, C) probability rows.  Returns the mean loss; ``backward()`` gives
    (N, C) = (softmax(logits) - t) / N.

    >>> import numpy as np
    >>> f = SoftmaxCrossEntropy(label_smoothing=0.1)
    >>> f(np.array([[2.0, 0.0]]), np.array([0])) > 0
    True
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = real(label_smoothing, "label_smoothing", "SoftmaxCrossEntropy",
                                    lo=0.0, hi=1.0)

    def fusion_spec(self) -> LossSpec:
        """The fused trainer's softmax cross-entropy on integer labels (no smoothing)."""
        require_own_methods(self, SoftmaxCrossEntropy, ("__call__", "backward"))
        if self.label_smoothing != 0.0:
            raise NotFusable(f"the fused trainer's cross-entropy has no label smoothing "
                             f"(label_smoothing={self.label_smoothing})")
        return LossSpec("softmax_cross_entropy")

    def __call__(self, logits: npt.NDArray[np.floating], targets: npt.ArrayLike) -> float:
        _check_outputs(logits, "SoftmaxCrossEntropy")
        n = logits.shape[0]
        targets = np.asarray(targets)
        if targets.ndim == 2 and targets.dtype != logits.dtype:
            if targets.dtype.kind not in "fiub":
                raise DTypeError(f"SoftmaxCrossEntropy: targets must be numeric, "
                                 f"got dtype {targets.dtype}")
            targets = targets.astype(logits.dtype)      # one-hot ints, other float widths
        self._grad = _buffer(self._grad, logits.shape, logits.dtype)
        self._losses = _buffer(self._losses, (n,), logits.dtype)
        # One fused pass: per-row losses and dlogits = (softmax - t') / N.  The
        # kernel validates the labels (range, shape) before touching memory.
        kernels.softmax_xent(logits, targets, losses=self._losses, dlogits=self._grad,
                                grad_scale=1.0 / n, label_smoothing=self.label_smoothing)
        return float(np.mean(self._losses, dtype=np.float64))

    _losses: Optional[npt.NDArray[np.floating]] = _per_thread("losses")

    @property
    def per_sample_losses(self) -> Optional[npt.NDArray[np.floating]]:
        """Per-row losses of this thread's last call, shape (N,)."""
        return self._losses

    def get_config(self) -> Dict[str, Any]:
        return {"class": "SoftmaxCrossEntropy", "label_smoothing": self.label_smoothing}


class MeanSquaredError(Loss):
    """loss = mean((y - t)^2) over all N*D elements;  dL/dy = 2 (y - t) / (N D).

    Shapes: outputs (N, D), targets (N, D) (or (N,) when D == 1).

    >>> import numpy as np
    >>> MeanSquaredError()(np.array([[1.0, 3.0]]), np.array([[0.0, 1.0]]))
    2.5
    """

    def __call__(self, outputs: npt.NDArray[np.floating], targets: npt.ArrayLike) -> float:
        y = _check_outputs(outputs, "MeanSquaredError")
        t = np.asarray(targets)
        if t.ndim == 1 and y.shape[1] == 1 and t.shape[0] == y.shape[0]:
            t = t.reshape(-1, 1)
        t = _float_targets(t, y, "MeanSquaredError")
        g = self._grad = _buffer(self._grad, y.shape, y.dtype)
        np.subtract(y, t, out=g)
        loss = float(np.vdot(g, g)) / g.size          # g is a fresh contiguous buffer
        g *= y.dtype.type(2.0 / g.size)
        return loss


class BinaryCrossEntropyWithLogits(Loss):
    """Sigmoid + binary cross-entropy on logits z, numerically stable:

        loss = mean( max(z, 0) - z t + log1p(exp(-|z|)) ),  dL/dz = (sigmoid(z) - t) / (N D)

    Shapes: logits (N, D), targets (N, D) in [0, 1] (or (N,) when D == 1).

    >>> import numpy as np
    >>> round(BinaryCrossEntropyWithLogits()(np.zeros((1, 1)), np.array([1.0])), 4)  # log 2
    0.6931
    """

    def __call__(self, logits: npt.NDArray[np.floating], targets: npt.ArrayLike) -> float:
        z = _check_outputs(logits, "BinaryCrossEntropyWithLogits")
        t = np.asarray(targets)
        if t.ndim == 1 and z.shape[1] == 1 and t.shape[0] == z.shape[0]:
            t = t.reshape(-1, 1)
        t = _float_targets(t, z, "BinaryCrossEntropyWithLogits")
        if (t < 0).any() or (t > 1).any():
            raise ValueError("BinaryCrossEntropyWithLogits: targets must lie in [0, 1]")
        elementwise = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
        loss = float(np.mean(elementwise, dtype=np.float64))
        g = self._grad = _buffer(self._grad, z.shape, z.dtype)
        kernels.activation_forward("sigmoid", z, out=g)
        g -= t
        g *= z.dtype.type(1.0 / g.size)
        return loss


LOSS_CLASSES: Dict[str, Type[Loss]]
LOSS_CLASSES = {cls.__name__: cls for cls in (SoftmaxCrossEntropy, MeanSquaredError,
                                              BinaryCrossEntropyWithLogits)}
_ALIASES = {"softmax_cross_entropy": "SoftmaxCrossEntropy", "cross_entropy": "SoftmaxCrossEntropy",
            "sce": "SoftmaxCrossEntropy", "mse": "MeanSquaredError",
            "bce": "BinaryCrossEntropyWithLogits",
            "bce_with_logits": "BinaryCrossEntropyWithLogits"}


def loss_from_config(cfg: Dict[str, Any]) -> Loss:
    """Rebuild a loss from ``loss.get_config()``."""
    if not isinstance(cfg, dict) or cfg.get("class") not in LOSS_CLASSES:
        raise ValueError(f"unknown loss config {cfg!r}; known classes: {sorted(LOSS_CLASSES)}")
    return LOSS_CLASSES[cfg["class"]](**{k: v for k, v in cfg.items() if k != "class"})


def get_loss(spec: Union[Loss, str]) -> Loss:
    """A loss from an instance, a class name, or an alias ("mse", "cross_entropy", ...)."""
    if isinstance(spec, Loss):
        return spec
    if isinstance(spec, str):
        name = _ALIASES.get(spec.lower(), spec)
        if name in LOSS_CLASSES:
            return LOSS_CLASSES[name]()
    raise ValueError(f"unknown loss {spec!r}; use one of {sorted(LOSS_CLASSES)} or "
                     f"{sorted(_ALIASES)}")
