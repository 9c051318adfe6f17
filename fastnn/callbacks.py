"""Callbacks for ``fit``: TensorBoard logs, CSV logs, checkpoints, early stopping.

A callback sees the run through hooks, as in Keras:

    on_train_begin(logs)  on_epoch_begin(epoch, logs)  on_batch_end(step, logs)
    on_epoch_end(epoch, logs)  on_train_end(logs)

``epoch`` is 0-based; epoch logs hold loss, accuracy, val_loss, val_accuracy
(with validation data), epoch_time and samples_per_s.  ``step_freq`` (None
or an int n) says whether the callback needs Python every n optimizer steps:
the fused native loop then runs in chunks of n steps and ``on_batch_end``
gets the global step and the chunk's mean loss and accuracy.  Callbacks
that leave it None cost nothing inside an epoch.

``self.state`` (a ``fastnn.training.TrainState``) gives the model, the
optimizer, the history, and ``stop_training`` to end the run.

>>> import os, tempfile, numpy as np
>>> from fastnn.models import MLP
>>> from fastnn.losses import SoftmaxCrossEntropy
>>> from fastnn.optim import SGD
>>> rng = np.random.default_rng(0)
>>> x = rng.random((300, 8), dtype=np.float32); y = (x[:, 0] > 0.5).astype(np.int64)
>>> model = MLP([8, 16, 2], seed=0)
>>> log = os.path.join(tempfile.mkdtemp(), "log.csv")
>>> h = model.fit(x[:200], y[:200], epochs=20, batch_size=32, loss=SoftmaxCrossEntropy(),
...               optimizer=SGD(model, lr=0.1), validation_data=(x[200:], y[200:]),
...               callbacks=[CSVLogger(log), EarlyStopping("val_loss", patience=2)], verbose=0)
>>> len(open(log).read().splitlines()) == len(h.epoch) + 1     # a header, then one row per epoch
True
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import signal
import threading
import warnings
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

from ._validation import real

if TYPE_CHECKING:
    from .tensorboard import SummaryWriter

__all__ = ["Callback", "TensorBoard", "CSVLogger", "ModelCheckpoint", "EarlyStopping",
           "StopAtAccuracy"]


class Callback:
    """Base class: every hook does nothing."""

    step_freq: Optional[int] = None  # None: no per-step calls; n: on_batch_end every n steps
    # Data-parallel runs (fit_distributed): True for a callback that writes files or
    # prints (checkpoints, logs), which runs on rank 0 alone; False (the default) for one
    # that runs on every rank, e.g. EarlyStopping: the ranks see the same reduced logs and
    # must all take the same decision.  A rank-0-only callback must not stop training.
    rank0_only: bool = False

    def __init__(self) -> None:
        # set by fit (set_state) before any hook runs: the run's fastnn.training.TrainState
        # and its model (training imports this module, so the types stay Any here)
        self.state: Any = None
        self.model: Any = None

    def set_state(self, state: Any) -> None:
        """Called by ``fit`` before any hook: ``state`` is the run's
        ``fastnn.training.TrainState`` (model, optimizer, history, ``stop_training``);
        sets ``self.state`` and ``self.model``."""
        self.state = state
        self.model = state.model

    def on_train_begin(self, logs: Dict[str, float]) -> None:
        """Called once by ``fit`` before its first epoch (a resumed run too); ``logs`` is empty."""

    def on_train_end(self, logs: Dict[str, float]) -> None:
        """Called once after the last epoch, or after the epoch that set
        ``self.state.stop_training``; ``logs`` is empty (the epochs' logs are in
        ``self.state.history``).  Not called when ``fit`` raises."""

    def on_epoch_begin(self, epoch: int, logs: Dict[str, float]) -> None:
        """Called before epoch ``epoch`` (0-based) runs its first step."""

    def on_epoch_end(self, epoch: int, logs: Dict[str, float]) -> None:
        """Called after epoch ``epoch`` (0-based) and its validation.  ``logs`` holds
        ``loss``, ``accuracy`` (training means), ``val_loss``/``val_accuracy`` with
        validation data, ``epoch_time`` and ``samples_per_s``.  Setting
        ``self.state.stop_training = True`` ends the run after this epoch."""

    def on_batch_end(self, step: int, logs: Dict[str, float]) -> None:
        """Called when the number of steps done, ``step``, is a multiple of ``step_freq``
        and at the end of every epoch (never when ``step_freq`` is None).  ``logs``
        holds ``loss`` and ``accuracy``, the means over the steps since the previous
        call.  Setting ``self.state.stop_training`` here also ends the current epoch."""


def _mode_for(monitor: str, mode: str) -> str:
    """"min" or "max": accuracy-like metrics grow, losses shrink."""
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode != "auto":
        return mode
    return "max" if "acc" in monitor else "min"


def _check_monitor(monitor: Any) -> str:
    if not isinstance(monitor, str) or not monitor:
        raise TypeError(f"monitor must be a metric name such as 'val_loss', got {monitor!r}")
    return monitor


class TensorBoard(Callback):
    """Event files for TensorBoard, laid out as Keras does.

    ``logdir/train`` and ``logdir/validation`` hold the scalars ``epoch_loss``
    and ``epoch_accuracy`` per epoch (x axis: epoch number); ``logdir/train``
    also holds ``epoch_time``, ``samples_per_s``, the histograms of every
    layer's weights and biases every ``histogram_freq`` epochs (0: none) and,
    with ``update_freq=n`` (an int), ``batch_loss``/``batch_accuracy`` every n
    steps (x axis: global step).

    >>> import os, tempfile
    >>> TensorBoard(os.path.join(tempfile.mkdtemp(), "mlp"), update_freq=100).step_freq
    100
    """

    rank0_only = True      # writes files: rank 0 alone in a data-parallel run

    _train: Optional[SummaryWriter]
    _val: Optional[SummaryWriter]

    def __init__(self, logdir: Union[str, os.PathLike[str]], histogram_freq: int = 1,
                 update_freq: Union[str, int] = "epoch") -> None:
        super().__init__()
        if not isinstance(logdir, (str, os.PathLike)):
            raise TypeError(f"logdir must be a path, got {type(logdir).__name__}")
        if isinstance(histogram_freq, bool) or not isinstance(histogram_freq, int) \
                or histogram_freq < 0:
            raise ValueError(f"histogram_freq must be an integer >= 0, got {histogram_freq!r}")
        if update_freq != "epoch":
            if isinstance(update_freq, bool) or not isinstance(update_freq, int) or update_freq < 1:
                raise ValueError(f"update_freq must be 'epoch' or an integer >= 1, "
                                 f"got {update_freq!r}")
            self.step_freq = update_freq
        self.logdir = os.fspath(logdir)
        self.histogram_freq = histogram_freq
        self.update_freq = update_freq
        self._train = self._val = None

    def _writers(self) -> Tuple[SummaryWriter, SummaryWriter]:
        if self._train is None:
            from .tensorboard import SummaryWriter
            self._train = SummaryWriter(os.path.join(self.logdir, "train"))
            self._val = SummaryWriter(os.path.join(self.logdir, "validation"))
        return self._train, self._val  # type: ignore[return-value]  # set together above

    def on_train_begin(self, logs: Dict[str, float]) -> None:
        """Opens (or continues) the train/ and validation/ event files."""
        self._writers()

    def on_batch_end(self, step: int, logs: Dict[str, float]) -> None:
        """Writes ``batch_loss`` and ``batch_accuracy`` at ``step`` to train/."""
        train, _ = self._writers()
        train.add_scalar("batch_loss", logs["loss"], step)
        train.add_scalar("batch_accuracy", logs["accuracy"], step)

    def on_epoch_end(self, epoch: int, logs: Dict[str, float]) -> None:
        """Writes ``epoch_loss``/``epoch_accuracy`` (and timings) at step ``epoch + 1``
        to train/, the validation ones to validation/, the weight histograms every
        ``histogram_freq`` epochs, and flushes both files."""
        train, val = self._writers()
        step = epoch + 1
        train.add_scalar("epoch_loss", logs["loss"], step)
        train.add_scalar("epoch_accuracy", logs["accuracy"], step)
        for k in ("epoch_time", "samples_per_s"):
            if k in logs:
                train.add_scalar(k, logs[k], step)
        if "val_loss" in logs:
            val.add_scalar("epoch_loss", logs["val_loss"], step)
            val.add_scalar("epoch_accuracy", logs["val_accuracy"], step)
        if self.histogram_freq and (epoch + 1) % self.histogram_freq == 0:
            for name, p in self.model.named_parameters():
                train.add_histogram(name, p.data, step)
        train.flush()
        val.flush()

    def on_train_end(self, logs: Dict[str, float]) -> None:
        """Closes the event files (``close``)."""
        self.close()

    def close(self) -> None:
        """Flushes and closes both event files; a later hook opens them again."""
        for w in (self._train, self._val):
            if w is not None:
                w.close()
        self._train = self._val = None


class CSVLogger(Callback):
    """One CSV row per epoch (epoch, then every log key), flushed as it is written.

    With ``append=True`` an existing file is continued (a resumed run).  The
    whole history is also written to ``<path minus .csv>.json`` after every
    epoch when ``json_history`` is True."""

    rank0_only = True      # writes files: rank 0 alone in a data-parallel run

    def __init__(self, path: Union[str, os.PathLike[str]], append: bool = False,
                 json_history: bool = True) -> None:
        super().__init__()
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a file path, got {type(path).__name__}")
        self.path = os.fspath(path)
        self.append = bool(append)
        self.json_history = bool(json_history)
        self._fields: Optional[List[str]] = None

    @property
    def json_path(self) -> str:
        """Where the JSON history goes: ``path`` with ``.csv`` replaced by ``.json``
        (``.json`` appended to any other name)."""
        root, ext = os.path.splitext(self.path)
        return (root if ext.lower() == ".csv" else self.path) + ".json"

    def on_train_begin(self, logs: Dict[str, float]) -> None:
        """Truncates the file, or with ``append=True`` keeps it and its header."""
        self._fields = None
        if self.append and os.path.exists(self.path) and os.path.getsize(self.path) > 0:
            with open(self.path, newline="") as fh:
                header = next(csv.reader(fh), None)
            self._fields = header
        else:
            d = os.path.dirname(self.path)
            if d:
                os.makedirs(d, exist_ok=True)
            open(self.path, "w").close()

    def on_epoch_end(self, epoch: int, logs: Dict[str, float]) -> None:
        """Appends the row ``epoch + 1, logs...`` (header first on a new file), flushed;
        rewrites the JSON history atomically when ``json_history`` is True."""
        if self._fields is None:
            self._fields = ["epoch"] + list(logs)
            with open(self.path, "w", newline="") as fh:
                csv.writer(fh).writerow(self._fields)
        row = {"epoch": epoch + 1, **logs}
        with open(self.path, "a", newline="") as fh:
            csv.writer(fh).writerow([_fmt(row.get(k, "")) for k in self._fields])
            fh.flush()
        if self.json_history and self.state is not None:
            tmp = self.json_path + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(self.state.history.to_dict(), fh, indent=1)
            os.replace(tmp, self.json_path)


def _fmt(v: Any) -> Any:
    return repr(float(v)) if isinstance(v, (float, np.floating)) else v


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C until the block ends, then deliver it.

    A checkpoint save and the bookkeeping after it (``last_saved``) then
    happen together or not at all, so an interrupted run never reports a
    checkpoint it did not finish, nor misses one it did."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    except ValueError:              # not the main interpreter: no signal handling here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending:
            if callable(previous):
                previous(signal.SIGINT, None)      # default_int_handler: KeyboardInterrupt
            elif previous == signal.SIG_DFL:
                os.kill(os.getpid(), signal.SIGINT)


class ModelCheckpoint(Callback):
    """Save model, optimizer state and what ``fit(resume=...)`` needs after each epoch.

    The file is written atomically by ``fastnn.serialize.save`` (a crash
    leaves the previous checkpoint or the new one, never half of one).
    ``path`` may hold ``{epoch}`` and log keys (``"ckpt-{epoch:02d}.npz"``).
    ``save_best_only``: save only when ``monitor`` improved.  ``save_initial``:
    also save before the first epoch, so an interrupt during epoch 1 still
    leaves a checkpoint to resume from.  ``extra``: a JSON-able dict stored
    with every checkpoint (the command line keeps its recipe there).
    ``last_saved`` is the latest path, ``epochs_done`` the epochs it holds."""

    rank0_only = True      # writes files: rank 0 alone in a data-parallel run

    def __init__(self, path: Union[str, os.PathLike[str]], save_best_only: bool = False,
                 monitor: str = "val_loss", mode: str = "auto", save_initial: bool = False,
                 extra: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__()
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a file path, got {type(path).__name__}")
        self.path = os.fspath(path)
        self.save_best_only = bool(save_best_only)
        self.monitor = _check_monitor(monitor)
        self.mode = _mode_for(self.monitor, mode)
        self.save_initial = bool(save_initial)
        self.extra = dict(extra or {})
        self.best: Optional[float] = None
        self.last_saved: Optional[str] = None
        self.epochs_done = 0

    def _save(self, epoch: int, logs: Mapping[str, Any]) -> None:
        from . import serialize
        path = self.path.format(epoch=epoch, **logs) if "{" in self.path else self.path
        d = os.path.dirname(path)
        if d:
            os.makedirs(d, exist_ok=True)
        extra = dict(self.extra)
        extra.update(self.state.resume_extra())
        extra["monitor"] = self.monitor
        extra["best"] = self.best
        with _sigint_deferred():
            serialize.save(self.model, path, optimizer=self.state.optimizer, extra=extra)
            self.last_saved = path
            self.epochs_done = extra["epoch"]

    def on_train_begin(self, logs: Dict[str, float]) -> None:
        """With ``save_initial``, writes the untrained weights as epoch 0 (not when resuming)."""
        if self.save_initial and not self.state.history.epoch:
            self._save(0, {})

    def on_epoch_end(self, epoch: int, logs: Dict[str, float]) -> None:
        """Saves the checkpoint of epoch ``epoch + 1``; with ``save_best_only``, only
        when ``monitor`` improved (a missing ``monitor`` warns and saves nothing)."""
        if self.save_best_only:
            cur = logs.get(self.monitor)
            if cur is None:
                warnings.warn(f"ModelCheckpoint: {self.monitor!r} is not in the logs "
                              f"({sorted(logs)}); nothing saved", RuntimeWarning, stacklevel=2)
                return
            if self.best is not None and not _improved(cur, self.best, self.mode, 0.0):
                return
            self.best = float(cur)
        self._save(epoch + 1, logs)


def _improved(current: float, reference: float, mode: str, min_delta: float) -> bool:
    if not math.isfinite(current):
        return False
    if mode == "min":
        return current < reference - min_delta
    return current > reference + min_delta


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for
    ``patience`` epochs (Keras' rule).  With ``baseline`` the run must also
    beat the baseline within ``patience`` epochs.  ``restore_best_weights``
    puts the best epoch's weights back at the end.  ``stopped_epoch`` is the
    epoch (1-based) at which training stopped, 0 if it ran to the end."""

    def __init__(self, monitor: str = "val_loss", patience: int = 0,
                 baseline: Optional[float] = None, min_delta: float = 0.0, mode: str = "auto",
                 restore_best_weights: bool = False) -> None:
        super().__init__()
        self.monitor = _check_monitor(monitor)
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be an integer >= 0, got {patience!r}")
        min_delta = real(min_delta, "min_delta")
        self.patience = patience
        self.baseline = None if baseline is None else real(baseline, "baseline")
        self.min_delta = abs(min_delta)
        self.mode = _mode_for(self.monitor, mode)
        self.restore_best_weights = bool(restore_best_weights)

    def on_train_begin(self, logs: Dict[str, float]) -> None:
        """Resets the wait count, the best value and ``stopped_epoch``."""
        self.wait = 0
        self.stopped_epoch = 0
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch: Optional[int] = None
        self._best_weights: Optional[npt.NDArray[Any]] = None

    def on_epoch_end(self, epoch: int, logs: Dict[str, float]) -> None:
        """Counts epochs without an improvement larger than ``min_delta`` and sets
        ``stop_training`` once there are ``patience`` of them (a missing ``monitor`` warns)."""
        cur = logs.get(self.monitor)
        if cur is None:
            warnings.warn(f"EarlyStopping: {self.monitor!r} is not in the logs ({sorted(logs)})",
                          RuntimeWarning, stacklevel=2)
            return
        self.wait += 1
        if _improved(cur, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch = float(cur), epoch
            if self.restore_best_weights:
                self._best_weights = np.array(self.model.flat_params, copy=True)
            if self.baseline is None or _improved(cur, self.baseline, self.mode, 0.0):
                self.wait = 0
                return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch + 1
            self.state.stop_training = True

    def on_train_end(self, logs: Dict[str, float]) -> None:
        """With ``restore_best_weights``, puts the best epoch's weights back after a stop."""
        if self.stopped_epoch and self._best_weights is not None:
            self.model.flat_params[...] = self._best_weights


class StopAtAccuracy(Callback):
    """Stop as soon as ``monitor`` (default val_accuracy) reaches ``target``.

    The speedrun uses it: stop once test accuracy >= 0.98.  ``reached_epoch``
    is the (1-based) epoch that reached it, or None."""

    def __init__(self, target: float = 0.98, monitor: str = "val_accuracy") -> None:
        super().__init__()
        target = real(target, "target")
        if not 0.0 < target <= 1.0:
            raise ValueError(f"target must be in (0, 1], got {target!r}")
        self.target = target
        self.monitor = _check_monitor(monitor)
        self.reached_epoch: Optional[int] = None

    def on_epoch_end(self, epoch: int, logs: Dict[str, float]) -> None:
        cur = logs.get(self.monitor)
        if cur is None:
            warnings.warn(f"StopAtAccuracy: {self.monitor!r} is not in the logs "
                          f"({sorted(logs)}); pass validation data", RuntimeWarning, stacklevel=2)
            return
        if cur >= self.target:
            self.reached_epoch = epoch + 1
            self.state.stop_training = True
