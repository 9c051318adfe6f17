"""Optimizers (SGD, Adam, AdamW) and learning-rate schedules.

Optimizers follow PyTorch's update rules exactly (``torch.optim.SGD`` with
dampening 0, ``Adam``, ``AdamW``; the formulas are in
``fastnn.kernels.sgd_update`` / ``adam_update``)::

    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = loss_fn(model(x), y); model.backward(loss_fn.backward(), input_grad=False)
    opt.step(); opt.zero_grad()

Fused path: when ``params`` are exactly a model's parameters (or the model
itself), ``step()`` is ONE kernel call over ``model.flat_params`` /
``model.flat_grads``, with the optimizer's own buffers (velocity, m, v)
flat too.  Any other list of parameters gets one kernel call per parameter
over views of the same kind of flat state buffers.

Learning-rate schedules change ``optimizer.lr``; each ``schedule.step()``
call advances ONE step.  Call it once per optimizer step (after
``opt.step()``) to schedule per batch, or once per epoch to schedule per
epoch -- ``step_size`` / ``total_steps`` then count epochs.

    StepDecay(opt, step_size, gamma)        lr_t = lr_0 * gamma ** floor(t / step_size)
    CosineDecay(opt, total_steps, min_lr)   lr_t = min_lr + (lr_0 - min_lr) (1 + cos(pi t / T)) / 2
    LinearWarmup(opt, warmup_steps, after)  lr_t = lr_0 (t + 1) / W for t < W, then ``after``
    OneCycle(opt, max_lr, total_steps, pct_start=0.3)   PyTorch's OneCycleLR (cosine)

>>> import numpy as np, fastnn
>>> from fastnn.layers import Dense
>>> model = fastnn.Sequential([Dense(3, 2)], seed=0)
>>> opt = Adam(model.parameters(), lr=1e-3)
>>> sched = CosineDecay(opt, total_steps=10)
>>> model.flat_grads[:] = 1.0; opt.step(); lr = sched.step()
>>> opt.lr < 1e-3
True
"""
from __future__ import annotations

import math
from typing import (TYPE_CHECKING, Any, ClassVar, Dict, Iterable, List, Mapping, Optional, Tuple,
                    Type, Union)

import numpy as np
import numpy.typing as npt

from . import kernels
from ._validation import integer as _int
from ._validation import real as _real
from .errors import DTypeError
from .fusion import NotFusable, OptimizerSpec, require_own_methods
from .parameter import Parameter

if TYPE_CHECKING:
    from typing import Protocol

    class _Model(Protocol):
        """What an optimizer needs of a model (a ``Sequential``): its parameters and
        the flat buffers they are views of."""

        flat_params: npt.NDArray[Any]
        flat_grads: npt.NDArray[Any]

        def parameters(self) -> List[Parameter]: ...

        def zero_grad(self) -> None: ...

    #: what ``params`` may be: a model, one Parameter, or Parameters
    _Params = Union[_Model, Parameter, Iterable[Parameter]]

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "LRSchedule", "StepDecay", "CosineDecay",
           "LinearWarmup", "OneCycle", "OPTIMIZER_CLASSES", "optimizer_from_state"]


def _resolve_params(params: Any, who: str) -> Tuple[List[Parameter], Optional[_Model]]:
    """(list of Parameters, owning model when the list is all of its parameters in order,
    else None).  ``params`` may be a model (``parameters()`` and flat buffers)."""
    if hasattr(params, "flat_params") and callable(getattr(params, "parameters", None)):
        params = params.parameters()        # a model: its parameters, in flat-buffer order
    if isinstance(params, Parameter):
        params = [params]
    try:
        params = list(params)
    except TypeError:
        raise TypeError(f"{who}: params must be a Sequential or an iterable of Parameters, "
                        f"got {type(params).__name__}") from None
    if not params:
        raise ValueError(f"{who}: params is empty")
    for i, p in enumerate(params):
        if not isinstance(p, Parameter):
            raise TypeError(f"{who}: params[{i}] must be a fastnn Parameter, "
                            f"got {type(p).__name__}")
        if not (p.data.flags.c_contiguous and p.grad.flags.c_contiguous):
            raise ValueError(f"{who}: parameter {p.name!r} is not C-contiguous")
    if len({id(p) for p in params}) != len(params):
        raise ValueError(f"{who}: a parameter appears more than once in params")
    dtypes = {p.dtype for p in params}
    if len(dtypes) > 1:
        raise DTypeError(f"{who}: params mix dtypes {sorted(str(d) for d in dtypes)}")
    owner = params[0].owner
    if owner is not None:
        own = owner.parameters()
        if len(params) == len(own) and all(a is b for a, b in zip(params, own)):
            return params, owner
    return params, None


