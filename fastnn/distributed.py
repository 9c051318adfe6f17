"""Data-parallel training across processes and machines on MPI (mpi4py).

Synchronous data parallelism, as PyTorch DDP and Horovod do it: every rank
holds the whole model and takes a disjoint slice of every global batch; the
gradients are summed by an allreduce before every (identical) update::

    global batch  idx = perm[k*B : (k+1)*B]            perm shared: same seed on every rank
    rank r's rows idx[lo_r : hi_r],  lo_r = nb*r // N,  hi_r = nb*(r+1) // N   (nb = len(idx))
    g_r = sum_{i in rows_r} dL_i/dtheta / nb           (the gradient of the SUM over the slice)
    g   = allreduce_sum(g_r) = mean_{i in idx} dL_i/dtheta    (the full batch's, any split)
    theta <- optimizer(theta, g)                       (the same on every rank)

Entry points: ``mpirun -n N fastnn train --preset mlp`` (data-parallel when
started by a launcher, or with ``--distributed``), and from Python
``fastnn.training.fit_distributed(model, x, y, ...)`` (``fit``'s arguments)
in a script started by ``mpirun -n N python train.py``.

This module is the communicator: rank and size from the launcher's
environment, an in-place bucketed allreduce of one flat float buffer,
broadcasts, and the checks that keep ranks identical (a start-up check of
fastnn's version, the architecture, the optimizer and the seeds; an
end-of-epoch hash of the weights and the optimizer state).  ``mpi4py`` is
imported only when a communicator is made (``pip install "fastnn[mpi]"``).

Faults: every collective is waited for against a deadline
(``FASTNN_MPI_TIMEOUT`` seconds, default 120): the small ones are nonblocking
requests (``Iallreduce`` ...) polled by the caller, the gradient allreduce runs
on a reduction thread that the caller waits for (``allreduce_start``), so a rank
that is lost without its process dying (a network partition, a stopped
process) ends the job with a message instead of a hang; a rank whose process
dies is noticed at once by Open MPI's runtime, which ends the other ranks
and names the lost one ("prterun noticed that process rank 1 ... exited on
signal 9").  On a deadline the rank calls ``MPI_Abort``: a rank stuck in
``MPI_Finalize`` would hang the job.

Without a launcher ``Communicator()`` is one rank (size 1), and everything
works the same:

>>> from fastnn.distributed import launcher_world, split_rows
>>> launcher_world({})                                         # not under mpirun
(0, 1, 1)
>>> launcher_world({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "3",
...                 "OMPI_COMM_WORLD_LOCAL_SIZE": "3"})
(2, 3, 3)
>>> [split_rows(10, r, 3) for r in range(3)]                   # a global batch of 10 rows
[(0, 3), (3, 6), (6, 10)]
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import sys
import threading
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

from . import _fused, _threads
from .errors import FastnnError, ShapeError

__all__ = ["Communicator", "DistributedError", "ResidentGradPlan", "launcher_world",
           "under_launcher", "split_rows", "get_world", "DEFAULT_TIMEOUT_S", "BUCKET_BYTES"]

#: seconds a collective may take before the job is aborted (``FASTNN_MPI_TIMEOUT``)
DEFAULT_TIMEOUT_S = 120.0
#: bytes per allreduce bucket: each bucket is one Iallreduce, posted before the next
BUCKET_BYTES = 1 << 20

# (rank, size, local size) variables of the launchers: Open MPI, then MPICH / Intel MPI
# (PMI) and PMIx, then Slurm's srun
_ENV = (("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE"),
        ("PMI_RANK", "PMI_SIZE", "MPI_LOCALNRANKS"),
        ("PMIX_RANK", "PMIX_SIZE", "PMIX_LOCAL_SIZE"),
        ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE"))


class DistributedError(FastnnError, RuntimeError):
    """The ranks of a distributed run disagree (start-up settings, weights), or one of
    them was lost; the message names the ranks."""


def launcher_world(environ: Optional[Mapping[str, str]] = None) -> Tuple[int, int, int]:
    """``(rank, size, local_size)`` that an MPI launcher announced in the environment,
    ``(0, 1, 1)`` when none did.  ``local_size``: ranks on this machine."""
    env = os.environ if environ is None else environ
    for rank_v, size_v, local_v in _ENV:
        if size_v in env and rank_v in env:
            try:
                rank, size = int(env[rank_v]), int(env[size_v])
                local = int(env.get(local_v, "").split("(")[0] or size)
            except ValueError:
                continue
            return rank, size, max(1, min(local, size))
    return 0, 1, 1


def under_launcher(environ: Optional[Mapping[str, str]] = None) -> bool:
    """True when this process was started by ``mpirun`` / ``srun`` with more than one rank."""
    return launcher_world(environ)[1] > 1


def split_rows(nb: int, rank: int, size: int) -> Tuple[int, int]:
    """Rank ``rank``'s rows ``[lo, hi)`` of a batch of ``nb`` rows split over ``size`` ranks:
    contiguous, disjoint, sizes differing by at most one (a rank may get none)."""
    return nb * rank // size, nb * (rank + 1) // size


def _digest(value: Any) -> str:
    """A stable hash of a JSON-able value (arrays hashed by their bytes)."""
    h = hashlib.sha256()

    def feed(v: Any) -> None:
        if isinstance(v, np.ndarray):
            a = np.ascontiguousarray(v)
            h.update(f"nd{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
        elif isinstance(v, Mapping):
            h.update(b"{")
            for k in sorted(v, key=str):
                h.update(str(k).encode() + b":")
                feed(v[k])
            h.update(b"}")
        elif isinstance(v, (list, tuple)):
            h.update(b"[")
            for item in v:
                feed(item)
                h.update(b",")
            h.update(b"]")
        else:
            h.update(json.dumps(v, default=repr).encode())

    feed(value)
    return h.hexdigest()


def _timeout_from_env() -> float:
    text = os.environ.get("FASTNN_MPI_TIMEOUT", "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        t = float(text)
    except ValueError:
        raise ValueError(f"FASTNN_MPI_TIMEOUT must be a number of seconds, got {text!r}") from None
    if not t > 0:
        raise ValueError(f"FASTNN_MPI_TIMEOUT must be > 0 seconds, got {text!r}")
    return t


class Communicator:
    """The ranks of one data-parallel run: ``MPI.COMM_WORLD`` by default.

    ``rank``, ``size``; ``local_size`` the ranks on this machine (for the thread
    count).  Collectives (``allreduce_`` / ``allreduce_start``, ``allreduce_values``,
    ``bcast_array_``, ``allgather``) are waited for against ``timeout`` seconds;
    past it the job is aborted with a message.  ``allreduce_seconds`` adds up the
    time spent waiting for gradient allreduces, ``allreduce_busy_seconds`` the time
    they took (the difference was hidden behind computation; benchmarks)."""

    def __init__(self, comm: Any = None, timeout: Optional[float] = None) -> None:
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise ImportError("distributed training needs mpi4py and an MPI library: "
                              "pip install \"fastnn[mpi]\" (mpi4py + Open MPI)") from e
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank: int = int(self.comm.Get_rank())
        self.size: int = int(self.comm.Get_size())
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_size: int = int(local.Get_size())
        self.local_rank: int = int(local.Get_rank())
        local.Free()
        self.timeout = _timeout_from_env() if timeout is None else float(timeout)
        self.allreduce_seconds = 0.0
        self.allreduce_busy_seconds = 0.0
        self.allreduce_bytes = 0
        self._queue: Optional["queue.Queue[Any]"] = None
        # a reduction thread needs MPI_THREAD_MULTIPLE (mpi4py's default request)
        self._threaded = (self.size > 1 and MPI.Query_thread() >= MPI.THREAD_MULTIPLE
                          and os.environ.get("FASTNN_MPI_REDUCER", "thread") != "requests")

    def __repr__(self) -> str:
        return f"Communicator(rank={self.rank}, size={self.size}, local_size={self.local_size})"

    # ------------------------------------------------------------ waiting

    def _wait(self, reqs: Sequence[Any], what: str) -> None:
        """Wait for every request, polling; abort the job past the deadline.  Spins
        for the first millisecond (a step's allreduce takes about that), then sleeps
        50 us between polls so that a waiting rank leaves its core to the others."""
        MPI = self.MPI
        t0 = time.perf_counter()
        deadline = t0 + self.timeout
        spin_until = t0 + 1e-3
        while not MPI.Request.Testall(list(reqs)):
            now = time.perf_counter()
            if now > deadline:
                self._abort(f"{what} did not complete within {self.timeout:g} s "
                            f"(FASTNN_MPI_TIMEOUT): another rank is lost or stuck")
            if now > spin_until:
                time.sleep(5e-5)

    def _abort(self, message: str) -> None:
        sys.stderr.write(f"fastnn: rank {self.rank} of {self.size}: {message}; aborting "
                         f"the job\n")
        sys.stderr.flush()
        self.comm.Abort(1)

    # ------------------------------------------------------------ collectives

    def allreduce_(self, buf: npt.NDArray[Any], bucket_bytes: int = BUCKET_BYTES,
                   what: str = "the gradient allreduce") -> npt.NDArray[Any]:
        """``buf = sum over ranks of buf``, in place; buf: a contiguous 1-D float32 or
        float64 array (``model.flat_grads``), in buckets of about ``bucket_bytes``.
        ``allreduce_start`` then ``wait``: see there."""
        return self.wait(self.allreduce_start(buf, bucket_bytes, what))

    def allreduce_start(self, buf: npt.NDArray[Any], bucket_bytes: int = BUCKET_BYTES,
                        what: str = "the gradient allreduce") -> "_Pending":
        """Start ``buf = sum over ranks of buf`` (in place, in buckets) and return at
        once; ``wait(handle)`` ends it.  Until then the caller must neither touch
        ``buf`` nor start another collective (allreduces started in turn run in that
        order on every rank, so their order must be the same on every rank).

        With an MPI library that allows threads (``MPI_THREAD_MULTIPLE``, as mpi4py
        asks for by default) the buckets go as blocking ``MPI_Allreduce`` calls on
        this communicator's reduction thread, which releases the GIL: the caller
        computes meanwhile (the rest of the backward pass) and ``wait`` polls
        against the deadline.  Measured on 2 cores over shared memory, Open MPI 5:
        a 2.7 MB gradient in 1 MB buckets took 0.4 ms this way against 8-10 ms as
        ``Iallreduce`` requests (libnbc progresses only inside MPI calls, and its
        rounds for large messages are slow), and 0.06 ms against 0.5 ms for 0.4 MB.
        Without thread support the buckets are ``Iallreduce`` requests posted at
        once and polled by ``wait``."""
        if buf.ndim != 1 or not buf.flags.c_contiguous:
            raise ValueError("allreduce_: buf must be a contiguous 1-D array")
        if buf.dtype not in (np.float32, np.float64):
            raise TypeError(f"allreduce_: buf must be float32 or float64, got {buf.dtype}")
        if bucket_bytes < 1:
            raise ValueError(f"allreduce_: bucket_bytes must be >= 1, got {bucket_bytes}")
        pending = _Pending(buf, what, time.perf_counter())
        if self.size > 1 and buf.size:
            per = max(1, bucket_bytes // buf.itemsize)
            if self._threaded:
                pending.event = threading.Event()
                self._reducer().put((buf, per, pending))
            else:
                MPI = self.MPI
                pending.reqs = [self.comm.Iallreduce(MPI.IN_PLACE, buf[s:s + per], op=MPI.SUM)
                                for s in range(0, buf.size, per)]
        return pending

    def wait(self, pending: "_Pending") -> npt.NDArray[Any]:
        """End an ``allreduce_start``: returns its buffer, summed over the ranks.  The
        seconds spent here add to ``allreduce_seconds`` (the allreduce time not
        hidden behind computation); ``allreduce_busy_seconds`` adds the time the
        reduction itself took (the reduction thread's)."""
        t0 = time.perf_counter()
        if pending.event is not None:
            # Block in Event.wait (the GIL released), never spin: the reduction thread
            # needs the GIL between buckets, and a spinning waiter keeps it up to the
            # interpreter's switch interval.  Measured: a 0.4 MB allreduce of 2 ranks
            # took 1.3 ms with a 1 ms spin first, 0.26 ms without.
            ev = pending.event
            deadline = t0 + self.timeout
            while not ev.wait(min(1.0, max(deadline - time.perf_counter(), 1e-3))):
                if time.perf_counter() > deadline:
                    self._abort(f"{pending.what} did not complete within {self.timeout:g} s "
                                f"(FASTNN_MPI_TIMEOUT): another rank is lost or stuck")
            if pending.error is not None:
                raise pending.error
        elif pending.reqs:
            self._wait(pending.reqs, pending.what)
        t1 = time.perf_counter()
        self.allreduce_seconds += t1 - t0
        self.allreduce_busy_seconds += (pending.busy if pending.event is not None
                                        else t1 - pending.t0)
        self.allreduce_bytes += pending.buf.nbytes
        return pending.buf

    def _reducer(self) -> "queue.Queue[Any]":
        """The reduction thread's queue (the thread starts on first use)."""
        if self._queue is None:
            self._queue = queue.Queue()
            t = threading.Thread(target=self._reduce_loop, args=(self._queue,),
                                 name="fastnn-allreduce", daemon=True)
            t.start()
        return self._queue

    def _arrive(self) -> None:
        """Wait, without holding a core, until every rank has arrived at this
        allreduce: an ``Ibarrier`` polled for 0.2 ms, then every 50 us with the thread
        asleep.  Open MPI's blocking allreduce spins while it waits for a late rank,
        and on a shared machine that spin takes the core the late rank needs: with
        the load average near 10 on 2 cores, mlp-keras' 2-rank epoch took 22 s with
        the spin against 13 s with polled requests."""
        req = self.comm.Ibarrier()
        spin_until = time.perf_counter() + 2e-4
        while not req.Test():
            if time.perf_counter() > spin_until:
                time.sleep(5e-5)

    def _reduce_loop(self, jobs: "queue.Queue[Any]") -> None:
        MPI, comm = self.MPI, self.comm
        while True:
            buf, per, pending = jobs.get()
            t0 = time.perf_counter()
            try:
                self._arrive()
                for s in range(0, buf.size, per):
                    comm.Allreduce(MPI.IN_PLACE, buf[s:s + per], op=MPI.SUM)
            except BaseException as e:      # handed to the waiting thread
                pending.error = e
            pending.busy = time.perf_counter() - t0
            pending.event.set()

    def allreduce_values(self, values: Sequence[float], op: str = "sum",
                         what: str = "the metrics allreduce") -> npt.NDArray[np.float64]:
        """Sum (or max) over ranks of a few numbers, in float64."""
        a = np.array(values, np.float64)
        if self.size > 1:
            MPI = self.MPI
            req = self.comm.Iallreduce(MPI.IN_PLACE, a, op=MPI.SUM if op == "sum" else MPI.MAX)
            self._wait([req], what)
        return a

    def bcast_array_(self, buf: npt.NDArray[Any], root: int = 0,
                     what: str = "a broadcast") -> npt.NDArray[Any]:
        """``buf = root's buf`` on every rank, in place (contiguous arrays)."""
        if self.size > 1 and buf.size:
            req = self.comm.Ibcast(buf, root=root)
            self._wait([req], what)
        return buf

    def allgather(self, value: str, what: str = "an allgather") -> List[str]:
        """Every rank's short string (a hash), in rank order."""
        if self.size == 1:
            return [value]
        raw = value.encode()
        width = int(self.allreduce_values([len(raw)], op="max", what=what)[0])
        raw = raw.ljust(width, b"\0")
        send = np.frombuffer(raw, np.uint8).copy()
        recv = np.empty(width * self.size, np.uint8)
        req = self.comm.Iallgather(send, recv)
        self._wait([req], what)
        return [recv[i * width:(i + 1) * width].tobytes().rstrip(b"\0").decode()
                for i in range(self.size)]

    def bcast_int(self, value: int, root: int = 0) -> int:
        a = np.array([value], np.int64)
        return int(self.bcast_array_(a, root, "the seed broadcast")[0])

    def barrier(self) -> None:
        if self.size > 1:
            self._wait([self.comm.Ibarrier()], "a barrier")

    # ------------------------------------------------------------ agreement

    def check_agree(self, items: Mapping[str, Any], when: str = "at start-up") -> None:
        """Raise :class:`DistributedError` on every rank unless every rank passed equal
        ``items`` (name -> JSON-able value or array): one hash per item, gathered and
        compared with rank 0's; the message names each item and the ranks that differ."""
        names = sorted(items)
        digests = [_digest(items[k])[:12] for k in names]
        every = [d.split(",") for d in self.allgather(",".join(digests), "the agreement check")]
        bad = []
        for i, name in enumerate(names):
            differ = [r for r in range(self.size) if every[r][i] != every[0][i]]
            if differ:
                bad.append(f"{name} (ranks {', '.join(map(str, differ))} differ from rank 0)")
        if bad:
            raise DistributedError(f"the {self.size} ranks disagree {when}: " + "; ".join(bad)
                                   + ". Every rank must run the same fastnn, model, optimizer "
                                   "and seeds")

    def check_identical(self, model: Any, optimizer: Any, epoch: int) -> None:
        """End of epoch: the hash of the weights and of the optimizer state must be the
        same on every rank (they apply identical updates to identical gradients)."""
        state = getattr(optimizer, "state_buffers", None)
        self.check_agree({"weights": model.flat_params,
                          "optimizer state": dict(state() if callable(state) else {}),
                          "optimizer step": int(getattr(optimizer, "step_count", 0))},
                         when=f"after epoch {epoch + 1} (the replicas drifted apart)")

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank."""
        return bool(self.allreduce_values([1.0 if flag else 0.0], op="max")[0] > 0)


class _Pending:
    """An allreduce in flight (``Communicator.allreduce_start``)."""

    __slots__ = ("buf", "what", "t0", "event", "reqs", "error", "busy")

    def __init__(self, buf: npt.NDArray[Any], what: str, t0: float) -> None:
        self.buf, self.what, self.t0 = buf, what, t0
        self.event: Optional[threading.Event] = None
        self.reqs: List[Any] = []
        self.error: Optional[BaseException] = None
        self.busy = 0.0


_world: Optional[Communicator] = None


def get_world() -> Communicator:
    """The process's ``Communicator`` over ``MPI.COMM_WORLD`` (made once)."""
    global _world
    if _world is None:
        _world = Communicator()
    return _world


def startup_items(model: Any, optimizer: Any, seed: Optional[int], batch_size: int,
                  n_samples: int, extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """What every rank must agree on before the first step."""
    from . import __version__
    cfg = getattr(model, "get_config", None)
    hyper = getattr(optimizer, "hyper", None)
    items: Dict[str, Any] = {
        "fastnn version": __version__,
        "architecture": cfg() if callable(cfg) else type(model).__name__,
        "optimizer": {"class": type(optimizer).__name__,
                      "hyper": hyper() if callable(hyper) else None},
        "seed": seed,
        "batch size": batch_size,
        "training samples": n_samples,
    }
    items.update(extra or {})
    return items


class ResidentGradPlan(_fused.GradPlan):
    """The fused gradient-only step of a data-parallel rank, with the weights kept
    in the native trainer between steps::

        plan.grad_step(x, y, rows, inv_b, grads)   # this rank's share of the gradient
        comm.allreduce_(grads)                     # summed over the ranks
        plan.apply(grads)                          # the update, instead of optimizer.step()

    ``apply`` updates the model's weights and the optimizer's state in place with
    the fused step's own rule (the tile epilogue's ``opt_update``), and writes the
    trainer's padded copies of W, b and W^T from each row as it is updated, so the
    next ``grad_step`` reads them where they are instead of copying the weights in
    (and transposing them) again: for mlp-keras one pass over 2.7 MB instead of
    ``optimizer.step()``'s pass, a copy and a transpose per step.  The update is the
    one ``FusedPlan.run`` applies in its tiles, so one rank reproduces the fused
    trainer's epoch (bitwise for SGD, see tests/test_distributed.py).

    Anything else that writes the weights or the optimizer state (a callback, a
    resume, a broadcast) must be followed by ``invalidate()``: the next step then
    copies them in again.  ``fit_distributed`` invalidates at the start of every run
    of steps (callbacks run between them)."""

    _resident: Any = None           # the native trainer whose copies match the model

    def invalidate(self) -> None:
        """The model's weights changed outside ``apply``: copy them in at the next step."""
        self._resident = None

    def grad_step(self, x: npt.NDArray[Any], y: npt.ArrayLike, rows: npt.ArrayLike,
                  inv_b: float, grads: npt.NDArray[Any]) -> Tuple[float, int]:
        trainer = self._trainer
        if self._resident is not trainer:
            return super().grad_step(x, y, rows, inv_b, grads)
        x2 = self._check_x(x)
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if rows.ndim != 1 or rows.shape[0] > self.batch_size:
            raise ShapeError(f"ResidentGradPlan.grad_step: rows must be 1-D with at most "
                             f"{self.batch_size} entries, got shape {rows.shape}")
        self._check_grads(grads)
        if rows.size == 0:
            grads.fill(0)
            return 0.0, 0
        if rows.min() < 0 or rows.max() >= x2.shape[0]:
            raise ValueError(f"ResidentGradPlan.grad_step: rows outside [0, {x2.shape[0]})")
        labels = np.ascontiguousarray(np.asarray(y)[rows], dtype=np.int64)
        if labels.min() < 0 or labels.max() >= self.n_classes:
            raise ValueError(f"ResidentGradPlan.grad_step: labels outside [0, {self.n_classes})")
        gW, gb = self._slot_views(grads)
        with self._lock:
            loss_sum, correct, _finite = trainer.grad_step(
                None, None, gW, gb, x2, x2.dtype == np.uint8, x2.shape[1], labels, rows,
                float(inv_b), nthreads=_threads.get_num_threads())
        return float(loss_sum), int(correct)

    def _check_grads(self, grads: npt.NDArray[Any]) -> None:
        if grads.dtype != np.float32 or grads.ndim != 1 or not grads.flags.c_contiguous \
                or grads.shape != self.model.flat_params.shape:
            raise TypeError("ResidentGradPlan: grads must be a contiguous float32 buffer "
                            "shaped like model.flat_params")

    def apply(self, grads: npt.NDArray[Any]) -> None:
        """One optimizer step from the summed gradients ``grads`` (laid out like
        ``model.flat_params``): the model's parameters, the optimizer's state and
        ``step_count`` updated as ``FusedPlan.run`` updates them; reads the
        optimizer's ``lr`` and hyper-parameters now (schedules apply)."""
        self._check_grads(grads)
        opt = self.optimizer
        W = [spec.weight.data for spec in self.layers]  # type: ignore[union-attr]  # Dense
        bias = [spec.bias.data if spec.bias is not None else None for spec in self.layers]
        ospec = opt.fusion_spec()
        s1W, s1b = self._slot_views(ospec.slots[0])
        s2W, s2b = self._slot_views(ospec.slots[1])
        gW, gb = self._slot_views(grads)
        trainer = self._trainer
        with self._lock:
            trainer.grad_apply(W, bias, s1W, s1b, s2W, s2b, gW, gb, ospec.kind, ospec.lr,
                               step=ospec.step, nthreads=_threads.get_num_threads(),
                               **ospec.hyper)
        opt.step_count += 1
        self._resident = trainer
