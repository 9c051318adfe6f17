"""Training loop: ``fit``, ``evaluate``, ``predict`` and ``History``.

One epoch is mini-batch gradient descent over a fresh permutation of the data:

    perm ~ rng.permutation(N)                    rng = np.random.default_rng(seed)
    for each batch B = perm[k*b : (k+1)*b]       (the last, partial batch is kept)
        L = loss(model(x[B]), y[B]);  g = dL/dtheta;  theta <- optimizer(theta, g)

Two engines run an epoch and give the same weights (to rounding):

* the fused plan (``fastnn._fused.plan``): the whole epoch in native code, one
  call per epoch, or one call per ``n`` steps when a callback or the progress
  bar needs Python every ``n`` steps;
* the general path: ``model(x) -> loss -> backward -> optimizer.step`` per
  batch in Python, used for every model the fused plan does not cover.

uint8 images are scaled by 1/255 a batch at a time (the dataset is never
copied to float).  The generator state is recorded after every epoch, so a
run resumed from a checkpoint (``resume=``) replays the same permutations and
ends on bitwise the same weights as an uninterrupted run on the same threads.

Shapes: ``x`` (N, ...) uint8 or float, ``y`` (N,) integer class labels,
outputs (N, C).

>>> import numpy as np
>>> from fastnn.models import MLP
>>> from fastnn.losses import SoftmaxCrossEntropy
>>> from fastnn.optim import SGD
>>> rng = np.random.default_rng(0)
>>> x = rng.random((512, 20), dtype=np.float32)
>>> y = (x[:, :10].sum(axis=1) > x[:, 10:].sum(axis=1)).astype(np.int64)   # learnable
>>> model = MLP([20, 32, 2], seed=0)
>>> opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
>>> h = fit(model, x, y, epochs=20, batch_size=64, loss=SoftmaxCrossEntropy(),
...         optimizer=opt, seed=0, verbose=0)
>>> h.params["engine"], h.history["accuracy"][-1] > 0.9
('fused', True)
"""
from __future__ import annotations

import functools
import inspect
import math
import os
import sys
import threading
import time
import warnings
import weakref
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Mapping,
                    Optional, Sequence, Tuple, TypeVar, Union, cast)

import numpy as np
import numpy.typing as npt

from . import _fused, _threads, fusion
from ._validation import check_finite_rows
from ._validation import integer as _integer
from .distributed import Communicator, ResidentGradPlan, get_world, split_rows, startup_items
from .errors import DivergenceError, DTypeError, ShapeError

if TYPE_CHECKING:
    from .callbacks import Callback
    from .losses import Loss
    from .optim import LRSchedule, Optimizer

    #: a learning-rate schedule as ``fit`` takes it: an LRSchedule or step -> lr
    _Schedule = Union[LRSchedule, Callable[[int], float]]

# ``model`` is duck-typed throughout (a Sequential, or any object with __call__,
# backward, parameters, zero_grad, train and eval), so it is typed Any.

__all__ = ["History", "fit", "fit_distributed", "evaluate", "predict", "TrainState",
           "EVAL_BATCH"]

#: forward-only batch size of evaluate/predict: big enough to amortise per-call costs
EVAL_BATCH = 1000


