"""The one place that decides how many threads fastnn uses.

Every pool follows this count: our OpenMP kernels (the count is passed to
each native call), Numba's ``parallel=True`` kernels (set just before each
call: Numba's setting is per calling thread) and numpy's BLAS (through
threadpoolctl, applied lazily before the first BLAS call after a change).
Nothing is changed at import time.

Default: the CPUs this process may run on, honouring the affinity mask and
a cgroup CPU quota (containers), or ``$FASTNN_NUM_THREADS`` when set.

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
_blas_limiter = None
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


def _default_threads():
    env = os.environ.get("FASTNN_NUM_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"FASTNN_NUM_THREADS must be a positive integer, got {env!r}") from None
        if n < 1 or n > MAX_THREADS:
            raise ValueError(f"FASTNN_NUM_THREADS must be an integer in [1, {MAX_THREADS}], "
                             f"got {env!r}")
        return n
    global _cpus_cache
    if _cpus_cache is None:      # read once: the cgroup files cost ~40 us per kernel call
        _cpus_cache = available_cpus()
    return _cpus_cache


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

    ``n=None`` restores the default (the CPUs this process may use)."""
    global _num_threads, _generation
    with _lock:
        _num_threads = None if n is None else _check_count(n)
        _generation += 1
    _warn_if_forked(_num_threads)


@contextlib.contextmanager
def threads(n):
    """Context manager: ``with fastnn.threads(1): ...`` runs the block on n threads."""
    global _num_threads, _generation
    n = _check_count(n)
    _warn_if_forked(n)
    with _lock:
        old = _num_threads
        _num_threads = n
        _generation += 1
    try:
        yield n
    finally:
        with _lock:
            _num_threads = old
            _generation += 1


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
    global _blas_generation, _blas_limiter
    if _blas_generation == _generation:
        return
    with _lock:
        if _blas_generation == _generation:
            return
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:       # optional: without it BLAS keeps its own setting
            _blas_generation = _generation
            return
        if _blas_limiter is not None:
            _blas_limiter.restore_original_limits()
        _blas_limiter = threadpool_limits(get_num_threads(), user_api="blas")
        _blas_generation = _generation


def pools():
    """Thread counts as every pool sees them now (for show_config)."""
    out = {"fastnn": get_num_threads(), "available_cpus": available_cpus(),
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
