"""The fused native training path: a whole epoch of an MLP in one native call.

For a batch of rows ``idx`` (one slice of the epoch's permutation) each step
computes, in float32 inside one OpenMP region (kernels/train/trainer.c)::

    a0 = x[idx] (uint8 * float32(1/255), or the float rows)
    a_{l+1} = act_l(a_l @ W_l + b_l)                 act_l = ReLU or identity, logits last
    loss = mean_r( logsumexp(z_r) - z_r[y_r] ),  g_L = (softmax(z) - onehot(y)) / B
    g_l = (g_{l+1} @ W_l^T) * (a_l > 0),  dW_l = a_l^T g_{l+1},  db_l = sum_r g_{l+1}
    W_l, b_l <- optimizer(W_l, b_l, dW_l, db_l)      SGD (momentum, nesterov, weight decay),
                                                     Adam, AdamW: PyTorch's formulas

with the optimizer update applied in the epilogue of the GEMM tile that
computed each gradient (gradients are never stored).  ``reference_run`` below
is the float64 numpy spec of exactly these steps.

bf16 mixed precision (``fit(precision="bf16")``, a plan whose model's Dense layers
are set to "bf16"): the three matmuls of each layer take bf16 copies of both
inputs (round to nearest even, written once by the epilogue that produced the
float32 values; the weights' copies by the update epilogue) and sum in float32
(vdpbf16ps with AVX512_BF16, the same products as float32 FMAs below it); the
master weights, optimizer state, bias, ReLU mask, softmax and loss stay float32.
Spec: ``reference_run(..., precision="bf16")``.

Used by ``fastnn.training.fit``::

    plan = fastnn._fused.plan(model, loss, optimizer, batch_size)  # None: not supported
    res = plan.run(x, y, perm, start, stop)   # steps [start, stop) of the epoch ordered by perm

What runs fused is decided in one place, ``fastnn.fusion.check``, from the
public ``fusion_spec()`` of the model's layers, the loss and the optimizer:
today a float32 ``Sequential`` of an optional leading ``Flatten``, then
``Dense`` layers with activation None or "relu" (a ``ReLU`` layer right after
a ``Dense`` without activation is folded into it), the last one giving the
logits; ``SoftmaxCrossEntropy(label_smoothing=0)``; ``SGD``, ``Adam`` or
``AdamW`` created on the whole model (flat state buffers).

>>> import numpy as np, fastnn
>>> from fastnn.layers import Dense
>>> from fastnn.losses import SoftmaxCrossEntropy
>>> from fastnn.optim import SGD
>>> model = fastnn.Sequential([Dense(4, 8, activation="relu"), Dense(8, 3)], seed=0)
>>> opt = SGD(model, lr=0.1, momentum=0.9)
>>> p = plan(model, SoftmaxCrossEntropy(), opt, batch_size=2)
>>> x = np.random.default_rng(0).random((5, 4), dtype=np.float32)
>>> res = p.run(x, np.array([0, 1, 2, 0, 1]), np.arange(5))
>>> res["steps"], res["count"], opt.step_count
(3, 5, 3)
"""
from __future__ import annotations

import math
import numbers
import threading
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

from . import _threads
from .errors import DTypeError, ShapeError
from .fusion import LayerSpec, check, native_trainer

if TYPE_CHECKING:
    from .losses import Loss
    from .optim import Optimizer

__all__ = ["plan", "FusedPlan", "GradPlan", "reference_run"]


def plan(model: Any, loss: Loss, optimizer: Optimizer, batch_size: int) -> Optional[FusedPlan]:
    """A ``FusedPlan`` for (model, loss, optimizer, batch_size), or None when
    :func:`fastnn.fusion.check` declines the combination (its ``reason`` says
    why; the caller then uses the layer-by-layer path)."""
    verdict = check(model, loss, optimizer, batch_size)
    if not verdict.ok:
        return None
    return FusedPlan(model, optimizer, verdict.dense, int(batch_size))