class History:
    """What ``fit`` returns, as in Keras.

    ``history``: dict name -> list with one value per epoch run (loss, accuracy,
    val_loss, val_accuracy when validation data is given, epoch_time in seconds
    of training, samples_per_s).  ``epoch``: the epoch indices (0-based).
    ``params``: epochs, batch_size, steps (per epoch), samples, engine."""

    def __init__(self, history: Optional[Mapping[str, Iterable[float]]] = None,
                 epoch: Optional[Iterable[int]] = None,
                 params: Optional[Mapping[str, Any]] = None) -> None:
        self.history = {k: list(v) for k, v in (history or {}).items()}
        self.epoch = list(epoch or [])
        self.params = dict(params or {})

    def append(self, epoch: int, logs: Mapping[str, float]) -> None:
        """Record epoch ``epoch`` (0-based): its index, and each value of ``logs``
        appended to its list (a new key starts a new list)."""
        self.epoch.append(int(epoch))
        for k, v in logs.items():
            self.history.setdefault(k, []).append(float(v))

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready copy (used by checkpoints and --json)."""
        return {"history": {k: list(v) for k, v in self.history.items()},
                "epoch": list(self.epoch), "params": dict(self.params)}

    @classmethod
    def from_dict(cls, d: Optional[Mapping[str, Any]]) -> History:
        """The History that ``to_dict()`` described (None or {} gives an empty one)."""
        d = d or {}
        return cls(d.get("history"), d.get("epoch"), d.get("params"))

    def __repr__(self) -> str:
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"


class TrainState:
    """Shared by ``fit`` and its callbacks: what a callback may read or set.

    ``stop_training`` set to True by a callback ends training after the
    current epoch (or the current chunk of steps)."""

    def __init__(self, model: Any, optimizer: Optimizer, loss: Loss, history: History,
                 rng: np.random.Generator, params: Dict[str, Any]) -> None:
        self.model = model
        self.optimizer = optimizer
        self.loss = loss
        self.history = history
        self.rng = rng
        self.params = params
        self.epoch = 0               # the epoch being run (0-based)
        self.global_step = 0         # optimizer steps taken since the first epoch
        self.stop_training = False
        self.rng_state = rng.bit_generator.state   # state at the start of the next epoch
        self.engine: Optional[str] = None

    def resume_extra(self) -> Dict[str, Any]:
        """The checkpoint ``extra`` that lets ``fit(resume=...)`` continue bitwise."""
        return {"epoch": len(self.history.epoch) and self.history.epoch[-1] + 1,
                "global_step": self.global_step,
                "rng_state": _jsonable_state(self.rng_state),
                "layer_rng_states": layer_rng_states(self.model),
                "history": self.history.to_dict()}


# ---------------------------------------------------------------- validation

def _check_int(name: str, value: Any, minimum: int) -> int:
    return _integer(value, name, lo=minimum)


def _check_x(x: Any, name: str = "x") -> npt.NDArray[Any]:
    if not isinstance(x, np.ndarray):
        raise DTypeError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise DTypeError(f"{name} must be uint8 images or a float array, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ShapeError(f"{name} must have shape (N, features...), got {x.shape}")
    if x.shape[0] == 0:
        raise ShapeError(f"{name} is empty (shape {x.shape}): nothing to train or evaluate on")
    return x


def _check_y(y: Any, n: int, name: str = "y") -> npt.NDArray[Any]:
    if not isinstance(y, np.ndarray):
        raise DTypeError(f"{name} must be a numpy array of integer labels, got {type(y).__name__}")
    if not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        raise DTypeError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if y.ndim != 1:
        raise ShapeError(f"{name} must have shape (N,) of class labels, got {y.shape}")
    if y.shape[0] != n:
        raise ShapeError(f"x and {name} have different lengths: {n} vs {y.shape[0]}")
    return y


def _check_labels(y: npt.NDArray[Any], n_classes: int, name: str = "y") -> None:
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= n_classes:
        raise ValueError(f"{name} holds labels in [{lo}, {hi}] but the model has {n_classes} "
                         f"outputs: labels must be in [0, {n_classes - 1}]")


def _check_loss(loss: Any) -> Loss:
    if not callable(loss) or not hasattr(loss, "backward"):
        raise TypeError(f"loss must be a fastnn loss (e.g. fastnn.losses.SoftmaxCrossEntropy()), "
                        f"got {type(loss).__name__} {loss!r:.60}")
    return loss


def _check_optimizer(optimizer: Any, model: Any) -> Optimizer:
    """An optimizer (``step()``) whose parameters all belong to ``model``: one built on
    another model would silently train that model instead."""
    if not callable(getattr(optimizer, "step", None)):
        raise TypeError(f"optimizer must be a fastnn optimizer (e.g. fastnn.optim.SGD("
                        f"model.parameters(), lr=0.1)), got {type(optimizer).__name__}")
    params = getattr(optimizer, "params", None)
    own = getattr(model, "parameters", None)
    if params is not None and callable(own):
        ids = {id(p) for p in own()}
        foreign = [p for p in params if id(p) not in ids]
        if foreign:
            raise ValueError(f"optimizer updates parameters that are not the model's (e.g. "
                             f"{getattr(foreign[0], 'name', '?')!r}); build it on this model's "
                             f"parameters")
    return optimizer


def _check_features(model: Any, x: npt.NDArray[Any], name: str = "x") -> None:
    """x's features per row against what the model's first layer takes, naming x's
    whole shape (a probe on x[:1] would report (1, ...))."""
    want = getattr(model, "input_features", lambda: None)()
    if want is not None and math.prod(x.shape[1:]) != want:
        raise ShapeError(f"{name} has shape {x.shape} ({math.prod(x.shape[1:])} features per "
                         f"row) but the model's first layer expects {want} features")


def _output_dim(model: Any, x: npt.NDArray[Any]) -> int:
    """Number of model outputs, from a forward pass on one sample."""
    was_training = getattr(model, "training", True)
    model.eval()
    try:
        out = np.asarray(model(x[:1]))
    finally:
        if was_training:
            model.train()
    if out.ndim != 2:
        raise ShapeError(f"the model must output (N, classes), got shape {out.shape}")
    return out.shape[1]


def _jsonable_state(state: Any) -> Any:
    """Generator states hold plain ints and dicts already; copy them deeply."""
    if isinstance(state, dict):
        return {k: _jsonable_state(v) for k, v in state.items()}
    if isinstance(state, np.ndarray):
        return state.tolist()
    if isinstance(state, np.integer):
        return int(state)
    return state


def _restore_state(state: Any) -> Any:
    if isinstance(state, dict):
        return {k: _restore_state(v) for k, v in state.items()}
    return state


def _layer_rng(layer: Any) -> Optional[np.random.Generator]:
    for attr in ("_rng", "rng"):
        rng = getattr(layer, attr, None)
        if isinstance(rng, np.random.Generator):
            return rng
    return None


def layer_rng_states(model: Any) -> Dict[str, Any]:
    """Bit-generator states of every layer that draws random numbers (Dropout)."""
    out = {}
    layers = getattr(model, "layers", ()) or ()
    for i, layer in enumerate(layers):
        rng = _layer_rng(layer)
        if rng is not None:
            out[str(i)] = _jsonable_state(rng.bit_generator.state)
    return out


def set_layer_rng_states(model: Any, states: Optional[Mapping[str, Any]]) -> None:
    layers = getattr(model, "layers", ()) or ()
    for key, st in (states or {}).items():
        rng = _layer_rng(layers[int(key)])
        if rng is not None:
            rng.bit_generator.state = _restore_state(st)


def _params_finite(model: Any) -> bool:
    flat = getattr(model, "flat_params", None)
    if flat is not None:
        return bool(np.isfinite(flat).all())
    return all(bool(np.isfinite(p).all()) for p in model.parameters())


# ---------------------------------------------------------------- batches

class _BatchFeeder:
    """Gathers a batch ``x[idx]`` into a buffer reused across steps, scaling uint8 by 1/255.

    The scale multiplies in float32/float64 of the model's dtype, per batch,
    so a float dataset prepared as ``x.astype(dtype) / 255`` gives the same
    batches to rounding."""

    def __init__(self, x: npt.NDArray[Any], batch_size: int, dtype: npt.DTypeLike) -> None:
        self.x = x
        self.dtype: np.dtype[Any] = np.dtype(dtype)
        feat = x.shape[1:]
        self.raw = np.empty((batch_size,) + feat, x.dtype)
        self.scaled = (np.empty((batch_size,) + feat, self.dtype)
                       if x.dtype == np.uint8 or x.dtype != self.dtype else None)

    def __call__(self, idx: npt.NDArray[np.integer]) -> npt.NDArray[Any]:
        b = len(idx)
        raw = self.raw[:b]
        np.take(self.x, idx, axis=0, out=raw)
        if self.scaled is None:
            return raw
        out = self.scaled[:b]
        if self.x.dtype == np.uint8:
            np.multiply(raw, self.dtype.type(1.0 / 255.0), out=out, dtype=self.dtype)
        else:
            out[...] = raw
        return out


def _model_dtype(model: Any, x: npt.NDArray[Any]) -> np.dtype[Any]:
    dt = getattr(model, "dtype", None)
    if dt is not None:
        return np.dtype(dt)
    flat = getattr(model, "flat_params", None)
    if flat is not None:
        return flat.dtype
    return np.dtype(np.float32) if x.dtype == np.uint8 else x.dtype


# ---------------------------------------------------------------- engines

class _GeneralEngine:
    """Layer-by-layer path: forward, loss, backward, optimizer step per batch in Python."""

    name = "general"

    def __init__(self, model: Any, loss: Loss, optimizer: Optimizer, x: npt.NDArray[Any],
                 y: npt.NDArray[Any], batch_size: int, schedule: Optional[_Schedule]) -> None:
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.x, self.y, self.batch_size = x, y, batch_size
        self.schedule = schedule
        self.feed = _BatchFeeder(x, batch_size, _model_dtype(model, x))
        # Sequential.backward(input_grad=False) skips dL/dx of the first layer (unused here)
        try:
            params: Mapping[str, Any] = inspect.signature(model.backward).parameters
        except (TypeError, ValueError):
            params = {}
        self.backward_kw = {"input_grad": False} if "input_grad" in params else {}

    def run(self, perm: npt.NDArray[Any], start: int, stop: int,
            state: TrainState) -> Dict[str, Any]:
        """Steps [start, stop) of the epoch ordered by ``perm``; returns the chunk's sums."""
        model, loss, opt, b = self.model, self.loss, self.optimizer, self.batch_size
        loss_sum, correct, count = 0.0, 0, 0
        for step in range(start, stop):
            idx = perm[step * b:(step + 1) * b]
            xb = self.feed(idx)
            yb = self.y[idx]
            if self.schedule is not None:
                _apply_schedule(self.schedule, opt, state.global_step)
            model.zero_grad()
            out = model(xb)
            batch_loss = float(loss(out, yb))
            if not math.isfinite(batch_loss):
                raise _Diverged(step, batch_loss)
            model.backward(loss.backward(), **self.backward_kw)
            opt.step()
            state.global_step += 1
            nb = len(idx)
            loss_sum += batch_loss * nb
            correct += int(np.count_nonzero(np.argmax(out, axis=1) == yb))
            count += nb
        return {"loss_sum": loss_sum, "correct": correct, "count": count, "steps": stop - start}


