"""The contract between fastnn's Python objects and the fused native trainer.

The fused trainer (``fastnn._fused``, ``kernels/train/``) runs a whole epoch
of an MLP in one native call.  It never looks inside a layer, loss or
optimizer: each describes itself through a public ``fusion_spec()`` method

    layer.fusion_spec()      -> LayerSpec       (kind, shapes, activation, dtype, parameters)
    model.fusion_spec()      -> [LayerSpec, ...]
    loss.fusion_spec()       -> LossSpec
    optimizer.fusion_spec()  -> OptimizerSpec   (kind, hyper-parameters, flat state buffers)

or raises :class:`NotFusable` with the reason.  :func:`check` is the one
place that decides whether a (model, loss, optimizer, batch size) runs fused,
and says why not when it does not.  ``fit`` uses it; ``fit(verbose=2)`` and
``fastnn train`` print the reason.

A subclass that overrides the math of a supported class (a layer's forward or
backward, a loss's ``__call__``/``backward``, an optimizer's ``step`` or
update rule) is declined: the native trainer runs the parent's rule, so
running it fused would silently ignore the override.

Adding a fusable layer: give it a ``fusion_spec()``, teach :func:`check`'s
``_compile`` the new kind, and the native trainer the kernel.

>>> import fastnn
>>> from fastnn.layers import Dense, Dropout
>>> from fastnn.losses import SoftmaxCrossEntropy
>>> from fastnn.optim import SGD
>>> model = fastnn.Sequential([Dense(4, 8, activation="relu"), Dense(8, 3)])
>>> check(model, SoftmaxCrossEntropy(), SGD(model, lr=0.1), batch_size=32).ok
True
>>> model = fastnn.Sequential([Dense(4, 8, activation="relu"), Dropout(0.5), Dense(8, 3)])
>>> print(check(model, SoftmaxCrossEntropy(), SGD(model, lr=0.1), batch_size=32).reason)
layer 1 (Dropout): the fused trainer has no Dropout kernel
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .parameter import Parameter

__all__ = ["NotFusable", "LayerSpec", "LossSpec", "OptimizerSpec", "FusionCheck", "check",
           "native_trainer", "require_own_methods", "PRECISIONS"]


class NotFusable(Exception):
    """Raised by a ``fusion_spec()`` that cannot describe its object to the native
    trainer; the message is the reason shown to users."""


@dataclass(frozen=True)
class LayerSpec:
    """What a layer is, for the fused trainer.

    ``kind``: ``"dense"`` (y = act(x @ W + b); ``weight`` (in, out), ``bias``
    (out,) or None), ``"activation"`` (elementwise ``activation``, no
    parameters) or ``"flatten"`` (a reshape of each row)."""

    kind: str
    activation: Optional[str] = None
    in_features: Optional[int] = None
    out_features: Optional[int] = None
    dtype: Optional[np.dtype] = None
    weight: Optional[Parameter] = field(default=None, compare=False)
    bias: Optional[Parameter] = field(default=None, compare=False)


@dataclass(frozen=True)
class LossSpec:
    """What a loss is: ``kind`` ``"softmax_cross_entropy"`` (mean over the batch of
    ``logsumexp(z) - z[y]`` on integer labels)."""

    kind: str


@dataclass(frozen=True)
class OptimizerSpec:
    """What an optimizer is, read by the fused trainer before every native call.

    ``kind``: ``"sgd"``, ``"adam"`` or ``"adamw"``; ``hyper``: the update rule's
    constants (``weight_decay`` and ``momentum``/``nesterov`` for SGD,
    ``beta1``/``beta2``/``eps`` for Adam); ``lr`` and ``step`` (updates taken
    so far: Adam's bias corrections); ``slots``: the flat state buffers the
    rule reads and writes, laid out like the model's ``flat_params`` (SGD:
    (velocity or None, None); Adam: (m, v)); ``owner``: the model whose flat
    buffers the optimizer steps."""

    kind: str
    lr: float
    step: int
    hyper: Dict[str, Any]
    slots: Tuple[Optional[np.ndarray], Optional[np.ndarray]] = field(compare=False)
    owner: Any = field(compare=False)


@dataclass(frozen=True)
class FusionCheck:
    """The answer of :func:`check`: ``ok``; ``reason`` (why not, else ""); ``dense``:
    the (Dense spec, relu-after flag) pairs the native trainer runs, in order."""

    ok: bool
    reason: str = ""
    dense: Tuple[Tuple[LayerSpec, bool], ...] = ()

    def __bool__(self) -> bool:
        return self.ok


def require_own_methods(obj: Any, base: type, names: Sequence[str]) -> None:
    """Raise :class:`NotFusable` when ``type(obj)`` overrides one of ``base``'s
    methods ``names``: the native trainer runs ``base``'s math, not the override."""
    cls = type(obj)
    for name in names:
        if getattr(cls, name, None) is not getattr(base, name, None):
            raise NotFusable(f"{cls.__name__} overrides {base.__name__}.{name}; the fused "
                             f"trainer runs {base.__name__}'s own math")