class FusedPlan:
    """The native epoch loop for one (model, optimizer, batch size); the
    workspace (activations, gradients, padded weight copies) is allocated once
    here.  See the module docstring for the math."""

    dims: List[int]     # layer widths: Dense specs always carry them (LayerSpec says Optional)

    def __init__(self, model: Any, optimizer: Optimizer,
                 dense: Sequence[Tuple[LayerSpec, bool]], batch_size: int,
                 precision: Optional[str] = None) -> None:
        """``dense``: the (Dense ``LayerSpec``, relu flag) pairs of
        ``fastnn.fusion.check(...).dense``.  ``precision``: "fp32" or "bf16" (bf16
        GEMM inputs, fp32 sums, as ``fit(precision="bf16")``), or None: at each
        call, the precision the model's Dense layers are set to (``fit`` sets
        them for its duration, so a plan made by ``fit`` follows it)."""
        self.model, self.optimizer, self.batch_size = model, optimizer, batch_size
        self.layers = [spec for spec, _ in dense]
        self.relu = [bool(r) for _, r in dense]
        self.dims = [self.layers[0].in_features] + [spec.out_features for spec in self.layers]  # type: ignore[assignment]
        self.n_classes = self.dims[-1]
        self._native = native_trainer()
        if precision is not None and precision not in self._native.PRECISIONS:
            raise ValueError(f"FusedPlan: precision must be one of {self._native.PRECISIONS}, "
                             f"got {precision!r}")
        self.precision = precision
        self._has_bias = [spec.bias is not None for spec in self.layers]
        self._trainers: Dict[str, Any] = {}       # one workspace per precision run
        self._trainer_for(self.current_precision())
        # the workspace is shared by every call: calls from several Python
        # threads (the native loop releases the GIL) take turns
        self._lock = threading.Lock()

    def current_precision(self) -> str:
        """The precision the next call runs: ``precision`` when given, else that of
        the model's Dense layers (all of them: a model with both raises)."""
        if self.precision is not None:
            return self.precision
        found = {getattr(layer, "precision", "fp32") for layer in getattr(self.model, "layers", ())
                 if "bf16" in getattr(layer, "PRECISIONS", ())}
        if len(found) > 1:
            raise ValueError(f"FusedPlan: the model's Dense layers mix precisions "
                             f"{sorted(found)}; the fused trainer runs one")
        return found.pop() if found else "fp32"

    def _trainer_for(self, precision: str) -> Any:
        trainer = self._trainers.get(precision)
        if trainer is None:
            trainer = self._native.Trainer(self.dims, self.relu, self._has_bias,
                                           self.batch_size, precision)
            self._trainers[precision] = trainer
        return trainer

    @property
    def _trainer(self) -> Any:
        """The native workspace of the current precision (allocated once per precision)."""
        return self._trainer_for(self.current_precision())

    def new_profile(self) -> npt.NDArray[np.float64]:
        """A zeroed accumulator for ``run(..., profile=)``."""
        return np.zeros(self._native.PROFILE_SLOTS)

    def phase_names(self) -> List[str]:
        """Names of the profile slots in use: a step's phases, then "wait"."""
        return self._trainer.phase_names() + ["wait"]

    def profile_dict(self, profile: npt.NDArray[np.float64]) -> Dict[str, float]:
        """{phase name: seconds} from an accumulator filled by ``run``."""
        names = self.phase_names()
        return dict(zip(names[:-1], profile[:len(names) - 1].tolist()), wait=float(profile[-1]))

    def _slot_views(self, flat: Optional[npt.NDArray[Any]]
                    ) -> Tuple[List[Optional[npt.NDArray[Any]]], List[Optional[npt.NDArray[Any]]]]:
        """Per-layer (W, b) views of one flat optimizer state buffer (or Nones)."""
        ws: List[Optional[npt.NDArray[Any]]]
        bs: List[Optional[npt.NDArray[Any]]]
        ws, bs = [], []
        for spec in self.layers:
            for p, out in ((spec.weight, ws), (spec.bias, bs)):
                if p is None or flat is None:
                    out.append(None)
                else:
                    # a model's parameters are bound: p.offset is an int
                    out.append(flat[p.offset:p.offset + p.size].reshape(p.shape))  # type: ignore[operator]
        return ws, bs

    def _check_x(self, x: Any) -> npt.NDArray[Any]:
        if not isinstance(x, np.ndarray):
            raise DTypeError(f"FusedPlan.run: x must be a numpy array, got {type(x).__name__}")
        if x.dtype != np.uint8 and x.dtype != np.float32:
            raise DTypeError(f"FusedPlan.run: x must be uint8 images or float32 (the model's "
                             f"dtype), got dtype {x.dtype}")
        if x.ndim < 2 or math.prod(x.shape[1:]) != self.dims[0]:
            raise ShapeError(f"FusedPlan.run: x must have shape (N, {self.dims[0]}) or "
                             f"(N, ...) with {self.dims[0]} features per row, got {x.shape}")
        x2 = x.reshape(x.shape[0], self.dims[0]) if x.flags.c_contiguous else None
        if x2 is None or x2.strides[1] != x2.itemsize:
            x2 = np.ascontiguousarray(x).reshape(x.shape[0], self.dims[0])
        return x2

    def run(self, x: npt.NDArray[Any], y: npt.ArrayLike, perm: npt.ArrayLike, start: int = 0,
            stop: Optional[int] = None, lrs: Optional[npt.ArrayLike] = None,
            profile: Optional[npt.NDArray[np.float64]] = None) -> Dict[str, Any]:
        """Train on steps [start, stop) of the epoch ordered by ``perm``: step s
        uses the rows perm[s*B:(s+1)*B] (the last batch may be partial).

        Updates the model's parameters, the optimizer's buffers and its
        ``step_count`` in place; reads ``optimizer.lr`` now, or takes step s's
        learning rate from ``lrs[s - start]`` (a schedule, one value per step,
        so that a per-step schedule still runs as one native call).  Returns
        ``{"loss_sum", "correct", "count", "steps", "single_thread_fallback",
        "single_thread_chunks"}``; a non-finite batch loss stops the run after
        that step and ``steps`` counts the finite ones.  The native loop runs
        the steps in chunks of about 0.15 s of work; ``single_thread_chunks``
        counts the chunks that finished on one thread because another kept
        losing its core to other jobs (the next chunk starts with every
        thread again), ``single_thread_fallback`` is whether there was any.
        Results are the same for any thread count.

        x: uint8 (N, ...) images or float32 (N, features); y: integer labels (N,)
        in [0, classes); perm: integer row indices (any length).  ``profile``
        (benchmarks): a float64 array from ``new_profile()`` that the task
        seconds per phase are added to (see ``phase_names()``)."""
        x2 = self._check_x(x)
        n = x2.shape[0]
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != n:
            raise ShapeError(f"FusedPlan.run: y must have shape ({n},) (one label per row of x), "
                             f"got {y.shape}")
        if y.dtype.kind not in "iu":
            raise DTypeError(f"FusedPlan.run: y must hold integer class labels, got dtype "
                             f"{y.dtype}")
        perm = np.asarray(perm)
        if perm.ndim != 1 or perm.dtype.kind not in "iu":
            raise DTypeError(f"FusedPlan.run: perm must be a 1-D integer array, got dtype "
                             f"{perm.dtype} and shape {perm.shape}")
        b = self.batch_size
        total_steps = -(-perm.shape[0] // b)
        stop = total_steps if stop is None else stop
        for name, v in (("start", start), ("stop", stop)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"FusedPlan.run: {name} must be an integer, got {type(v).__name__}")
        if not 0 <= start <= stop <= total_steps:
            raise ValueError(f"FusedPlan.run: need 0 <= start <= stop <= {total_steps} "
                             f"(steps of batch {b} in perm), got start={start}, stop={stop}")
        idx = np.ascontiguousarray(perm[start * b:stop * b], dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"FusedPlan.run: perm holds row indices outside [0, {n}) "
                             f"(min {idx.min()}, max {idx.max()})")
        labels = np.ascontiguousarray(y[idx], dtype=np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= self.n_classes):
            raise ValueError(f"FusedPlan.run: y holds labels outside [0, {self.n_classes}) "
                             f"(min {labels.min()}, max {labels.max()})")
        if lrs is not None:
            lrs = np.ascontiguousarray(lrs, dtype=np.float32)
            if lrs.shape != (stop - start,):
                raise ShapeError(f"FusedPlan.run: lrs must hold one learning rate per step, "
                                 f"shape ({stop - start},), got {lrs.shape}")
            if not (np.all(np.isfinite(lrs)) and np.all(lrs >= 0)):
                raise ValueError("FusedPlan.run: lrs must be finite and >= 0")
        if idx.size == 0:
            return {"loss_sum": 0.0, "correct": 0, "count": 0, "steps": 0,
                    "single_thread_fallback": False, "single_thread_chunks": 0}
        with self._lock:
            return self._run_native(x2, labels, idx, start, stop, lrs, profile)

    def _run_native(self, x2: npt.NDArray[Any], labels: npt.NDArray[np.int64],
                    idx: npt.NDArray[np.int64], start: int, stop: int,
                    lrs: Optional[npt.NDArray[np.float32]],
                    profile: Optional[npt.NDArray[np.float64]]) -> Dict[str, Any]:
        opt, b = self.optimizer, self.batch_size
        W = [spec.weight.data for spec in self.layers]  # type: ignore[union-attr]  # Dense: has one
        bias = [spec.bias.data if spec.bias is not None else None for spec in self.layers]
        for a in W + [v for v in bias if v is not None]:
            if not a.flags.c_contiguous or a.dtype != np.float32:    # views of flat_params
                raise DTypeError("FusedPlan.run: parameters must be C-contiguous float32")
        # read now, not at plan time: lr, hyper-parameters and state may change between calls
        ospec = opt.fusion_spec()
        s1W, s1b = self._slot_views(ospec.slots[0])
        s2W, s2b = self._slot_views(ospec.slots[1])
        loss_sum, correct, steps, solo = self._trainer.run(
            W, bias, s1W, s1b, s2W, s2b, x2, x2.dtype == np.uint8, x2.shape[1], labels, idx,
            ospec.kind, ospec.lr, step=ospec.step, nthreads=_threads.get_num_threads(),
            lrs=lrs, profile=profile, **ospec.hyper)
        requested = stop - start
        ran = steps if steps == requested else steps + 1     # the diverging step ran too
        opt.step_count += ran
        count = min(ran * b, idx.size)
        return {"loss_sum": float(loss_sum), "correct": int(correct), "count": int(count),
                "steps": int(steps), "single_thread_fallback": solo > 0,
                "single_thread_chunks": int(solo)}


class GradPlan(FusedPlan):
    """The fused step without its update, for data-parallel training: one step's
    gradients into a flat buffer laid out like ``model.flat_params``, so that the
    ranks can sum them (``fastnn.distributed``) before one optimizer step::

        g_L = (softmax(z) - onehot(y)) * inv_b        inv_b = 1 / B, B the GLOBAL batch
        grads[W_l] = a_l^T g_{l+1},  grads[b_l] = sum_r g_{l+1}   (this rank's rows only)

    The tiles are the fused step's, so with all B rows and inv_b = 1/B the
    gradient is bitwise the one ``FusedPlan.run`` applies; the update is then
    ``optimizer.step()`` (one fused kernel call over the flat buffers).
    ``batch_size``: the most rows one ``grad_step`` takes (a rank's slice).

    >>> import numpy as np, fastnn
    >>> from fastnn.layers import Dense
    >>> from fastnn.losses import SoftmaxCrossEntropy
    >>> from fastnn.optim import SGD
    >>> from fastnn.fusion import check
    >>> model = fastnn.Sequential([Dense(4, 8, activation="relu"), Dense(8, 3)], seed=0)
    >>> opt = SGD(model, lr=0.1)
    >>> gp = GradPlan(model, opt, check(model, SoftmaxCrossEntropy(), opt, 2).dense, 2)
    >>> x = np.random.default_rng(0).random((5, 4), dtype=np.float32)
    >>> loss_sum, correct = gp.grad_step(x, np.array([0, 1, 2, 0, 1]), np.array([3, 1]),
    ...                                  inv_b=0.25, grads=model.flat_grads)
    >>> bool(np.abs(model.flat_grads).sum() > 0), 0 <= correct <= 2
    (True, True)
    """

    def grad_step(self, x: npt.NDArray[Any], y: npt.ArrayLike, rows: npt.ArrayLike,
                  inv_b: float, grads: npt.NDArray[Any]) -> Tuple[float, int]:
        """Gradients of ``inv_b * sum over rows of the loss`` into ``grads`` (overwritten;
        zeros when ``rows`` is empty); returns (loss sum, correct) over the rows.  A
        non-finite loss is returned as it is (the caller decides)."""
        x2 = self._check_x(x)
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if rows.ndim != 1 or rows.shape[0] > self.batch_size:
            raise ShapeError(f"GradPlan.grad_step: rows must be 1-D with at most "
                             f"{self.batch_size} entries, got shape {rows.shape}")
        if grads.dtype != np.float32 or grads.ndim != 1 or not grads.flags.c_contiguous \
                or grads.shape != self.model.flat_params.shape:
            raise DTypeError("GradPlan.grad_step: grads must be a contiguous float32 buffer "
                             "shaped like model.flat_params")
        if rows.size == 0:
            grads.fill(0)
            return 0.0, 0
        if rows.min() < 0 or rows.max() >= x2.shape[0]:
            raise ValueError(f"GradPlan.grad_step: rows outside [0, {x2.shape[0]})")
        labels = np.ascontiguousarray(np.asarray(y)[rows], dtype=np.int64)
        if labels.min() < 0 or labels.max() >= self.n_classes:
            raise ValueError(f"GradPlan.grad_step: labels outside [0, {self.n_classes})")
        W = [spec.weight.data for spec in self.layers]  # type: ignore[union-attr]  # Dense: has one
        bias = [spec.bias.data if spec.bias is not None else None for spec in self.layers]
        gW, gb = self._slot_views(grads)
        with self._lock:
            loss_sum, correct, _finite = self._trainer.grad_step(
                W, bias, gW, gb, x2, x2.dtype == np.uint8, x2.shape[1], labels, rows,
                float(inv_b), nthreads=_threads.get_num_threads())
        return float(loss_sum), int(correct)


def reference_run(W: Sequence[npt.NDArray[Any]], b: Sequence[Optional[npt.NDArray[Any]]],
                  relu: Sequence[bool], x: npt.NDArray[Any], y: npt.NDArray[Any],
                  idx: npt.NDArray[Any],
                  batch_size: int, kind: str = "sgd", lr: float = 0.1, momentum: float = 0.0,
                  nesterov: bool = False, weight_decay: float = 0.0, beta1: float = 0.9,
                  beta2: float = 0.999, eps: float = 1e-8, step: int = 0,
                  state: Optional[Dict[str, List[npt.NDArray[np.float64]]]] = None,
                  precision: str = "fp32"
                  ) -> Tuple[List[npt.NDArray[np.float64]], List[Optional[npt.NDArray[np.float64]]],
                             Dict[str, List[npt.NDArray[np.float64]]], float, int, int]:
    """The float64 numpy spec of ``FusedPlan.run``'s steps (also PyTorch's semantics).

    W, b: per-layer weights (in, out) and biases (or None); relu[l]: ReLU after
    layer l; x uint8 or float rows (N, D); y labels (N,); idx the rows in step
    order.  ``state``: optimizer buffers (dict name -> list per parameter),
    created as zeros when None.  Returns (W, b, state, loss_sum, correct, steps)
    with float64 arrays.

    ``precision="bf16"``: mixed precision as ``fit(precision="bf16")`` runs it.
    Both inputs of each of the three matmuls (a_l @ W_l, a_l^T g, g @ W_l^T)
    are first rounded to float32, then to bfloat16 (round to nearest even,
    ``fastnn.kernels.matmul.reference.bf16_round``: the kernels round their
    float32 values); the products are summed in float64 here.  Everything
    else -- bias add, ReLU and its mask, softmax, loss, the optimizer on the
    master weights -- is the float64 math above.

    >>> import numpy as np
    >>> W, b = [np.array([[1.00390625, 0.0]])], [None]   # 1 + 2**-8 is not a bf16 value
    >>> x, y = np.ones((1, 1)), np.ones(1, np.int64)
    >>> for p in ("fp32", "bf16"):   # logits (1.0039, 0) vs (1, 0); the master W is float64
    ...     W1, _, _, loss, _, _ = reference_run(W, b, [False], x, y, np.arange(1), 1,
    ...                                          lr=0.0, precision=p)
    ...     print(p, round(loss, 5), W1[0][0, 0])
    fp32 1.31612 1.00390625
    bf16 1.31326 1.00390625
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"reference_run: precision must be 'fp32' or 'bf16', got {precision!r}")
    if precision == "bf16":
        from .kernels.matmul.reference import bf16_round

        def mm(p: npt.NDArray[Any], q: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
            return bf16_round(p).astype(np.float64) @ bf16_round(q).astype(np.float64)
    else:
        def mm(p: npt.NDArray[Any], q: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
            return np.asarray(p @ q, dtype=np.float64)
    W = [np.asarray(w, np.float64).copy() for w in W]
    b = [None if v is None else np.asarray(v, np.float64).copy() for v in b]
    params = [p for l in range(len(W)) for p in (W[l], b[l]) if p is not None]
    if state is None:
        state = {"s1": [np.zeros_like(p) for p in params], "s2": [np.zeros_like(p) for p in params]}
    loss_sum, correct, steps = 0.0, 0, 0
    for s0 in range(0, len(idx), batch_size):
        rows = np.asarray(idx[s0:s0 + batch_size])
        nb = len(rows)
        xb = np.asarray(x)[rows].reshape(nb, -1)
        a = [xb.astype(np.float32) * np.float32(1 / 255) if xb.dtype == np.uint8
             else xb.astype(np.float64)]
        a[0] = a[0].astype(np.float64)
        for l in range(len(W)):
            z = mm(a[-1], W[l])
            bl = b[l]
            if bl is not None:
                z = z + bl
            a.append(np.maximum(z, 0.0) if relu[l] else z)
        z = a[-1]
        e = np.exp(z - z.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        yb = np.asarray(y)[rows]
        loss_sum += float(-np.log(p[np.arange(nb), yb]).sum())
        correct += int((z.argmax(axis=1) == yb).sum())
        g = p
        g[np.arange(nb), yb] -= 1.0
        g /= nb
        grads: List[npt.NDArray[np.float64]] = []
        for l in range(len(W) - 1, -1, -1):
            gl = [mm(a[l].T, g)] + ([g.sum(axis=0)] if b[l] is not None else [])
            if l > 0:
                g = mm(g, W[l].T)
                if relu[l - 1]:
                    g = g * (a[l] > 0)
            grads = gl + grads
        steps += 1
        t = step + steps
        for p_, g_, m1, m2 in zip(params, grads, state["s1"], state["s2"]):
            if kind == "sgd":
                g_ = g_ + weight_decay * p_
                if momentum:
                    m1[...] = momentum * m1 + g_
                    g_ = g_ + momentum * m1 if nesterov else m1
                p_ -= lr * g_
            else:
                if kind == "adamw":
                    p_ *= 1.0 - lr * weight_decay
                else:
                    g_ = g_ + weight_decay * p_
                m1[...] = beta1 * m1 + (1 - beta1) * g_
                m2[...] = beta2 * m2 + (1 - beta2) * g_ * g_
                p_ -= (lr / (1 - beta1 ** t)) * m1 / (np.sqrt(m2) / math.sqrt(1 - beta2 ** t) + eps)
    return W, b, state, loss_sum, correct, steps
