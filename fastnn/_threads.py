"""The one place that decides how many threads fastnn uses.

Every pool follows this count: our OpenMP kernels (the count is passed to
each native call; fastnn never calls ``omp_set_num_threads``), Numba's
``parallel=True`` kernels (set just before each call: Numba's setting is per
calling thread) and numpy's BLAS (through threadpoolctl, applied lazily
before the first BLAS call after a change, and at once by
``set_num_threads`` when fastnn already limits BLAS).  Nothing is changed at
import time.

The count, in order of precedence:

1. ``set_num_threads(n)`` or ``with threads(n):`` (``fastnn ... --threads N``);
2. ``$FASTNN_NUM_THREADS``;
3. ``$OMP_NUM_THREADS`` (the first entry of a list such as ``4,2``), the
   conventional variable OpenMP programs honour;
4. the CPUs this process may run on, honouring the affinity mask and a
   cgroup CPU quota (containers); under an MPI launcher (``mpirun -n N``,
   detected from its environment) with L ranks on this machine and no binding
   (each rank's mask holds every CPU), a rank's share: those CPUs / L.  A rank
   that the launcher bound to its own cores keeps its mask.

A variable that is set but not an integer in [1, 4096] is a ``ValueError``
naming it.  Asking for more threads than the CPUs this process may use
(by any of 1-3) warns once per process (``RuntimeWarning``): the extra
threads only share CPUs and slow every parallel kernel down.

``with threads(n):`` restores on exit every setting it changed: fastnn's
count, numpy's BLAS pool (to what it was at entry, limited or not) and the
calling thread's Numba count (when Numba's pool is up).  ``fit``, ``evaluate``
and ``predict`` leave numpy's BLAS pool as they found it (``blas_restored``).

Fork: GNU OpenMP (libgomp) cannot start a thread team in a child forked after
the parent used one; the child would hang.  So in a child forked after fastnn
ran a multithreaded kernel, every fastnn kernel runs on one thread (a
RuntimeWarning says so if the child asks for more).  For parallel children use
``multiprocessing.get_context("spawn")`` or ``"forkserver"``.
"""
import contextlib
import math
import os
import sys
import threading
import warnings

__all__ = ["get_num_threads", "set_num_threads", "threads", "available_cpus"]

_lock = threading.RLock()
_num_threads = None          # None: the default (available_cpus())
_generation = 0              # bumped on every change; pools re-sync lazily
_blas_generation = -1
_blas_limiter = None         # threadpoolctl's limiter fastnn applied, or None
_blas_count = None           # the count that limiter applied
_oversub_warned = False      # the "more threads than CPUs" warning was given
_parallel_used = False       # a count > 1 was handed to a native pool in this process
_forked_child = False        # this process was forked after that: libgomp is unusable here
_numba_pid = None            # the process that last ran a Numba kernel (fork detection)
# Asking OpenMP for ~100k threads crashed the process (segfault in libgomp once the
# system's thread limit is hit); no machine needs more than this.
MAX_THREADS = 4096


def _cgroup_cpu_quota():
    """CPUs allowed by the cgroup quota (v2 cpu.max or v1 cfs), or None."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            return float(quota) / float(period)
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as fh:
            quota = int(fh.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as fh:
            period = int(fh.read())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def available_cpus():
    """CPUs this process may use: affinity mask, then the cgroup quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


_cpus_cache = None


def _cpus():
    global _cpus_cache
    if _cpus_cache is None:      # read once: the cgroup files cost ~40 us per kernel call
        _cpus_cache = available_cpus()
    return _cpus_cache


#: The environment variables read for the default count, in order of precedence.
ENV_VARS = ("FASTNN_NUM_THREADS", "OMP_NUM_THREADS")


def _env_count(name):
    """The count ``$name`` asks for, or None when unset or empty."""
    env = os.environ.get(name)
    if env is None or not env.strip():
        return None
    # OMP_NUM_THREADS may list one count per nesting level ("4,2"): the first is ours
    text = env.split(",")[0].strip() if name == "OMP_NUM_THREADS" else env.strip()
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"{name} must be a positive integer, got {env!r}") from None
    if n < 1 or n > MAX_THREADS:
        raise ValueError(f"{name} must be an integer in [1, {MAX_THREADS}], got {env!r}")
    return n