class Optimizer:
    """Base class.  Subclasses define ``_hyper`` (validated hyper-parameters),
    ``BUFFERS`` (names of flat state buffers) and ``_update(p, g, bufs)``."""

    BUFFERS: ClassVar[Tuple[str, ...]] = ()

    def __init__(self, params: _Params, lr: float) -> None:
        who = type(self).__name__
        self.params, self._model = _resolve_params(params, who)
        self.dtype = self.params[0].dtype
        self.lr = lr
        self.step_count = 0
        n = sum(p.size for p in self.params)
        # Flat state buffers (zeros), one per name; per-parameter views for the
        # unfused path.  Same layout as the model's flat buffers when fused.
        self._buffers: Dict[str, npt.NDArray[Any]] = {name: np.zeros(n, self.dtype)
                                                        for name in self.BUFFERS}
        self._slices: List[slice] = []
        off = 0
        for p in self.params:
            self._slices.append(slice(off, off + p.size))
            off += p.size

    # -- learning rate -----------------------------------------------------------
    @property
    def lr(self) -> float:
        """The learning rate the next ``step()`` uses (settable, >= 0; schedules set it)."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = _real(value, "lr", type(self).__name__, lo=0.0)

    @property
    def fused(self) -> bool:
        """True when step() is one kernel call over the model's flat buffers."""
        return self._model is not None

    @property
    def model(self) -> Optional[_Model]:
        """The model whose flat buffers ``step()`` updates in one call, or None when the
        optimizer was built on a list of parameters that is not a whole model."""
        return self._model

    def state_buffers(self) -> Dict[str, npt.NDArray[Any]]:
        """``{name: flat state array}`` (velocity, m, v, ...): the live buffers, laid out
        like the parameters concatenated in order (the model's ``flat_params``)."""
        return dict(self._buffers)

    # -- the fused trainer's view (fastnn.fusion) ----------------------------------
    # the native trainer's name for this update rule, or None
    FUSED_KIND: ClassVar[Optional[str]] = None

    def fusion_spec(self) -> OptimizerSpec:
        """This optimizer for the fused native trainer (``fastnn.fusion.OptimizerSpec``),
        or ``NotFusable`` with the reason."""
        who = type(self).__name__
        if self.FUSED_KIND is None:
            raise NotFusable(f"the fused trainer has no {who} update")
        if self._model is None:
            raise NotFusable(f"{who} is built on a list of parameters, not on the whole "
                             f"model, so its state is not in the model's flat layout")
        # a subclass that changes the rule would be ignored by the native update
        base = next(c for c in type(self).__mro__ if c.__dict__.get("FUSED_KIND"))
        require_own_methods(self, base, ("step", "_update", "_fused_hyper"))
        hyper, slots = self._fused_hyper()
        return OptimizerSpec(self.FUSED_KIND, float(self.lr), int(self.step_count), hyper,
                             slots, self._model)

    def _fused_hyper(self) -> Tuple[Dict[str, Any], Tuple[Optional[npt.NDArray[Any]],
                                                          Optional[npt.NDArray[Any]]]]:
        """(hyper-parameters as the native rule names them, (slot 1, slot 2) buffers)."""
        raise NotImplementedError

    # -- stepping ----------------------------------------------------------------
    def zero_grad(self) -> None:
        """Zero the gradients: one fill when fused, else one per parameter."""
        if self._model is not None:
            self._model.zero_grad()
        else:
            for p in self.params:
                p.grad.fill(0)

    def step(self) -> None:
        """Apply one update to every parameter from its ``.grad``."""
        self.step_count += 1
        if self._model is not None:
            self._update(self._model.flat_params, self._model.flat_grads, self._buffers)
        else:
            for p, sl in zip(self.params, self._slices):
                bufs = {k: b[sl] for k, b in self._buffers.items()}
                self._update(p.data.reshape(-1), p.grad.reshape(-1), bufs)

    def _update(self, p: npt.NDArray[np.floating], g: npt.NDArray[np.floating],
                bufs: Dict[str, npt.NDArray[Any]]) -> None:
        raise NotImplementedError

    # -- state ---------------------------------------------------------------------
    def hyper(self) -> Dict[str, Any]:
        """The hyper-parameters as a JSON-able dict (constructor keyword arguments)."""
        return {"lr": self.lr}

    def state_dict(self) -> Dict[str, Any]:
        """``{"class", "hyper", "step", "buffers": {name: flat array copy}}``."""
        return {"class": type(self).__name__, "hyper": self.hyper(), "step": self.step_count,
                "buffers": {k: b.copy() for k, b in self._buffers.items()}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore ``state_dict()`` output (class, buffer names and shapes must match)."""
        who = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state, dict) or not {"class", "hyper", "step", "buffers"} <= set(state):
            raise ValueError(f"{who}: expected a dict with keys class, hyper, step, buffers")
        if state["class"] != type(self).__name__:
            raise ValueError(f"{who}: state is for {state['class']!r}, not "
                             f"{type(self).__name__!r}")
        bufs = state["buffers"]
        if set(bufs) != set(self._buffers):
            raise ValueError(f"{who}: buffers must be {sorted(self._buffers)}, "
                             f"got {sorted(bufs)}")
        for k, b in bufs.items():
            b = np.asarray(b)
            if b.shape != self._buffers[k].shape:
                raise ValueError(f"{who}: buffer {k!r} has shape {b.shape}, expected "
                                 f"{self._buffers[k].shape} (a model of another size?)")
        step = _int(state["step"], "step", who, lo=0)
        # Validate every hyper-parameter before changing anything.
        probe = dict(self.hyper())
        probe.update(state["hyper"])
        self._set_hyper(probe)
        for k, b in bufs.items():
            self._buffers[k][...] = b
        self.step_count = step

    def _set_hyper(self, h: Mapping[str, Any]) -> None:
        self.lr = h["lr"]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyper().items())
        return f"{type(self).__name__}({args}, params={len(self.params)}, fused={self.fused})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay.

        g = grad + weight_decay * p
        v = momentum * v + g;   step = g + momentum * v (nesterov) or v;   p -= lr * step

    (``momentum=0``: p -= lr * g.)  PyTorch's torch.optim.SGD, dampening 0.

    >>> import numpy as np, fastnn
    >>> from fastnn.layers import Dense
    >>> m = fastnn.Sequential([Dense(2, 1, init="zeros")])
    >>> m.flat_grads[:] = 1.0; SGD(m, lr=0.5).step(); m.flat_params.tolist()
    [-0.5, -0.5, -0.5]
    """

    momentum: float
    nesterov: bool
    weight_decay: float

    def __init__(self, params: _Params, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, lr)
        self._set_hyper({"lr": lr, "momentum": momentum, "nesterov": nesterov,
                         "weight_decay": weight_decay})
        if self.momentum > 0:
            self._buffers["velocity"] = np.zeros(self._slices[-1].stop, self.dtype)

    def _set_hyper(self, h: Mapping[str, Any]) -> None:
        who = type(self).__name__
        lr = _real(h["lr"], "lr", who, lo=0.0)
        momentum = _real(h["momentum"], "momentum", who, lo=0.0, hi=1.0, hi_open=True)
        weight_decay = _real(h["weight_decay"], "weight_decay", who, lo=0.0)
        nesterov = bool(h["nesterov"])
        if nesterov and momentum == 0.0:
            raise ValueError(f"{who}: nesterov=True needs momentum > 0")
        if hasattr(self, "momentum") and (momentum > 0) != (self.momentum > 0):
            raise ValueError(f"{who}: cannot switch momentum between zero and non-zero on an "
                             f"existing optimizer (the velocity buffer)")
        self.lr, self.momentum, self.nesterov, self.weight_decay = lr, momentum, nesterov, \
            weight_decay

    def hyper(self) -> Dict[str, Any]:
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}

    FUSED_KIND = "sgd"

    def _fused_hyper(self) -> Tuple[Dict[str, Any], Tuple[Optional[npt.NDArray[Any]],
                                                          Optional[npt.NDArray[Any]]]]:
        return ({"weight_decay": self.weight_decay, "momentum": self.momentum,
                 "nesterov": self.nesterov}, (self._buffers.get("velocity"), None))

    def _update(self, p: npt.NDArray[np.floating], g: npt.NDArray[np.floating],
                bufs: Dict[str, npt.NDArray[Any]]) -> None:
        kernels.sgd_update(p, g, lr=self.lr, momentum=self.momentum,
                              velocity=bufs.get("velocity"), nesterov=self.nesterov,
                              weight_decay=self.weight_decay)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; ``weight_decay`` is L2 (added to g).

        m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2      (g = grad + weight_decay * p)
        p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    PyTorch's torch.optim.Adam.  Buffers ``m``, ``v`` are flat.

    >>> import numpy as np, fastnn
    >>> from fastnn.layers import Dense
    >>> m = fastnn.Sequential([Dense(2, 1, init="zeros", dtype=np.float64)])
    >>> m.flat_grads[:] = 1.0; Adam(m, lr=0.1).step(); m.flat_params.round(6).tolist()
    [-0.1, -0.1, -0.1]
    """

    BUFFERS = ("m", "v")
    DECOUPLED: ClassVar[bool] = False
    betas: Tuple[float, float]
    eps: float
    weight_decay: float

    def __init__(self, params: _Params, lr: float = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, lr)
        self._set_hyper({"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    def _set_hyper(self, h: Mapping[str, Any]) -> None:
        who = type(self).__name__
        lr = _real(h["lr"], "lr", who, lo=0.0)
        betas = h["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{who}: betas must be a pair (beta1, beta2), got {betas!r}")
        b1 = _real(betas[0], "betas[0]", who, lo=0.0, hi=1.0, hi_open=True)
        b2 = _real(betas[1], "betas[1]", who, lo=0.0, hi=1.0, hi_open=True)
        eps = _real(h["eps"], "eps", who, lo=0.0, lo_open=True)
        weight_decay = _real(h["weight_decay"], "weight_decay", who, lo=0.0)
        self.lr, self.betas, self.eps, self.weight_decay = lr, (b1, b2), eps, weight_decay

    def hyper(self) -> Dict[str, Any]:
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay}

    FUSED_KIND = "adam"

    def _fused_hyper(self) -> Tuple[Dict[str, Any], Tuple[Optional[npt.NDArray[Any]],
                                                          Optional[npt.NDArray[Any]]]]:
        return ({"weight_decay": self.weight_decay, "beta1": self.betas[0],
                 "beta2": self.betas[1], "eps": self.eps},
                (self._buffers["m"], self._buffers["v"]))

    def _update(self, p: npt.NDArray[np.floating], g: npt.NDArray[np.floating],
                bufs: Dict[str, npt.NDArray[Any]]) -> None:
        kernels.adam_update(p, g, bufs["m"], bufs["v"], step=self.step_count, lr=self.lr,
                               beta1=self.betas[0], beta2=self.betas[1], eps=self.eps,
                               weight_decay=self.weight_decay, decoupled=self.DECOUPLED)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): first
    ``p -= lr * weight_decay * p``, then the Adam step on the raw gradient.
    PyTorch's torch.optim.AdamW (default weight_decay=0.01)."""

    DECOUPLED = True
    FUSED_KIND = "adamw"

    def __init__(self, params: _Params, lr: float = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


OPTIMIZER_CLASSES: Dict[str, Type[Optimizer]]
OPTIMIZER_CLASSES = {"SGD": SGD, "Adam": Adam, "AdamW": AdamW}


def optimizer_from_state(params: _Params, state: Dict[str, Any]) -> Optimizer:
    """Build the optimizer described by ``state_dict()`` output on ``params`` and load it."""
    if not isinstance(state, dict) or state.get("class") not in OPTIMIZER_CLASSES:
        raise ValueError(f"optimizer state must name one of {sorted(OPTIMIZER_CLASSES)}")
    h = dict(state["hyper"])
    if "betas" in h:
        h["betas"] = tuple(h["betas"])
    opt = OPTIMIZER_CLASSES[state["class"]](params, **h)
    opt.load_state_dict(state)
    return opt


# ============================================================================ schedules

class LRSchedule:
    """Base class: sets ``optimizer.lr = get_lr()`` at construction and after each
    ``step()``.  ``base_lr`` is the optimizer's lr when the schedule is built.
    ``last_step`` counts ``step()`` calls."""

    def __init__(self, optimizer: Optimizer) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: optimizer must be a fastnn optimizer, "
                            f"got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_step = 0

    def _start(self) -> None:
        self.optimizer.lr = self.get_lr()

    def lr_at(self, t: int) -> float:
        """The learning rate after t calls of step()."""
        raise NotImplementedError

    def get_lr(self) -> float:
        """The learning rate now (after ``last_step`` calls of step())."""
        return self.lr_at(self.last_step)

    def step(self) -> float:
        """Advance one step and set the optimizer's lr; returns the new lr."""
        self.last_step += 1
        lr = self.get_lr()
        self.optimizer.lr = lr
        return lr

    def hyper(self) -> Dict[str, Any]:
        """The schedule's own settings as a JSON-able dict (its constructor's keyword
        arguments besides ``optimizer``)."""
        return {}

    def state_dict(self) -> Dict[str, Any]:
        """``{"class", "base_lr", "last_step", "hyper"}``: what a checkpoint stores to
        resume the schedule where it was."""
        return {"class": type(self).__name__, "base_lr": self.base_lr,
                "last_step": self.last_step, "hyper": self.hyper()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore ``state_dict()`` output (same class) and set the optimizer's lr to
        the restored step's."""
        who = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state, dict) or state.get("class") != type(self).__name__:
            raise ValueError(f"{who}: state is not for {type(self).__name__}")
        self.base_lr = _real(state["base_lr"], "base_lr", who, lo=0.0)
        self.last_step = _int(state["last_step"], "last_step", who, lo=0)
        self.optimizer.lr = self.get_lr()


class StepDecay(LRSchedule):
    """lr_t = base_lr * gamma ** floor(t / step_size).

    >>> import fastnn; from fastnn.layers import Dense
    >>> opt = SGD(fastnn.Sequential([Dense(1, 1)]), lr=1.0)
    >>> s = StepDecay(opt, step_size=2, gamma=0.5)
    >>> [s.step() for _ in range(4)]
    [1.0, 0.5, 0.5, 0.25]
    """

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float) -> None:
        super().__init__(optimizer)
        self.step_size = _int(step_size, "step_size", "StepDecay")
        self.gamma = _real(gamma, "gamma", "StepDecay", lo=0.0)
        self._start()

    def lr_at(self, t: int) -> float:
        return self.base_lr * self.gamma ** (t // self.step_size)

    def hyper(self) -> Dict[str, Any]:
        return {"step_size": self.step_size, "gamma": self.gamma}


class CosineDecay(LRSchedule):
    """lr_t = min_lr + (base_lr - min_lr) * (1 + cos(pi * min(t, T) / T)) / 2, T = total_steps.

    Stays at ``min_lr`` after T steps."""

    def __init__(self, optimizer: Optimizer, total_steps: int, min_lr: float = 0.0) -> None:
        super().__init__(optimizer)
        self.total_steps = _int(total_steps, "total_steps", "CosineDecay")
        self.min_lr = _real(min_lr, "min_lr", "CosineDecay", lo=0.0)
        self._start()

    def lr_at(self, t: int) -> float:
        frac = min(t, self.total_steps) / self.total_steps
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * frac))

    def hyper(self) -> Dict[str, Any]:
        return {"total_steps": self.total_steps, "min_lr": self.min_lr}


