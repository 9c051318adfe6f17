"""Ready-made models from the tutorial: ``Perceptron``, ``SoftmaxRegression``, ``MLP``.

``SoftmaxRegression`` and ``MLP`` are ``fastnn.Sequential`` models (train
them with ``SoftmaxCrossEntropy`` and any optimizer, or ``model.fit``); they
save and load as the ``Sequential`` they are.  ``Perceptron`` is
Rosenblatt's classic learner with its own ``fit``.

>>> import numpy as np
>>> from fastnn.models import MLP, SoftmaxRegression
>>> MLP([784, 128, 10], seed=0).count_params()
101770
>>> bool(SoftmaxRegression(784, 10).flat_params.any())     # zeros, as in the tutorial
False
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Dict, Iterable, List, Optional, SupportsFloat

import numpy as np
import numpy.typing as npt

from .errors import DTypeError, ShapeError
from .layers import Dense, Layer
from .sequential import Sequential

__all__ = ["Perceptron", "SoftmaxRegression", "MLP"]


class SoftmaxRegression(Sequential):
    """Multinomial logistic regression: ``logits = x @ W + b``, W (n_features, n_classes)
    starting at zero -- the tutorial's first TensorFlow model.  A Sequential with one
    ``Dense`` layer; pair it with ``losses.SoftmaxCrossEntropy``.

    >>> SoftmaxRegression(4, 3).parameters()[0].shape
    (4, 3)
    """

    def __init__(self, n_features: int, n_classes: int, dtype: npt.DTypeLike = np.float32) -> None:
        super().__init__([Dense(n_features, n_classes, init="zeros", dtype=dtype)])


class MLP(Sequential):
    """Multi-layer perceptron ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``.

    Hidden layers: ``Dense(..., activation=activation)`` (ReLU fused into the
    GEMM); the last layer outputs logits (no activation).  ``init`` as in
    ``Dense``; ``seed`` makes the initial weights reproducible.  A Sequential.

    >>> [l.out_features for l in MLP([20, 16, 12, 5])]
    [16, 12, 5]
    """

    def __init__(self, sizes: Iterable[int], activation: Optional[str] = "relu",
                 init: str = "torch", dtype: npt.DTypeLike = np.float32,
                 seed: Optional[int] = None) -> None:
        if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
            raise TypeError(f"MLP: sizes must be a list of layer widths, e.g. [784, 128, 10], "
                            f"got {type(sizes).__name__} {sizes!r:.40}")
        sizes = list(sizes)
        if len(sizes) < 2:
            raise ValueError(f"MLP: sizes must list at least the input and output widths, "
                             f"got {sizes!r}")
        layers: List[Layer] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            last = i == len(sizes) - 2
            layers.append(Dense(fan_in, fan_out, activation=None if last else activation,
                                init=init, dtype=dtype))
        super().__init__(layers, seed=seed)


# ============================================================================ perceptron

def _perceptron_epoch_py(x: npt.NDArray[np.floating], y: npt.NDArray[np.int64],
                         order: npt.NDArray[np.int64], w: npt.NDArray[np.float64],
                         b: npt.NDArray[np.float64], lr: float, binary: bool) -> int:
    """One pass of the perceptron rule over x[order] (the Numba kernel's source).

    x (N, D) float, y (N,) int64, order (N,) int64, w (K, D) float64, b (K,)
    float64; K = 1 when binary (target y == 1), else one-vs-rest (target
    y == k for unit k).  For each sample, for each unit k:
        s = w_k . x + b_k;  yhat = 1 if s > 0 else 0;  e = t - yhat
        w_k += lr * e * x;  b_k += lr * e
    Returns the number of samples with at least one unit wrong."""
    d = x.shape[1]
    k_units = w.shape[0]
    mistakes = 0
    for ii in range(order.shape[0]):
        i = order[ii]
        wrong = False
        for k in range(k_units):
            s = b[k]
            for j in range(d):
                s += w[k, j] * x[i, j]
            pred = 1.0 if s > 0.0 else 0.0
            if binary:
                target = 1.0 if y[i] == 1 else 0.0
            else:
                target = 1.0 if y[i] == k else 0.0
            err = target - pred
            if err != 0.0:
                wrong = True
                step = lr * err
                for j in range(d):
                    w[k, j] += step * x[i, j]
                b[k] += step
        if wrong:
            mistakes += 1
    return mistakes


_epoch_kernel: Optional[Callable[..., int]] = None


def _kernel() -> Callable[..., int]:
    """The Numba-compiled epoch (compiled on first use, cached on disk)."""
    global _epoch_kernel
    if _epoch_kernel is None:
        import numba
        # No fastmath: the rule compares s > 0 exactly and must match the spec.
        _epoch_kernel = numba.njit(cache=True, nogil=True)(_perceptron_epoch_py)
    return _epoch_kernel


class Perceptron:
    """Rosenblatt's perceptron, the tutorial's first model.

        yhat = step(w . x + b)          (step(s) = 1 if s > 0 else 0)
        w <- w + lr (y - yhat) x,   b <- b + lr (y - yhat)     for each sample in turn

    ``n_classes=2``: one unit, labels 0/1.  ``n_classes=K > 2``: K units
    trained one-vs-rest (unit k's target is ``y == k``), prediction
    ``argmax_k (w_k . x + b_k)``.  The rule is sequential per sample, so
    ``fit`` runs it as a compiled Numba loop (no Python loop over samples);
    prediction is one matmul.  Weights start at zero.

    Shapes: x (N, n_features) float, or uint8 images (scaled by 1/255) of
    any shape (N, ...) with n_features values per sample; y (N,) integers.

    ``fit(x, y, epochs=10, shuffle=True)`` stops early after an epoch with
    no mistakes (the data were separated); ``errors_`` lists the mistakes per
    epoch.  ``seed`` seeds the per-epoch shuffling.

    >>> import numpy as np
    >>> x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float64)
    >>> p = Perceptron(2).fit(x, np.array([0, 0, 0, 1]), epochs=20)   # logical AND
    >>> p.predict(x).tolist()
    [0, 0, 0, 1]
    """

    def __init__(self, n_features: int, n_classes: int = 2, lr: SupportsFloat = 1.0,
                 seed: Optional[int] = None) -> None:
        for name, v, lo in (("n_features", n_features, 1), ("n_classes", n_classes, 2)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"Perceptron: {name} must be an integer >= {lo}, got {v!r}")
        if isinstance(lr, (bool, np.bool_)) or not isinstance(lr, numbers.Real):
            raise TypeError(f"Perceptron: lr must be a real number > 0, got {type(lr).__name__}")
        lr = float(lr)
        if not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"Perceptron: lr must be a finite number > 0, got {lr!r}")
        self.n_features = int(n_features)
        self.n_classes = int(n_classes)
        self.lr = lr
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        units = 1 if self.n_classes == 2 else self.n_classes
        self.weights = np.zeros((units, self.n_features))   # (units, n_features), float64
        self.bias = np.zeros(units)
        self.errors_: List[int] = []

    # -- inputs ---------------------------------------------------------------------
    def _features(self, x: Any) -> npt.NDArray[np.floating]:
        x = np.asarray(x)
        if x.dtype == np.uint8:
            x = np.multiply(x, np.float32(1.0 / 255.0), dtype=np.float32)
        elif x.dtype.kind != "f":
            raise DTypeError(f"Perceptron: x must be float or uint8 images, got dtype {x.dtype}")
        elif x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float64)
        if x.ndim < 2:
            raise ShapeError(f"Perceptron: x must be a batch (N, n_features), got shape "
                             f"{x.shape}")
        if x.shape[0] == 0:
            raise ShapeError(f"Perceptron: x is an empty batch (shape {x.shape})")
        if math.prod(x.shape[1:]) != self.n_features:
            raise ShapeError(f"Perceptron: each sample must have {self.n_features} features, "
                             f"got shape {x.shape}")
        return np.ascontiguousarray(x.reshape(x.shape[0], self.n_features))

    def _labels(self, y: Any, n: int) -> npt.NDArray[np.int64]:
        y = np.asarray(y)
        if y.dtype.kind not in "iub":
            raise DTypeError(f"Perceptron: y must be integer class labels, got dtype {y.dtype}")
        if y.shape != (n,):
            raise ShapeError(f"Perceptron: y must have shape ({n},) (one label per sample), "
                             f"got {y.shape}")
        bad = np.flatnonzero((y < 0) | (y >= self.n_classes))
        if bad.size:
            raise ValueError(f"Perceptron: y[{bad[0]}] = {y[bad[0]]} is not a label in "
                             f"[0, {self.n_classes})")
        return y.astype(np.int64)

    # -- training ---------------------------------------------------------------------
    def fit(self, x: npt.ArrayLike, y: npt.ArrayLike, epochs: int = 10,
            shuffle: bool = True) -> Perceptron:
        """Run up to ``epochs`` passes of the perceptron rule; returns self."""
        x = self._features(x)
        y = self._labels(y, x.shape[0])
        # NaN/inf would silently turn every weight into NaN (s > 0 is then always False)
        if not np.isfinite(x).all():
            bad = np.argwhere(~np.isfinite(x))[0]
            raise ValueError(f"Perceptron.fit: x holds NaN or inf (first at sample {bad[0]}, "
                             f"feature {bad[1]})")
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise ValueError(f"Perceptron.fit: epochs must be an integer >= 1, got {epochs!r}")
        kernel = _kernel()
        order = np.arange(x.shape[0], dtype=np.int64)
        binary = self.n_classes == 2
        for _ in range(int(epochs)):
            if shuffle:
                self._rng.shuffle(order)
            mistakes = kernel(x, y, order, self.weights, self.bias, self.lr, binary)
            self.errors_.append(int(mistakes))
            if mistakes == 0:
                break
        return self

    # -- inference --------------------------------------------------------------------
    def decision_function(self, x: npt.ArrayLike) -> npt.NDArray[np.floating]:
        """Scores ``x @ W^T + b``: (N,) when binary, else (N, n_classes)."""
        from .kernels import matmul
        x = self._features(x)
        w = self.weights.astype(x.dtype, copy=False)
        s = matmul(x, w, trans_b=True, bias=self.bias.astype(x.dtype, copy=False))
        return s[:, 0] if self.n_classes == 2 else s

    def predict(self, x: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Labels (N,) int64: step(score) when binary, argmax of the scores otherwise."""
        s = self.decision_function(x)
        if self.n_classes == 2:
            return (s > 0).astype(np.int64)
        return np.argmax(s, axis=1).astype(np.int64)

    def score(self, x: npt.ArrayLike, y: npt.ArrayLike) -> float:
        """Accuracy on (x, y)."""
        x = self._features(x)
        y = self._labels(y, x.shape[0])
        return float(np.mean(self.predict(x) == y))

    def get_config(self) -> Dict[str, Any]:
        """The constructor's arguments as a JSON-able dict (with ``"class"``)."""
        return {"class": "Perceptron", "n_features": self.n_features,
                "n_classes": self.n_classes, "lr": self.lr, "seed": self.seed}