class _FusedEngine:
    """The native whole-epoch loop of ``fastnn._fused``, run in chunks of steps."""

    name = "fused"

    def __init__(self, plan: _fused.FusedPlan, optimizer: Optimizer, x: npt.NDArray[Any],
                 y: npt.NDArray[Any], schedule: Optional[_Schedule]) -> None:
        self.plan, self.optimizer, self.x, self.y = plan, optimizer, x, y
        self.schedule = schedule

    def run(self, perm: npt.NDArray[Any], start: int, stop: int,
            state: TrainState) -> Dict[str, Any]:
        kw = {}
        if self.schedule is not None:
            # one learning rate per step of the chunk; the plan applies them in order
            g0 = state.global_step
            kw["lrs"] = np.array([_schedule_lr(self.schedule, g0 + i)
                                  for i in range(stop - start)], np.float64)
            self.optimizer.lr = float(kw["lrs"][-1])     # what the general path leaves
        res = self.plan.run(self.x, self.y, perm, start, stop, **kw)
        steps = int(res.get("steps", stop - start))
        state.global_step += steps
        loss_sum = float(res["loss_sum"])
        if steps < stop - start or not math.isfinite(loss_sum):
            # the plan stops at the first non-finite loss; steps says where
            raise _Diverged(start + min(steps, stop - start - 1), loss_sum)
        return {"loss_sum": loss_sum, "correct": int(res["correct"]),
                "count": int(res["count"]), "steps": steps}