class LinearWarmup(LRSchedule):
    """lr_t = base_lr * (t + 1) / W for t < W = warmup_steps; then ``after``'s
    schedule shifted by W steps (``after.lr_at(t - W)``), or base_lr if None.

    ``after`` must be built on the same optimizer BEFORE the warmup (so it
    sees the full base lr)::

        sched = LinearWarmup(opt, 100, after=CosineDecay(opt, total_steps=900))
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int,
                 after: Optional[LRSchedule] = None) -> None:
        super().__init__(optimizer)
        self.warmup_steps = _int(warmup_steps, "warmup_steps", "LinearWarmup")
        if after is not None:
            if not isinstance(after, LRSchedule):
                raise TypeError(f"LinearWarmup: after must be an LRSchedule, "
                                f"got {type(after).__name__}")
            if after.optimizer is not optimizer:
                raise ValueError("LinearWarmup: after must schedule the same optimizer")
            self.base_lr = after.base_lr
        self.after = after
        self._start()

    def lr_at(self, t: int) -> float:
        if t < self.warmup_steps:
            return self.base_lr * (t + 1) / self.warmup_steps
        if self.after is None:
            return self.base_lr
        return self.after.lr_at(t - self.warmup_steps)

    def step(self) -> float:
        lr = super().step()
        if self.after is not None:
            self.after.last_step = max(0, self.last_step - self.warmup_steps)
        return lr

    def hyper(self) -> Dict[str, Any]:
        return {"warmup_steps": self.warmup_steps,
                "after": self.after.state_dict() if self.after is not None else None}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if self.after is not None and state.get("hyper", {}).get("after"):
            self.after.load_state_dict(state["hyper"]["after"])
        super().load_state_dict(state)


class OneCycle(LRSchedule):
    """The one-cycle policy (Smith & Topin), as PyTorch's OneCycleLR with cosine annealing:

        initial = max_lr / div_factor
        phase 1, t in [0, p T - 1]:     lr rises  initial  ->  max_lr
        phase 2, t in [p T - 1, T - 1]: lr falls  max_lr   ->  initial / final_div_factor

    each by ``cos_anneal(a, b, f) = b + (a - b) (1 + cos(pi f)) / 2`` where f
    is the fraction of the phase done; p = pct_start, T = total_steps.  Stays
    at the final value after T - 1 steps.  The optimizer's lr at construction
    is ignored (as in PyTorch)."""

    def __init__(self, optimizer: Optimizer, max_lr: float, total_steps: int,
                 pct_start: float = 0.3, div_factor: float = 25.0,
                 final_div_factor: float = 1e4) -> None:
        super().__init__(optimizer)
        self.max_lr = _real(max_lr, "max_lr", "OneCycle", lo=0.0)
        self.total_steps = _int(total_steps, "total_steps", "OneCycle", lo=2)
        self.pct_start = _real(pct_start, "pct_start", "OneCycle", lo=0.0, lo_open=True,
                               hi=1.0, hi_open=True)
        self.div_factor = _real(div_factor, "div_factor", "OneCycle", lo=0.0, lo_open=True)
        self.final_div_factor = _real(final_div_factor, "final_div_factor", "OneCycle",
                                      lo=0.0, lo_open=True)
        self.base_lr = self.max_lr / self.div_factor
        self._start()

    @staticmethod
    def _cos(a: float, b: float, frac: float) -> float:
        return b + (a - b) * 0.5 * (1.0 + math.cos(math.pi * frac))

    def lr_at(self, t: float) -> float:
        initial = self.max_lr / self.div_factor
        final = initial / self.final_div_factor
        peak = float(self.pct_start * self.total_steps) - 1.0
        end = float(self.total_steps - 1)
        t = min(t, end)
        if t <= peak:
            return self._cos(initial, self.max_lr, t / peak if peak > 0 else 1.0)
        return self._cos(self.max_lr, final, (t - peak) / (end - peak))

    def hyper(self) -> Dict[str, Any]:
        return {"max_lr": self.max_lr, "total_steps": self.total_steps,
                "pct_start": self.pct_start, "div_factor": self.div_factor,
                "final_div_factor": self.final_div_factor}