def rank_cpus():
    """``(CPUs, local ranks)``: the CPUs this MPI rank may use by default and the
    number of ranks on this machine (``(available CPUs, 1)`` outside a launcher).
    Ranks that share one affinity mask (the launcher did not bind them) split it."""
    from .distributed import launcher_world
    cpus = _cpus()
    local = launcher_world()[2]
    if local <= 1:
        return cpus, 1
    machine = os.cpu_count() or cpus
    try:
        bound = len(os.sched_getaffinity(0)) < machine
    except (AttributeError, OSError):
        bound = False
    return (cpus if bound else max(1, cpus // local)), local


def default_threads_source():
    """``(count, where it comes from)`` of the default count: the first of
    ``$FASTNN_NUM_THREADS``, ``$OMP_NUM_THREADS`` that is set, else the CPUs
    this process may use (``"available CPUs"``), or under an MPI launcher this
    rank's share of them (``"available CPUs / L local ranks"``)."""
    for name in ENV_VARS:
        n = _env_count(name)
        if n is not None:
            _warn_if_oversubscribed(n, name, stacklevel=5)
            return n, name
    n, local = rank_cpus()
    if local > 1:
        return n, f"available CPUs / {local} local ranks"
    return n, "available CPUs"


def _default_threads():
    return default_threads_source()[0]


def _warn_if_oversubscribed(n, what, stacklevel=3):
    """Warn (once per process) when ``n`` exceeds the CPUs this process may use;
    ``what`` names the request (an environment variable's name, or a call)."""
    global _oversub_warned
    if _oversub_warned or n <= 1 or _forked_child:
        return
    cpus = _cpus()
    if n > cpus:
        _oversub_warned = True
        if what in ENV_VARS:
            what = f"{what}={os.environ.get(what)}"
        warnings.warn(f"fastnn: {what} asks for {n} threads but this process may use only "
                      f"{cpus} CPU(s); the extra threads share CPUs and slow every parallel "
                      f"kernel down (use at most {cpus})", RuntimeWarning,
                      stacklevel=stacklevel)


def get_num_threads():
    """Number of threads fastnn kernels use."""
    global _parallel_used
    if _forked_child:
        return 1
    n = _num_threads
    n = n if n is not None else _default_threads()
    if n > 1 and not _parallel_used:
        _parallel_used = True
    return n


def _after_fork_in_child():
    global _forked_child
    if _parallel_used:
        _forked_child = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _warn_if_forked(n):
    if _forked_child and n is not None and n > 1:
        warnings.warn("fastnn: this process was forked after fastnn used OpenMP threads; "
                      "GNU OpenMP cannot start threads here, so kernels run on 1 thread. "
                      "Use the 'spawn' or 'forkserver' multiprocessing start method.",
                      RuntimeWarning, stacklevel=3)


def _check_count(n):
    if isinstance(n, bool) or not isinstance(n, (int,)) and not hasattr(n, "__index__"):
        raise TypeError(f"number of threads must be an integer, got {type(n).__name__}")
    n = int(n.__index__()) if not isinstance(n, int) else n
    if n < 1:
        raise ValueError(f"number of threads must be >= 1, got {n}")
    if n > MAX_THREADS:
        raise ValueError(f"number of threads must be <= {MAX_THREADS}, got {n}")
    return n


def set_num_threads(n):
    """Set the thread count for every pool fastnn drives (OpenMP, Numba, BLAS).

    ``n=None`` restores the default (see the module docstring: the
    environment variables, then the CPUs this process may use).  A count
    above those CPUs warns once per process."""
    global _num_threads, _generation
    n = None if n is None else _check_count(n)
    if n is not None:
        _warn_if_oversubscribed(n, f"set_num_threads({n})")
    with _lock:
        _num_threads = n
        _generation += 1
        if _blas_limiter is not None:   # fastnn limits BLAS already: follow now, not later
            _sync_blas_locked()
    _warn_if_forked(_num_threads)


def _numba_count_here():
    """Numba's thread count for the calling thread when its pool is up, else None
    (asking would start the pool)."""
    par = sys.modules.get("numba.np.ufunc.parallel")
    if par is None or not getattr(par, "_is_initialized", False):
        return None
    import numba
    return numba.get_num_threads()


def _restore_numba(count):
    """Give the calling thread's Numba count back (``None``: it had never been set,
    so Numba's default, ``NUMBA_NUM_THREADS``)."""
    now = _numba_count_here()
    if now is None:
        return
    import numba
    want = count if count is not None else numba.config.NUMBA_NUM_THREADS
    if now != want:
        numba.set_num_threads(want)


def _restore_blas(limiter, count, in_sync):
    """Put numpy's BLAS pool back as it was when ``threads()`` was entered:
    limited by ``limiter`` to ``count`` threads, or not limited by fastnn."""
    global _blas_limiter, _blas_count, _blas_generation
    if _blas_limiter is not limiter:        # fastnn changed the BLAS pool in the block
        if _blas_limiter is not None:
            _blas_limiter.restore_original_limits()
        _blas_limiter, _blas_count = None, None
        if count is not None:
            from threadpoolctl import threadpool_limits
            _blas_limiter = threadpool_limits(count, user_api="blas")
            _blas_count = count
    if in_sync:                              # the count it follows is back as well
        _blas_generation = _generation


@contextlib.contextmanager
def threads(n):
    """Context manager: ``with fastnn.threads(1): ...`` runs the block on n threads.

    On exit every setting it changed is restored: fastnn's count, numpy's
    BLAS pool (as it was at entry) and the calling thread's Numba count."""
    global _num_threads, _generation
    n = _check_count(n)
    _warn_if_forked(n)
    _warn_if_oversubscribed(n, f"threads({n})", stacklevel=4)
    with _lock:
        old = _num_threads
        blas = (_blas_limiter, _blas_count, _blas_generation == _generation)
        numba_count = _numba_count_here()
        _num_threads = n
        _generation += 1
    try:
        yield n
    finally:
        with _lock:
            _num_threads = old
            _generation += 1
            _restore_blas(*blas)
        _restore_numba(numba_count)


@contextlib.contextmanager
def blas_restored():
    """Context manager: numpy's BLAS pool is left as the block found it.

    fastnn limits BLAS to its own count lazily, before the first BLAS call it
    makes (``sync_blas``); ``fit``, ``evaluate`` and ``predict`` run inside this
    block, so a BLAS limit they applied is lifted when they return (issue 14: a
    library must not leave numpy's thread settings changed).  The next BLAS
    call fastnn makes applies the limit again (one threadpoolctl call)."""
    global _blas_generation
    with _lock:
        blas = (_blas_limiter, _blas_count, _blas_generation == _generation)
    try:
        yield
    finally:
        with _lock:
            if _blas_limiter is not blas[0]:
                _restore_blas(*blas)
                if not blas[2]:
                    _blas_generation = -1     # stale again: re-limit before the next BLAS call


def _numba_gnu_omp_started():
    """Whether Numba's thread pool is up and is GNU OpenMP (not fork safe)."""
    import numba
    try:
        layer = numba.threading_layer()
    except ValueError:                    # no parallel kernel has run yet
        return False
    if layer != "omp":
        return False
    try:
        from numba.np.ufunc import omppool
    except ImportError:                   # pragma: no cover - layer says omp, assume GNU
        return True
    return getattr(omppool, "openmp_vendor", "GNU") == "GNU"


def sync_numba():
    """Set Numba's thread count (per calling thread) before a Numba kernel runs.

    In a child forked after Numba started its GNU OpenMP pool, Numba would
    kill the process (SIGTERM, "fork() called from a process already using
    GNU OpenMP") on the next parallel kernel whatever the thread count, so
    raise a RuntimeError saying what to do instead."""
    global _numba_pid
    import numba
    pid = os.getpid()
    if _numba_pid is not None and _numba_pid != pid:
        if _numba_gnu_omp_started():
            raise RuntimeError(
                "fastnn: this process was forked after Numba started its GNU OpenMP thread "
                "pool; Numba's parallel kernels cannot run here (Numba would terminate the "
                "process). Use the native variants (the default, or variant='c'), or the "
                "'spawn' or 'forkserver' multiprocessing start method.")
    _numba_pid = pid
    n = min(get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)
    return n


def sync_blas():
    """Limit numpy's BLAS pool to our count; cheap when nothing changed."""
    if _blas_generation == _generation:
        return
    with _lock:
        if _blas_generation != _generation:
            _sync_blas_locked()


def _sync_blas_locked():
    global _blas_generation, _blas_limiter, _blas_count
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:       # optional: without it BLAS keeps its own setting
        _blas_generation = _generation
        return
    if _blas_limiter is not None:
        _blas_limiter.restore_original_limits()
    n = get_num_threads()
    _blas_limiter = threadpool_limits(n, user_api="blas")
    _blas_count = n
    _blas_generation = _generation


def pools():
    """Thread counts as every pool sees them now (for show_config)."""
    out = {"fastnn": get_num_threads(), "available_cpus": available_cpus(),
           "source": "set_num_threads" if _num_threads is not None
           else default_threads_source()[1],
           "forked_child_single_thread": _forked_child}
    if "numba" in sys.modules:
        import numba
        out["numba"] = numba.get_num_threads()
    try:
        from threadpoolctl import threadpool_info
        out["blas"] = [
            {"api": p.get("internal_api"), "threads": p.get("num_threads"),
             "arch": p.get("architecture")}
            for p in threadpool_info() if p.get("user_api") == "blas"]
    except ImportError:
        pass
    return out
