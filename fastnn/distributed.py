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
environment, an in-place bucketed allreduce of one flat float buffer (started
layer by layer as the backward pass writes each layer's gradient, overlapped
with the rest of it), a shared-memory gradient exchange for ranks on one
machine (``SharedGrads``), broadcasts, and the checks that keep ranks identical (a start-up check of
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
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

from . import _fused, _threads
from .errors import FastnnError, ShapeError

__all__ = ["Communicator", "DistributedError", "ResidentGradPlan", "SharedGrads", "launcher_world",
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
    they took (from the moment each bucket's gradient was written), and
    ``allreduce_hidden_seconds`` the part of that which passed while the caller
    computed: hidden / busy is the overlap achieved (benchmarks)."""

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
        self.allreduce_hidden_seconds = 0.0
        self.allreduce_bytes = 0
        self._queue: Optional["queue.Queue[Any]"] = None
        # a reduction thread needs MPI_THREAD_MULTIPLE (mpi4py's default request)
        self._threaded = (self.size > 1 and MPI.Query_thread() >= MPI.THREAD_MULTIPLE
                          and os.environ.get("FASTNN_MPI_REDUCER", "thread") != "requests")

    def __repr__(self) -> str:
        return f"Communicator(rank={self.rank}, size={self.size}, local_size={self.local_size})"

    @property
    def overlaps(self) -> bool:
        """Whether ``allreduce_start(..., ready=...)`` may be called before the gradient is
        computed (a reduction thread waits for each part); else call it after."""
        return self._threaded

    # ------------------------------------------------------------ waiting

    def _wait(self, reqs: Sequence[Any], what: str, spin_s: float = 1e-3) -> None:
        """Wait for every request, polling; abort the job past the deadline.  Spins
        for the first ``spin_s`` seconds (a step's allreduce takes about a millisecond),
        then sleeps 50 us between polls so that a waiting rank leaves its core to the
        others."""
        MPI = self.MPI
        t0 = time.perf_counter()
        deadline = t0 + self.timeout
        spin_until = t0 + spin_s
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
                        what: str = "the gradient allreduce",
                        buckets: Optional[Sequence[Tuple[int, int, int]]] = None,
                        ready: Optional[Callable[[int, float], bool]] = None) -> "_Pending":
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
        once and polled by ``wait``.

        ``buckets``: the buckets ``(start, stop, part)`` in the order to reduce them
        (``ResidentGradPlan.buckets``) instead of ``bucket_bytes`` pieces in buffer
        order; ``ready(part, timeout)``: blocks until the part of ``buf`` that the
        buckets marked ``part`` need is written (``GradSignal.wait``), False when it
        never will be.  With a reduction thread the call may then come BEFORE the
        gradient is computed: the thread reduces each layer's buckets as soon as
        the backward pass has written that layer, overlapped with the earlier
        layers' backward (the caller may write the parts not yet marked ready);
        before a part's first bucket the ranks meet in a polled barrier, so that no
        rank spins in ``MPI_Allreduce`` for a partner still computing.  Without a
        thread (``overlaps`` False) ``ready`` is waited for here, so the call must
        come after the gradient is written (no overlap); with one rank there is
        nothing to sum and ``ready`` is not called.  The buckets, hence the sums'
        bits, are the same either way."""
        if buf.ndim != 1 or not buf.flags.c_contiguous:
            raise ValueError("allreduce_: buf must be a contiguous 1-D array")
        if buf.dtype not in (np.float32, np.float64):
            raise TypeError(f"allreduce_: buf must be float32 or float64, got {buf.dtype}")
        if bucket_bytes < 1:
            raise ValueError(f"allreduce_: bucket_bytes must be >= 1, got {bucket_bytes}")
        if buckets is None:
            per = max(1, bucket_bytes // buf.itemsize)
            spans = [(s, min(buf.size, s + per), -1) for s in range(0, buf.size, per)]
            ready = None
        else:
            spans = [(int(a), int(b), int(c)) for a, b, c in buckets]
            if any(not 0 <= a < b <= buf.size for a, b, _ in spans):
                raise ValueError(f"allreduce_start: buckets must be (start, stop, part) with "
                                 f"0 <= start < stop <= {buf.size}")
        pending = _Pending(buf, what, time.perf_counter())
        if self.size > 1 and buf.size:
            if self._threaded:
                pending.event = threading.Event()
                self._reducer().put((buf, spans, ready, pending))
            else:
                MPI = self.MPI
                if ready is not None:
                    for part in dict.fromkeys(c for _, _, c in spans):
                        if not ready(part, self.timeout):
                            raise DistributedError(f"{what}: the gradient step failed")
                pending.reqs = [self.comm.Iallreduce(MPI.IN_PLACE, buf[a:b], op=MPI.SUM)
                                for a, b, _ in spans]
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
        busy = pending.busy if pending.event is not None else t1 - pending.t0
        self.allreduce_busy_seconds += busy
        # the reduction's time that passed while the caller computed (overlap)
        self.allreduce_hidden_seconds += max(0.0, busy - (t1 - t0))
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
            buf, spans, ready, pending = jobs.get()
            busy = 0.0
            part: Optional[int] = None
            try:
                for i, (a, b, c) in enumerate(spans):
                    if ready is not None and (i == 0 or c != part):
                        # this part's gradient: wait (asleep) until the backward pass wrote it
                        if not ready(c, self.timeout):
                            raise DistributedError(f"{pending.what}: the gradient step failed")
                    t0 = time.perf_counter()
                    if i == 0 or (ready is not None and c != part):
                        self._arrive()
                    part = c
                    comm.Allreduce(MPI.IN_PLACE, buf[a:b], op=MPI.SUM)
                    busy += time.perf_counter() - t0
            except BaseException as e:      # handed to the waiting thread
                pending.error = e
            pending.busy = busy
            pending.event.set()

    # ------------------------------------------------------------ shared memory

    def shared_slots(self, n: int) -> Optional["SharedGrads"]:
        """Every rank's gradient slots in one shared-memory mapping (``SharedGrads``),
        for a buffer of ``n`` float32; None when the ranks are not all on this
        machine, or cannot share the memory (or there is one rank, or
        ``FASTNN_MPI_REDUCE=mpi``): then the
        gradient goes through ``allreduce_start``.  Made once per ``n``; every rank
        must call it (a collective)."""
        if self.size == 1 or self.local_size != self.size:
            return None
        mode = os.environ.get("FASTNN_MPI_REDUCE", "shm").strip().lower()
        if mode not in ("shm", "mpi"):
            raise ValueError(f"FASTNN_MPI_REDUCE must be 'shm' or 'mpi', got {mode!r}")
        if mode == "mpi":
            return None
        cache = self.__dict__.setdefault("_shared", {})
        if n not in cache:
            cache[n] = SharedGrads.create(self, n)
        shared: Optional[SharedGrads] = cache[n]
        return shared

    def arrive(self, what: str = "the gradient exchange") -> float:
        """Every rank reached this point (a polled barrier, see ``_arrive``, against the
        deadline); returns the seconds waited, which add to ``allreduce_seconds``."""
        t0 = time.perf_counter()
        if self.size > 1:
            self._wait([self.comm.Ibarrier()], what, spin_s=2e-4)
        dt = time.perf_counter() - t0
        self.allreduce_seconds += dt
        self.allreduce_busy_seconds += dt
        return dt

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


class SharedGrads:
    """The gradient exchange of ranks that share a machine: one shared-memory
    mapping holding, for each parity of the step, one gradient slot per rank.
    A step::

        slot = sg.slot(k)                     # this rank's slot of step k (k: steps so far)
        plan.grad_step(..., grads=slot)       # the native step writes its gradient there
        comm.arrive()                         # every rank wrote its slot (a polled barrier)
        plan.apply_sum(sg.slots[k & 1])       # the update of slot_0 + slot_1 + ... (rank order)

    instead of an allreduce: one barrier, and every rank reads the others' slots
    straight from memory, inside its update (the sum is never written out;
    ``sum_into`` writes it, for tests).  Open MPI's blocking ``MPI_Allreduce`` moves a large
    buffer in many fragments, each a handshake that spins; when the machine is
    busier than its cores a descheduled partner stalls every fragment for a time
    slice (measured on 2 shared cores at load 4-6: mlp-keras' 2.7 MB took 5-50 ms
    per step, against 0.4 ms quiet).  Two parities: rank r writes step k+1's slot
    while a slower rank may still read step k's, and step k+2 reuses k's only
    after the barrier of k+1, which every rank reaches after its sum of step k.
    The sum's order is fixed (rank 0 first), so the result does not depend on
    timing; for 2 ranks it is the bits of MPI's sum (a + b)."""

    def __init__(self, comm: Communicator, n: int, mapping: Any) -> None:
        """Use ``SharedGrads.create``."""
        self.n, self.size, self.rank = int(n), comm.size, comm.rank
        self._map = mapping
        self.slots = np.frombuffer(mapping, dtype=np.float32,
                                   count=2 * self.size * self.n).reshape(2, self.size, self.n)

    @classmethod
    def create(cls, comm: Communicator, n: int) -> Optional["SharedGrads"]:
        """The slots of ``n`` float32 gradients, or None on every rank when any rank
        cannot have them (no room in /dev/shm, a file system the ranks do not
        share): the caller then uses the MPI allreduce.  A collective.

        Rank 0 makes a file in /dev/shm (memory, not disk) of a name no other job
        has and reserves its pages (``posix_fallocate``: a full /dev/shm, such as a
        container's default 64 MB, fails here instead of killing the job with
        SIGBUS at the first step), the others map it, then it is unlinked: nothing
        is left behind, whatever ends the job.  (Not an MPI shared window: Open
        MPI's one-sided components print errors on machines without UCX.)"""
        import mmap
        import tempfile
        nbytes = 2 * comm.size * int(n) * 4
        name, fd = "", -1
        if comm.rank == 0:
            try:
                fd, name = tempfile.mkstemp(prefix="fastnn-grads-",
                                            dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(fd, 0, nbytes)
                else:
                    os.ftruncate(fd, nbytes)
            except OSError:
                if fd >= 0:
                    os.close(fd)
                    os.unlink(name)
                name, fd = "", -1
        path = comm.allgather(name, "the shared gradient buffer's name")[0]
        mapping = None
        if path:
            try:
                if comm.rank != 0:
                    fd = os.open(path, os.O_RDWR)
                mapping = mmap.mmap(fd, nbytes)
            except OSError:
                mapping = None
            finally:
                if fd >= 0:
                    os.close(fd)
        failed = comm.any(mapping is None)       # every rank has mapped (or failed) here
        if comm.rank == 0 and path:
            os.unlink(path)
        if failed:
            if mapping is not None:
                mapping.close()
            return None
        return cls(comm, n, mapping)

    def slot(self, k: int) -> npt.NDArray[np.float32]:
        """This rank's slot for step number ``k`` (contiguous, ``n`` float32)."""
        out: npt.NDArray[np.float32] = self.slots[k & 1, self.rank]
        return out

    def sum_into(self, k: int, out: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """``out = sum over ranks of their slots of step k``, added in rank order."""
        s = self.slots[k & 1]
        np.add(s[0], s[1], out=out)
        for r in range(2, self.size):
            np.add(out, s[r], out=out)
        return out


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
                  inv_b: float, grads: npt.NDArray[Any],
                  signal: Any = None) -> Tuple[float, int]:
        """``GradPlan.grad_step``, reading the resident weights when ``apply`` wrote them.
        ``signal``: a ``GradSignal`` (``self.signal``, reset for this step) told as each
        layer's gradient is written, and finished when the step ends, also when it
        raises (``buckets`` says which part of ``grads`` each layer is)."""
        try:
            return self._grad_step(x, y, rows, inv_b, grads, signal)
        except BaseException:
            if signal is not None:
                signal.finish(False)
            raise

    def _grad_step(self, x: npt.NDArray[Any], y: npt.ArrayLike, rows: npt.ArrayLike,
                   inv_b: float, grads: npt.NDArray[Any], signal: Any) -> Tuple[float, int]:
        trainer = self._trainer
        x2 = self._check_x(x)
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if rows.ndim != 1 or rows.shape[0] > self.batch_size:
            raise ShapeError(f"ResidentGradPlan.grad_step: rows must be 1-D with at most "
                             f"{self.batch_size} entries, got shape {rows.shape}")
        self._check_grads(grads)
        if rows.size == 0:
            grads.fill(0)
            if signal is not None:
                signal.finish(True)
            return 0.0, 0
        if rows.min() < 0 or rows.max() >= x2.shape[0]:
            raise ValueError(f"ResidentGradPlan.grad_step: rows outside [0, {x2.shape[0]})")
        labels = np.ascontiguousarray(np.asarray(y)[rows], dtype=np.int64)
        if labels.min() < 0 or labels.max() >= self.n_classes:
            raise ValueError(f"ResidentGradPlan.grad_step: labels outside [0, {self.n_classes})")
        if self._resident is trainer:
            W: Optional[List[Any]] = None
            bias: Optional[List[Any]] = None
        else:
            W = [spec.weight.data for spec in self.layers]  # type: ignore[union-attr]  # Dense
            bias = [spec.bias.data if spec.bias is not None else None for spec in self.layers]
        gW, gb = self._slot_views(grads)
        with self._lock:
            loss_sum, correct, _finite = trainer.grad_step(
                W, bias, gW, gb, x2, x2.dtype == np.uint8, x2.shape[1], labels, rows,
                float(inv_b), nthreads=_threads.get_num_threads(), signal=signal)
        return float(loss_sum), int(correct)

    @property
    def signal(self) -> Any:
        """This plan's ``GradSignal`` (made on first use)."""
        sig = self.__dict__.get("_signal")
        if sig is None:
            sig = self._native.GradSignal()
            self.__dict__["_signal"] = sig
        return sig

    def buckets(self, bucket_bytes: int = BUCKET_BYTES) -> List[Tuple[int, int, int]]:
        """The gradient allreduce's buckets ``(start, stop, layer)`` over the flat buffer,
        in the order they are reduced: layer by layer from the last (the backward pass
        writes its gradient first), each layer's contiguous part of ``flat_params``
        (W and b) cut into pieces of at most ``bucket_bytes``; ``layer``: the layer
        whose gradient the bucket needs (``GradSignal.wait(layer)``).  The same list
        overlapped or not, so the sums are the same bits either way."""
        if bucket_bytes < 1:
            raise ValueError(f"buckets: bucket_bytes must be >= 1, got {bucket_bytes}")
        per = max(1, bucket_bytes // 4)
        spans: List[Tuple[int, int, int]] = []
        for l, spec in enumerate(self.layers):
            for p in (spec.weight, spec.bias):
                if p is None:
                    continue
                lo, hi = int(p.offset), int(p.offset) + int(p.size)  # type: ignore[arg-type]
                if spans and spans[-1][2] == l and spans[-1][1] == lo:
                    spans[-1] = (spans[-1][0], hi, l)
                else:
                    spans.append((lo, hi, l))
        covered = sorted((lo, hi) for lo, hi, _ in spans)
        total, at = int(self.model.flat_params.size), 0
        for lo, hi in covered:
            if lo != at:
                raise ValueError("ResidentGradPlan.buckets: the layers' parameters do not "
                                 "tile model.flat_params")
            at = hi
        if at != total:
            raise ValueError("ResidentGradPlan.buckets: the layers' parameters do not tile "
                             "model.flat_params")
        out: List[Tuple[int, int, int]] = []
        for lo, hi, l in sorted(spans, key=lambda t: (-t[2], t[0])):
            out.extend((s, min(hi, s + per), l) for s in range(lo, hi, per))
        return out

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
        self._apply(grads, 1, 0)

    def apply_sum(self, slots: npt.NDArray[Any]) -> None:
        """``apply(slots.sum(axis=0))``, the rows added in order (slot 0 first) as the
        update reads them, without writing the sum: ``slots`` a C-contiguous float32
        array (ranks, flat size), ``SharedGrads.slots[k & 1]``.  The same bits as
        ``apply`` of the sum added in that order."""
        if not isinstance(slots, np.ndarray) or slots.dtype != np.float32 or slots.ndim != 2 \
                or not slots.flags.c_contiguous or slots.shape[0] < 1 \
                or slots.shape[1] != self.model.flat_params.size:
            raise TypeError("ResidentGradPlan.apply_sum: slots must be a C-contiguous float32 "
                            "array (sources, model.flat_params.size)")
        self._apply(slots[0], int(slots.shape[0]), int(slots.strides[0] // slots.itemsize))

    def _apply(self, grads: npt.NDArray[Any], nsrc: int, stride: int) -> None:
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
                               nsrc=nsrc, src_stride=stride, **ospec.hyper)
        opt.step_count += 1
        self._resident = trainer