class _DistributedEngine:
    """Data-parallel steps (``fit_distributed``, see ``fastnn.distributed``): each
    rank computes the gradient of the SUM of the loss over its slice of the global
    batch divided by the global batch's size, the ranks sum their gradients, and every
    rank applies the same update.  The gradient comes from the fused trainer's
    gradient-only step (``ResidentGradPlan``) when it covers the model, else from the
    layer-by-layer path (``model.flat_grads`` allreduced, then ``optimizer.step()``).
    The fused path exchanges it through shared memory when every rank is on this
    machine (``SharedGrads``: one barrier, the update adds the slots), else through
    an MPI allreduce of each layer's buckets started as the backward pass finishes
    that layer (``GradSignal``), overlapped with the earlier layers' backward."""

    def __init__(self, comm: Communicator, model: Any, loss: Loss, optimizer: Optimizer,
                 x: npt.NDArray[Any], y: npt.NDArray[Any], batch_size: int,
                 schedule: Optional[_Schedule], plan: Optional[ResidentGradPlan]) -> None:
        self.comm, self.model, self.loss, self.optimizer = comm, model, loss, optimizer
        self.x, self.y, self.batch_size, self.schedule, self.plan = x, y, batch_size, schedule, plan
        self.name = "fused" if plan is not None else "general"
        self.per_rank = -(-batch_size // comm.size)
        self.dtype = _model_dtype(model, x)
        self.feed = _BatchFeeder(x, self.per_rank, self.dtype) if plan is None else None
        try:
            params: Mapping[str, Any] = inspect.signature(model.backward).parameters
        except (TypeError, ValueError):
            params = {}
        self.backward_kw = {"input_grad": False} if "input_grad" in params else {}
        # the fused path reduces the gradient layer by layer (ResidentGradPlan.buckets), as
        # the backward pass writes each layer, overlapped with the earlier layers' backward
        # when the communicator has a reduction thread; FASTNN_MPI_OVERLAP=0 reduces the
        # same buckets after the whole gradient (the same bits, for comparisons)
        self.buckets = plan.buckets() if plan is not None else None
        self.overlap = (plan is not None and comm.overlaps
                        and os.environ.get("FASTNN_MPI_OVERLAP", "1") != "0")
        # ranks on one machine: the gradients meet in shared memory (SharedGrads), one
        # polled barrier a step instead of an MPI allreduce
        self.shared = comm.shared_slots(model.flat_grads.size) if plan is not None else None
        self._k = 0                     # steps so far (the shared slots' parity)

    def _local_grad(self, rows: npt.NDArray[Any], nb: int) -> Tuple[float, int]:
        """This rank's share of the batch gradient into model.flat_grads; (loss sum, hits)."""
        model, grads = self.model, self.model.flat_grads
        if self.plan is not None:
            return self.plan.grad_step(self.x, self.y, rows, float(np.float32(1) / np.float32(nb)),
                                       grads)
        model.zero_grad()
        if len(rows) == 0:
            return 0.0, 0
        xb = self.feed(rows)  # type: ignore[misc]  # the general path has a feeder
        yb = self.y[rows]
        out = model(xb)
        batch_loss = float(self.loss(out, yb))
        g = self.loss.backward()
        if len(rows) != nb:     # the loss's mean over the slice -> its sum / nb
            g = np.multiply(g, np.asarray(len(rows) / nb, dtype=g.dtype), dtype=g.dtype)
        model.backward(g, **self.backward_kw)
        return batch_loss * len(rows), int(np.count_nonzero(np.argmax(out, axis=1) == yb))

    def run(self, perm: npt.NDArray[Any], start: int, stop: int,
            state: TrainState) -> Dict[str, Any]:
        comm, opt, b = self.comm, self.optimizer, self.batch_size
        loss_sum, correct, count = 0.0, 0, 0
        if self.plan is not None:        # callbacks may have changed the weights since
            self.plan.invalidate()
        for step in range(start, stop):
            idx = perm[step * b:(step + 1) * b]
            nb = len(idx)
            lo, hi = split_rows(nb, comm.rank, comm.size)
            if self.schedule is not None:
                _apply_schedule(self.schedule, opt, state.global_step)
            grads = self.model.flat_grads
            if self.plan is None:
                ls, c = self._local_grad(idx[lo:hi], nb)
                comm.allreduce_(grads)
                opt.step()
            else:
                plan, inv_b = self.plan, float(np.float32(1) / np.float32(nb))
                sig = plan.signal
                sig.reset(len(plan.layers))
                if self.shared is not None:
                    slot = self.shared.slot(self._k)
                    ls, c = plan.grad_step(self.x, self.y, idx[lo:hi], inv_b, slot)
                    comm.arrive()
                    # the update reads the ranks' slots and adds them (rank order) itself
                    plan.apply_sum(self.shared.slots[self._k & 1])
                    self._k += 1
                elif self.overlap:         # the reduction thread waits for each layer
                    pending = comm.allreduce_start(grads, buckets=self.buckets, ready=sig.wait)
                    ls, c = plan.grad_step(self.x, self.y, idx[lo:hi], inv_b, grads, signal=sig)
                else:
                    ls, c = plan.grad_step(self.x, self.y, idx[lo:hi], inv_b, grads, signal=sig)
                    pending = comm.allreduce_start(grads, buckets=self.buckets, ready=sig.wait)
                if self.shared is None:
                    comm.wait(pending)
                    plan.apply(grads)    # the update, the weights kept in the trainer
            state.global_step += 1
            loss_sum += ls
            correct += c
            count += hi - lo
        tot = comm.allreduce_values([loss_sum, correct, count])
        if not math.isfinite(tot[0]):
            # every rank sees the same sum: all of them stop here
            raise _Diverged(stop - 1, float(tot[0]), "weights", first=start)
        return {"loss_sum": float(tot[0]), "correct": int(tot[1]), "count": int(tot[2]),
                "steps": stop - start}


class _Diverged(Exception):
    """Non-finite loss at ``step`` (0-based, in the epoch), or non-finite weights found
    after a chunk of steps ending at ``step`` that began at ``first``."""

    def __init__(self, step: int, value: float, what: str = "loss",
                 first: Optional[int] = None) -> None:
        super().__init__(step, value)
        self.step, self.value, self.what = step, value, what
        self.first = step if first is None else first


def _schedule_lr(schedule: _Schedule, global_step: int) -> float:
    """Learning rate of ``global_step`` (0-based): ``schedule(t)`` or ``schedule.lr_at(t)``."""
    return float(schedule(global_step) if callable(schedule) else schedule.lr_at(global_step))


def _apply_schedule(schedule: _Schedule, optimizer: Optimizer, global_step: int) -> None:
    optimizer.lr = _schedule_lr(schedule, global_step)


def _precision_layers(model: Any, precision: Any) -> List[Any]:
    """The layers of ``model`` that ``fit(precision=...)`` switches: those with a
    ``precision`` setting that lists ``precision`` in their ``PRECISIONS`` (Dense, Conv2D).
    Raises when ``precision`` is unknown or no layer of the model can run it."""
    if precision not in fusion.PRECISIONS:
        raise ValueError(f"precision must be one of {fusion.PRECISIONS}, got {precision!r}")
    layers = [layer for layer in getattr(model, "layers", ())
              if precision in getattr(layer, "PRECISIONS", ())]
    if precision == "fp32":
        return layers
    if not layers:
        raise ValueError(f"precision={precision!r}: the model has no layer with a {precision} "
                         f"kernel (Dense has one)")
    for layer in layers:
        if getattr(layer, "dtype", None) != np.float32:
            raise DTypeError(f"precision={precision!r} needs float32 layers; "
                             f"{type(layer).__name__} is {layer.dtype}")
    return layers


def _make_engine(model: Any, loss: Loss, optimizer: Optimizer, x: npt.NDArray[Any],
                 y: npt.NDArray[Any], batch_size: int, schedule: Optional[_Schedule],
                 fused: Optional[bool], precision: str = "fp32"
                 ) -> Tuple[Union[_GeneralEngine, _FusedEngine], str]:
    """(engine, why the fused trainer does not run it: "" when it does)."""
    if fused is False:
        reason = "fused=False"
    elif x.dtype != np.uint8 and x.dtype != _model_dtype(model, x):
        # the plan reads uint8 images or rows of the model's float32 as they are; other
        # float data (float64, float16) is cast batch by batch on the general path
        reason = f"x is {x.dtype}, not uint8 or the model's {_model_dtype(model, x)}"
    else:
        verdict = fusion.check(model, loss, optimizer, batch_size, precision)
        if verdict.ok:
            plan = _fused.FusedPlan(model, optimizer, verdict.dense, batch_size)
            return _FusedEngine(plan, optimizer, x, y, schedule), ""
        reason = verdict.reason
    if fused is True:
        raise ValueError(f"fused=True but the fused trainer cannot run this model, loss and "
                         f"optimizer: {reason}")
    return _GeneralEngine(model, loss, optimizer, x, y, batch_size, schedule), reason


def _make_distributed_engine(comm: Communicator, model: Any, loss: Loss, optimizer: Optimizer,
                             x: npt.NDArray[Any], y: npt.NDArray[Any], batch_size: int,
                             schedule: Optional[_Schedule], fused: Optional[bool],
                             precision: str = "fp32") -> Tuple[_DistributedEngine, str]:
    """The data-parallel engine: the fused gradient step when ``fusion.check`` accepts
    the model for the per-rank batch, else the layer-by-layer gradient."""
    if getattr(model, "flat_grads", None) is None or getattr(optimizer, "model", None) is not model:
        raise ValueError("distributed training needs a model with flat buffers (a "
                         "fastnn.Sequential) and an optimizer built on the whole model "
                         "(e.g. SGD(model, lr=0.1)): the gradients are summed as one buffer")
    per_rank = -(-batch_size // comm.size)
    plan: Optional[ResidentGradPlan] = None
    if fused is False:
        reason = "fused=False"
    elif x.dtype != np.uint8 and x.dtype != _model_dtype(model, x):
        reason = f"x is {x.dtype}, not uint8 or the model's {_model_dtype(model, x)}"
    else:
        verdict = fusion.check(model, loss, optimizer, per_rank, precision)
        reason = verdict.reason
        if verdict.ok:
            plan = ResidentGradPlan(model, optimizer, verdict.dense, per_rank)
    if fused is True and plan is None:
        raise ValueError(f"fused=True but the fused trainer cannot run this model, loss and "
                         f"optimizer: {reason}")
    return _DistributedEngine(comm, model, loss, optimizer, x, y, batch_size, schedule,
                              plan), ("" if plan is not None else reason)


def _distributed_start(comm: Communicator, model: Any, optimizer: Optimizer,
                       seed: Optional[int], batch_size: int, n: int,
                       extra: Mapping[str, Any]) -> int:
    """Start-up of a data-parallel fit: the ranks must agree on fastnn's version, the
    architecture, the optimizer, the seed and the run's settings; rank 0's weights and
    optimizer state are then broadcast (as DDP does).  Returns the shared seed (rank 0
    draws one when none was given)."""
    comm.check_agree(startup_items(model, optimizer, seed, batch_size, n, extra))
    if seed is None:
        seed = comm.bcast_int(int(np.random.default_rng().integers(1 << 62)))
    comm.bcast_array_(model.flat_params, what="the broadcast of rank 0's weights")
    for buf in optimizer.state_buffers().values():
        comm.bcast_array_(buf, what="the broadcast of rank 0's optimizer state")
    return seed


def _evaluate_sharded(comm: Communicator, model: Any, x: npt.NDArray[Any],
                      y: npt.NDArray[Any], loss: Loss) -> Dict[str, float]:
    """``evaluate`` with the rows split over the ranks and the sums reduced."""
    lo, hi = split_rows(x.shape[0], comm.rank, comm.size)
    loss_sum = correct = 0.0
    if hi > lo:
        ev = evaluate(model, x[lo:hi], y[lo:hi], loss=loss, _checked=True)
        loss_sum, correct = ev["loss"] * (hi - lo), round(ev["accuracy"] * (hi - lo))
    tot = comm.allreduce_values([loss_sum, correct], what="the evaluation allreduce")
    n = x.shape[0]
    return {"loss": float(tot[0]) / n, "accuracy": float(tot[1]) / n}


# ---------------------------------------------------------------- progress output

def format_epoch_line(epoch: int, epochs: int, logs: Mapping[str, float]) -> str:
    """Keras verbose=2 style: ``Epoch 1/3 - 0.21s - loss: 0.2934 - accuracy: 0.9151 - ...``."""
    parts = [f"Epoch {epoch + 1}/{epochs}", f"{logs['epoch_time']:.2f}s"]
    for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if k in logs:
            parts.append(f"{k}: {logs[k]:.4f}")
    parts.append(f"{logs['samples_per_s']:.0f} samples/s")
    return " - ".join(parts)


class _Bar:
    """A progress bar per epoch when stdout is a terminal: tqdm's when it is installed
    (``pip install "fastnn[progress]"``), else a plain-text one drawn with ``\\r``."""

    WIDTH = 30           # characters of the plain-text bar

    def __init__(self, enabled: bool) -> None:
        self.enabled = bool(enabled) and sys.stdout.isatty()
        self.tqdm: Any = None      # tqdm's class, when installed
        if self.enabled:
            try:
                from tqdm import tqdm
                self.tqdm = tqdm
            except ImportError:
                pass
        self.bar: Any = None       # the running tqdm bar
        self.total = self.done = 0
        self.desc = ""

    @property
    def active(self) -> bool:
        return self.enabled

    def start(self, epoch: int, epochs: int, steps: int) -> None:
        if not self.enabled:
            return
        self.desc, self.total, self.done = f"Epoch {epoch + 1}/{epochs}", steps, 0
        if self.tqdm:
            self.bar = self.tqdm(total=steps, desc=self.desc, leave=False, unit="step",
                                 file=sys.stdout)

    def update(self, n: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        elif self.enabled:
            self.done += n
            sys.stdout.write("\r" + plain_bar(self.desc, self.done, self.total, loss,
                                               self.WIDTH))
            sys.stdout.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and self.total:
            # wipe the bar: the epoch line is printed in its place
            sys.stdout.write("\r" + " " * (len(self.desc) + self.WIDTH + 40) + "\r")
            sys.stdout.flush()
            self.total = 0


def plain_bar(desc: str, done: int, total: int, loss: float, width: int = 30) -> str:
    """One line of the plain-text progress bar.

    >>> plain_bar("Epoch 1/3", 469, 938, 0.25, width=10)
    'Epoch 1/3 [=====     ] 469/938 - loss: 0.2500'
    """
    filled = width * done // max(total, 1)
    return f"{desc} [{'=' * filled}{' ' * (width - filled)}] {done}/{total} - loss: {loss:.4f}"


# ---------------------------------------------------------------- fit

def _chunk_steps(callbacks: Sequence[Callback], bar: _Bar, steps_per_epoch: int) -> Optional[int]:
    """How many steps to run before returning to Python (gcd of what callbacks ask)."""
    freqs = [int(f) for f in (getattr(cb, "step_freq", None) for cb in callbacks) if f]
    if bar.active:
        freqs.append(max(1, steps_per_epoch // 50))
    if not freqs:
        return None
    g = 0
    for f in freqs:
        g = math.gcd(g, f)
    return max(1, g)


_F = TypeVar("_F", bound=Callable[..., Any])


def _leaves_blas_as_found(fn: _F) -> _F:
    """Run ``fn`` inside ``_threads.blas_restored()``: when it returns (or raises),
    numpy's BLAS thread pool is as the caller had it, even if fastnn's BLAS
    kernels limited it while ``fn`` ran (issue 14)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _threads.blas_restored():
            return fn(*args, **kwargs)
    return cast(_F, wrapper)


@_leaves_blas_as_found
def fit(model: Any, x: npt.NDArray[Any], y: npt.NDArray[np.integer], *, epochs: int,
        batch_size: int, loss: Loss, optimizer: Optimizer,
        validation_data: Optional[Tuple[npt.NDArray[Any], npt.NDArray[np.integer]]] = None,
        shuffle: bool = True, seed: Optional[int] = None, callbacks: Iterable[Callback] = (),
        verbose: int = 1, schedule: Optional[_Schedule] = None, initial_epoch: int = 0,
        resume: Optional[Mapping[str, Any]] = None, fused: Optional[bool] = None,
        precision: str = "fp32",
        _distributed: Optional[Communicator] = None) -> History:
    """Train ``model`` on (x, y); returns a :class:`History`.

    Arguments follow Keras: ``epochs`` is the index of the last epoch to run
    (so a resumed run passes the same ``epochs``), ``validation_data`` a pair
    (x_val, y_val) evaluated after each epoch, ``verbose`` 0 (silent), 1 (a
    progress bar on a terminal, plus the epoch line) or 2 (the epoch line).
    ``schedule``: a callable global_step -> learning rate (or an object with
    ``lr_at(step)``), applied before every step.  ``resume``: the ``extra``
    dict of a checkpoint written by ``ModelCheckpoint`` (epoch, rng state,
    history); the model and optimizer must already hold its weights and state.
    ``fused``: None picks the native plan when there is one, False forces the
    layer-by-layer path, True requires the plan.  Which engine ran, and why
    not the fused one, is in ``history.params["engine"]`` /
    ``["why_not_fused"]`` (``fastnn.fusion.check`` decides); ``verbose=2``
    prints it first.

    ``precision``: ``"fp32"`` (default) or ``"bf16"``, mixed precision as
    ``torch.autocast`` runs it: the inputs of every Dense GEMM (activations,
    weights, and in backward the gradients) are rounded to bfloat16 (round to
    nearest even) and the products accumulated in float32; the master weights,
    optimizer state, bias, activations' derivatives, softmax, loss and
    reductions stay float32.  It is set on the model's layers that have a bf16
    kernel (``Dense``; other layers run float32) for the duration of the fit,
    validation included, and restored after: checkpoints hold float32 weights
    and the model evaluates in either precision.  ``fastnn._fused.reference_run(...,
    precision="bf16")`` is the spec; ``history.params["precision"]`` records it.

    Data-parallel training over MPI ranks: :func:`fit_distributed`, same arguments.

    Raises ValueError before any step when x (or the validation x) holds NaN
    or inf, naming the first such row.

    Raises DivergenceError when the loss or the weights become NaN/inf,
    naming the epoch and step; callbacks have not seen that epoch, so the
    last checkpoint on disk is the last good one."""
    if schedule is not None and not callable(schedule) and not hasattr(schedule, "lr_at"):
        raise TypeError(f"schedule must be a callable step -> lr or an LRSchedule, "
                        f"got {type(schedule).__name__}")
    epochs = _check_int("epochs", epochs, 0)
    batch_size = _check_int("batch_size", batch_size, 1)
    initial_epoch = _check_int("initial_epoch", initial_epoch, 0)
    if verbose not in (0, 1, 2, True, False):
        raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
    if seed is not None:
        seed = _check_int("seed", seed, 0)
    _check_loss(loss)
    _check_optimizer(optimizer, model)
    precision_layers = _precision_layers(model, precision)
    x = _check_x(x)
    y = _check_y(y, x.shape[0])
    n = x.shape[0]
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise TypeError("validation_data must be a pair (x_val, y_val)")
        xv = _check_x(validation_data[0], "validation x")
        yv = _check_y(validation_data[1], xv.shape[0], "validation y")
    callbacks = list(callbacks or ())
    for cb in callbacks:
        if not hasattr(cb, "on_epoch_end"):
            raise TypeError(f"callbacks must be fastnn.callbacks.Callback objects, got {cb!r}")

    _check_features(model, x)
    if validation_data is not None:
        _check_features(model, xv, "validation x")
    n_classes = _output_dim(model, x)
    _check_labels(y, n_classes)
    if validation_data is not None:
        _check_labels(yv, n_classes, "validation y")
    # NaN/inf rows would surface only as a divergence after a chunk of work: refuse them
    # first (one BLAS pass over float data, ~10 ms for MNIST as float32; none for uint8)
    check_finite_rows(x, "x")
    if validation_data is not None:
        check_finite_rows(xv, "validation x")

    comm = _distributed
    if comm is not None:
        seed = _distributed_start(comm, model, optimizer, seed, batch_size, n, {
            "epochs": epochs, "shuffle": bool(shuffle), "initial epoch": initial_epoch,
            "precision": precision,
            "resumed at": None if resume is None else resume.get("global_step"),
            "validation samples": None if validation_data is None else xv.shape[0]})
        if comm.rank != 0:      # rank 0 alone prints and writes files
            verbose = 0
            callbacks = [cb for cb in callbacks if not getattr(cb, "rank0_only", False)]

    rng = np.random.default_rng(seed)
    history = History()
    if resume is not None:
        initial_epoch = int(resume.get("epoch", initial_epoch))
        rng.bit_generator.state = _restore_state(resume["rng_state"])
        set_layer_rng_states(model, resume.get("layer_rng_states"))
        history = History.from_dict(resume.get("history"))

    steps_per_epoch = -(-n // batch_size)
    engine: Union[_GeneralEngine, _FusedEngine, _DistributedEngine]
    if comm is not None:
        engine, why_not_fused = _make_distributed_engine(comm, model, loss, optimizer, x, y,
                                                         batch_size, schedule, fused, precision)
    else:
        engine, why_not_fused = _make_engine(model, loss, optimizer, x, y, batch_size,
                                             schedule, fused, precision)
    history.params.update({"epochs": epochs, "batch_size": batch_size, "steps": steps_per_epoch,
                           "samples": n, "engine": engine.name,
                           "why_not_fused": why_not_fused, "precision": precision})
    if comm is not None:
        history.params.update({"ranks": comm.size,
                               "per_rank_batch": -(-batch_size // comm.size)})
    if verbose == 2:
        print(f"engine: {engine.name}" + (f" ({why_not_fused})" if why_not_fused else ""),
              flush=True)
    if epochs <= initial_epoch:
        # Keras runs nothing here without a word; say it (a resumed run passes the total)
        warnings.warn(f"fit: nothing to train: epochs={epochs} is the index of the last epoch "
                      f"to run and {initial_epoch} epoch(s) are done already; pass epochs > "
                      f"{initial_epoch}", UserWarning, stacklevel=2)
    state = TrainState(model, optimizer, loss, history, rng, history.params)
    state.engine = engine.name
    state.global_step = int(resume.get("global_step", initial_epoch * steps_per_epoch)) \
        if resume is not None else initial_epoch * steps_per_epoch
    for cb in callbacks:
        cb.set_state(state)

    bar = _Bar(verbose == 1)
    chunk = _chunk_steps(callbacks, bar, steps_per_epoch)
    if comm is not None:
        # rank 0's chunks (its bar and its rank-0-only callbacks): a chunk ends in a
        # collective, so every rank must end its chunks at the same steps
        chunk = comm.bcast_int(chunk or 0) or None
    step_cbs = [cb for cb in callbacks if getattr(cb, "step_freq", None)]

    saved_precision = [layer.precision for layer in precision_layers]
    model.train()
    for layer in precision_layers:
        layer.precision = precision
    for cb in callbacks:
        cb.on_train_begin({})
    try:
        for epoch in range(initial_epoch, epochs):
            state.epoch = epoch
            for cb in callbacks:
                cb.on_epoch_begin(epoch, {})
            perm = rng.permutation(n) if shuffle else np.arange(n)
            bar.start(epoch, epochs, steps_per_epoch)
            totals = {"loss_sum": 0.0, "correct": 0, "count": 0}
            t0 = time.perf_counter()
            step = 0
            try:
                while step < steps_per_epoch:
                    if chunk is None:
                        stop = steps_per_epoch
                    else:   # chunk boundaries fall on multiples of `chunk` global steps
                        stop = min(steps_per_epoch, step + chunk - state.global_step % chunk)
                    chunk_start = step
                    res = engine.run(perm, step, stop, state)
                    for k in totals:
                        totals[k] += res[k]
                    step = stop
                    if chunk is not None and not _params_finite(model):
                        raise _Diverged(step - 1, float("nan"), "weights", first=chunk_start)
                    if step_cbs:
                        logs = {"loss": res["loss_sum"] / max(res["count"], 1),
                                "accuracy": res["correct"] / max(res["count"], 1)}
                        for cb in step_cbs:
                            # step_cbs holds the callbacks whose step_freq is an int
                            if state.global_step % cb.step_freq == 0 or step == steps_per_epoch:  # type: ignore[operator]
                                cb.on_batch_end(state.global_step, logs)
                    bar.update(res["steps"], res["loss_sum"] / max(res["count"], 1))
                    if state.stop_training and step_cbs:
                        break
                if chunk is None and not _params_finite(model):
                    raise _Diverged(steps_per_epoch - 1, float("nan"), "weights", first=0)
            except _Diverged as d:
                if d.what == "weights":
                    where = (f"at step {d.step + 1}" if d.first == d.step else
                             f"in steps {d.first + 1}-{d.step + 1}")
                    what = "the weights became non-finite"
                else:
                    where = f"at step {d.step + 1}"
                    what = f"the loss became non-finite ({d.value})"
                err = DivergenceError(
                    f"training diverged in epoch {epoch + 1} {where} of {steps_per_epoch} "
                    f"(global step {epoch * steps_per_epoch + d.step + 1}): {what}; lower "
                    f"the learning rate (the data was checked: it is finite). Checkpoints on "
                    f"disk hold the last good epoch ({len(history.epoch)} completed)")
                err.epoch, err.step = epoch, d.step
                raise err from None
            finally:
                bar.close()
            elapsed = time.perf_counter() - t0
            count = max(totals["count"], 1)
            logs = {"loss": totals["loss_sum"] / count, "accuracy": totals["correct"] / count}
            if validation_data is not None:
                ev = (evaluate(model, xv, yv, loss=loss, _checked=True) if comm is None
                      else _evaluate_sharded(comm, model, xv, yv, loss))
                logs["val_loss"], logs["val_accuracy"] = ev["loss"], ev["accuracy"]
                model.train()
            logs["epoch_time"] = elapsed
            logs["samples_per_s"] = totals["count"] / elapsed if elapsed > 0 else float("inf")
            history.append(epoch, logs)
            state.rng_state = rng.bit_generator.state
            for cb in callbacks:
                cb.on_epoch_end(epoch, dict(logs))
            if comm is not None:
                comm.check_identical(model, optimizer, epoch)
                state.stop_training = comm.any(state.stop_training)
            if verbose:     # after the callbacks: the line means "done, logged and saved"
                print(format_epoch_line(epoch, epochs, logs), flush=True)
            if state.stop_training:
                break
    finally:
        model.eval()
        for layer, saved in zip(precision_layers, saved_precision):
            layer.precision = saved
    for cb in callbacks:
        cb.on_train_end({})
    return history


def fit_distributed(model: Any, x: npt.NDArray[Any], y: npt.NDArray[np.integer], *,
                    comm: Optional[Communicator] = None, **kwargs: Any) -> History:
    """:func:`fit` data-parallel over MPI ranks (``mpirun -n N python train.py``); ``comm``
    a :class:`fastnn.distributed.Communicator`, by default over ``MPI.COMM_WORLD``;
    every other argument is ``fit``'s, the same on every rank.

    ``batch_size`` is the GLOBAL batch B: every rank takes a disjoint slice of
    each batch of the permutation shared by the seed, computes the gradient of
    the sum of the loss over its slice divided by B, the ranks sum
    ``model.flat_grads`` (one allreduce) and every rank applies the same
    ``optimizer.step()``.  So N ranks give the weights of one process with batch
    B, to float summation order (the tests allow 2e-5 after an epoch).  The
    gradient comes from the fused trainer's gradient-only step when it covers
    the model, else from the layer-by-layer path.  Ranks on one machine exchange
    the fused path's gradients through shared memory (one barrier per step, the
    update adds the ranks' gradients in rank order); across machines, or with
    ``FASTNN_MPI_REDUCE=mpi``, each layer's gradient is allreduced as soon as the
    backward pass has written it, overlapped with the earlier layers' backward
    (``FASTNN_MPI_OVERLAP=0``: after the whole step, the same bits).

    The ranks must agree on fastnn's version, the architecture, the optimizer,
    the seed and the run's settings, else ``DistributedError`` names the ranks
    that differ; rank 0's weights and optimizer state are broadcast first, and
    their hash is compared after every epoch.  Evaluation is sharded and
    reduced.  Rank 0 alone prints and runs the callbacks whose ``rank0_only``
    is True (checkpoints, TensorBoard, CSV): a checkpoint does not depend on
    the number of ranks, and resumes on any number (``resume=``)."""
    return fit(model, x, y, _distributed=comm if comm is not None else get_world(), **kwargs)


# ---------------------------------------------------------------- evaluate / predict

def _forward_batches(model: Any, x: npt.NDArray[Any],
                     batch_size: int) -> Iterator[Tuple[int, int, npt.NDArray[Any]]]:
    """Yield (start, stop, outputs) over x in eval mode, uint8 scaled per batch."""
    feed = _BatchFeeder(x, min(batch_size, x.shape[0]), _model_dtype(model, x))
    n = x.shape[0]
    for s in range(0, n, batch_size):
        e = min(n, s + batch_size)
        xb = x[s:e]
        if xb.dtype == np.uint8 or feed.scaled is not None:
            xb = feed(np.arange(s, e))
        yield s, e, np.asarray(model(xb))


def _default_loss() -> Loss:
    from .losses import SoftmaxCrossEntropy
    return SoftmaxCrossEntropy()


@_leaves_blas_as_found
def evaluate(model: Any, x: npt.NDArray[Any], y: npt.NDArray[np.integer],
             loss: Optional[Loss] = None, batch_size: int = EVAL_BATCH,
             _checked: bool = False) -> Dict[str, float]:
    """Mean loss and accuracy of ``model`` on (x, y) in eval mode.

    accuracy = mean(argmax(model(x), 1) == y); loss defaults to softmax
    cross-entropy.  Returns ``{"loss": float, "accuracy": float}``."""
    if not _checked:
        batch_size = _check_int("batch_size", batch_size, 1)
        x = _check_x(x)
        y = _check_y(y, x.shape[0])
    loss = _check_loss(loss) if loss is not None else _default_loss()
    was_training = getattr(model, "training", False)
    model.eval()
    loss_sum, correct = 0.0, 0
    try:
        for s, e, out in _forward_batches(model, x, batch_size):
            if not _checked and s == 0:
                _check_labels(y, out.shape[1])
            yb = y[s:e]
            loss_sum += float(loss(out, yb)) * (e - s)
            correct += int(np.count_nonzero(np.argmax(out, axis=1) == yb))
    finally:
        if was_training:
            model.train()
    n = x.shape[0]
    return {"loss": loss_sum / n, "accuracy": correct / n}


def predict(model: Any, x: npt.NDArray[Any], batch_size: int = EVAL_BATCH,
            out: Optional[npt.NDArray[Any]] = None) -> npt.NDArray[Any]:
    """Model outputs (N, C) for x, computed in eval mode in batches (uint8 scaled by 1/255).

    ``out``: a C-contiguous array (N, C) of the model's dtype to write the outputs
    into (returned); an MLP (Dense layers with ReLU or none, Dropout) fed a float
    batch of its dtype then allocates nothing per call.

    The lean path: for such an MLP and a C-contiguous float input of the model's dtype,
    the whole chain runs as one native call (``matmul_c.LeanMLP``, kept per model) that
    makes, layer by layer, the C GEMM call ``Dense.forward`` makes (the same arguments,
    so the same numbers), into buffers kept per model, with the last layer writing
    straight into the result; anything else runs ``model(x)`` batch by batch."""
    runner = _lean_runner(model, batch_size)
    if runner is not None:
        result = runner.run(x, out, batch_size, _threads.get_num_threads())
        if result is not None:
            return result
    if out is not None:
        out = _check_out(model, x, out)
    result = _predict_general(model, x, batch_size)
    if out is None:
        return result
    out[...] = result
    return out


def _check_out(model: Any, x: Any, out: Any) -> npt.NDArray[Any]:
    if not isinstance(out, np.ndarray):
        raise TypeError(f"predict: out must be a numpy array, got {type(out).__name__}")
    x = _check_x(x)
    n = x.shape[0]
    dt = _model_dtype(model, x)
    if out.dtype != dt:
        raise DTypeError(f"predict: out must have the model's dtype {dt}, got {out.dtype}")
    if out.ndim != 2 or out.shape[0] != n:
        raise ShapeError(f"predict: out must have shape (N, C) with N = {n} rows, "
                         f"got {out.shape}")
    if not (out.flags.c_contiguous and out.flags.writeable and out.flags.aligned):
        raise ValueError("predict: out must be a writeable, aligned, C-contiguous array")
    return out


# model -> its lean-path runner (matmul_c.LeanMLP: the Dense chain and its buffers),
# rebuilt when the model's layers, weight arrays or activations change (LeanMLP.matches)
_LEAN_RUNNERS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_LEAN_MODULE: List[Any] = []          # [fastnn._ext.matmul_c or None], once looked up


def _lean_runner(model: Any, batch_size: Any) -> Any:
    """The model's ``LeanMLP`` when ``predict`` may take the lean path (whatever the
    input), else None."""
    if type(batch_size) is not int or batch_size < 1:
        return None
    try:
        runner = _LEAN_RUNNERS.get(model)
    except TypeError:                 # not weak-referenceable: no lean path
        return None
    if runner is not None and runner.matches(model.layers):
        return runner
    # no negative caching: a model's layers may change into an MLP (the check is
    # cheap next to the general path's forward)
    runner = _build_lean_runner(model)
    if runner is not None:
        _LEAN_RUNNERS[model] = runner
    return runner


def _build_lean_runner(model: Any) -> Any:
    from .layers import Dense, Dropout
    from .sequential import Sequential
    cls = type(model)
    if not (isinstance(model, Sequential) and cls.__call__ is Sequential.__call__
            and cls.forward is Sequential.forward and cls._forward is Sequential._forward):
        return None                   # a subclass that computes its own way
    if not _LEAN_MODULE:
        try:
            from ._ext import matmul_c
            _LEAN_MODULE.append(matmul_c)
        except ImportError:
            _LEAN_MODULE.append(None)
    if _LEAN_MODULE[0] is None or not hasattr(_LEAN_MODULE[0], "LeanMLP"):
        return None
    dtype = model.dtype
    dense = []
    width = None
    for layer in model.layers:
        if type(layer) is Dropout:
            continue                  # the identity in eval mode
        if type(layer) is not Dense:
            return None
        assert isinstance(layer, Dense)
        if layer.activation not in (None, "relu") or layer.dtype != dtype \
                or layer.precision != "fp32" or (width is not None and layer.in_features != width):
            return None
        dense.append((layer, layer.weight.data,
                      layer.bias.data if layer.bias is not None else None,
                      layer.activation == "relu"))
        width = layer.out_features
    if not dense:
        return None
    return _LEAN_MODULE[0].LeanMLP(dense, model.layers)


def _lean_plan(model: Any, x: Any, batch_size: Any) -> Any:
    """The model's lean-path runner when ``predict(x, batch_size)`` takes the lean
    path, else None."""
    runner = _lean_runner(model, batch_size)
    if runner is None or not runner.accepts(x):
        return None
    return runner


@_leaves_blas_as_found
def _predict_general(model: Any, x: npt.NDArray[Any], batch_size: int) -> npt.NDArray[Any]:
    batch_size = _check_int("batch_size", batch_size, 1)
    x = _check_x(x)
    was_training = getattr(model, "training", False)
    model.eval()
    result = None
    try:
        for s, e, out in _forward_batches(model, x, batch_size):
            if result is None:
                result = np.empty((x.shape[0],) + out.shape[1:], out.dtype)
            result[s:e] = out
    finally:
        if was_training:
            model.train()
    return result  # type: ignore[return-value]  # x is not empty: result was made