def native_trainer() -> Any:
    """The compiled trainer module ``fastnn._ext.train``, or None when it is not built."""
    try:
        from ._ext import train
    except ImportError:
        return None
    return train


def _compile(layers: List[LayerSpec]) -> Tuple[Tuple[LayerSpec, bool], ...]:
    """The native trainer's view of a layer list: leading Flatten dropped, each Dense with
    its ReLU (its own activation, or a ReLU layer right after a Dense without one)."""
    dense: List[List[Any]] = []
    i = 0
    while i < len(layers) and layers[i].kind == "flatten":
        i += 1
    for j in range(i, len(layers)):
        spec = layers[j]
        if spec.kind == "dense":
            if spec.activation not in (None, "relu"):
                raise NotFusable(f"layer {j} (Dense): the fused trainer fuses ReLU only, "
                                 f"not activation={spec.activation!r}")
            if dense and dense[-1][0].out_features != spec.in_features:
                raise NotFusable(f"layer {j} (Dense): {spec.in_features} inputs after "
                                 f"{dense[-1][0].out_features} outputs")
            dense.append([spec, spec.activation == "relu"])
        elif spec.kind == "activation" and spec.activation == "relu" and dense \
                and not dense[-1][1]:
            dense[-1][1] = True
        elif spec.kind == "flatten":
            raise NotFusable(f"layer {j} (Flatten): only a leading Flatten is fused")
        else:
            what = spec.activation if spec.kind == "activation" else spec.kind
            raise NotFusable(f"layer {j} ({what}): it does not follow a Dense without "
                             f"activation, so the fused trainer cannot fold it")
    if not dense:
        raise NotFusable("the model has no Dense layer")
    if dense[-1][1]:
        raise NotFusable("the last Dense layer has a ReLU: the fused trainer needs logits "
                         "from the last layer")
    return tuple((spec, bool(relu)) for spec, relu in dense)


PRECISIONS = ("fp32", "bf16")


def check(model: Any, loss: Any, optimizer: Any, batch_size: Any,
          precision: str = "fp32") -> FusionCheck:
    """Whether ``fit`` can run (model, loss, optimizer, batch_size) on the fused native
    trainer in ``precision`` ("fp32" or "bf16", see ``fit``); the returned
    :class:`FusionCheck` is truthy when it can, else its ``reason`` says why not.
    bf16 is accepted only where the native trainer has a bf16 mode (its
    ``PRECISIONS``); otherwise ``fit`` runs bf16 on the layer-by-layer path."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    native = native_trainer()
    if native is None:
        return FusionCheck(False, "the native trainer (fastnn._ext.train) is not built")
    if precision not in getattr(native, "PRECISIONS", ("fp32",)):
        return FusionCheck(False, f"the fused trainer has no {precision} mode")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
            or batch_size < 1:
        return FusionCheck(False, f"batch_size must be a positive integer, got {batch_size!r}")
    try:
        for who, obj in (("model", model), ("loss", loss), ("optimizer", optimizer)):
            if not callable(getattr(obj, "fusion_spec", None)):
                raise NotFusable(f"the {who} ({type(obj).__name__}) has no fusion_spec()")
        layers = model.fusion_spec()
        lspec = loss.fusion_spec()
        if lspec.kind != "softmax_cross_entropy":
            raise NotFusable(f"the fused trainer has no {lspec.kind} loss")
        ospec = optimizer.fusion_spec()
        if ospec.owner is not model:
            raise NotFusable(f"the optimizer ({type(optimizer).__name__}) is not built on the "
                             f"whole model (pass the model or model.parameters())")
        if ospec.kind not in native.OPT_KINDS:
            raise NotFusable(f"the fused trainer has no {ospec.kind} update")
        dense = _compile(list(layers))
        if len(dense) > native.MAX_LAYERS:
            raise NotFusable(f"{len(dense)} Dense layers; the fused trainer takes at most "
                             f"{native.MAX_LAYERS}")
    except NotFusable as exc:
        return FusionCheck(False, str(exc))
    return FusionCheck(True, "", dense)
