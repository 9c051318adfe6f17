"""fastnn's one thread count: set/get, the threads() context manager, the
default from the affinity mask, and the pools it drives (BLAS, Numba)."""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import fastnn
from fastnn import _threads


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    old = _threads._num_threads
    # counts above the CPUs are normal here; the tests of that warning reset this
    monkeypatch.setattr(_threads, "_oversub_warned", True)
    yield
    fastnn.set_num_threads(old)


def _blas_threads():
    import threadpoolctl
    return [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]


def _forget_blas_limit():
    if _threads._blas_limiter is not None:
        _threads._blas_limiter.restore_original_limits()
    _threads._blas_limiter, _threads._blas_count, _threads._blas_generation = None, None, -1


@pytest.fixture
def blas_at_2():
    """numpy's BLAS at 2 threads, not limited by fastnn (restored afterwards)."""
    import threadpoolctl

    from fastnn.kernels import variants
    assert "blas" in variants("matmul")       # numpy's a @ b: always registered
    if not _blas_threads():
        pytest.skip("numpy's BLAS is not visible to threadpoolctl")
    _forget_blas_limit()
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        if set(_blas_threads()) != {2}:
            pytest.skip("numpy's BLAS cannot run 2 threads here")
        yield
        _forget_blas_limit()


def _blas_call():
    from fastnn.kernels import get
    a = np.ones((8, 8), np.float32)
    get("matmul", "blas")(a, a, np.empty((8, 8), np.float32), None, False, 1)


def test_context_manager_restores_blas_it_limited(blas_at_2):
    """Issue 10: the block exited with OpenBLAS still at 1 thread while
    get_num_threads() said 2."""
    fastnn.set_num_threads(None)
    with fastnn.threads(1):
        _blas_call()
        assert _blas_threads() == [1] * len(_blas_threads())
    assert set(_blas_threads()) == {2}                 # as it was: not limited by fastnn
    assert _threads._blas_limiter is None


def test_context_manager_restores_blas_limited_before(blas_at_2):
    fastnn.set_num_threads(2)
    _blas_call()
    assert set(_blas_threads()) == {2}
    with fastnn.threads(1):
        with fastnn.threads(1):
            _blas_call()
        assert set(_blas_threads()) == {2}             # the inner block put it back
        _blas_call()
        assert set(_blas_threads()) == {1}
    assert set(_blas_threads()) == {2} and fastnn.get_num_threads() == 2
    assert _threads._blas_generation == _threads._generation      # in sync: no re-limit


def test_set_num_threads_moves_a_blas_pool_fastnn_limits(blas_at_2):
    fastnn.set_num_threads(1)
    _blas_call()
    assert set(_blas_threads()) == {1}
    fastnn.set_num_threads(2)                           # no BLAS call in between
    assert set(_blas_threads()) == {2}


def test_context_manager_restores_numba_count():
    from fastnn.kernels import variants
    assert "numba" in variants("matmul")      # numba is a runtime dependency
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba was started with a single thread")
    numba.set_num_threads(2)
    with fastnn.threads(1):
        assert _threads.sync_numba() == 1 and numba.get_num_threads() == 1
    assert numba.get_num_threads() == 2


@pytest.mark.parametrize("env, want, source", [
    ({"OMP_NUM_THREADS": "1"}, 1, "OMP_NUM_THREADS"),
    ({"OMP_NUM_THREADS": "3,2"}, 3, "OMP_NUM_THREADS"),          # nested list: the first
    ({"OMP_NUM_THREADS": "1", "FASTNN_NUM_THREADS": "2"}, 2, "FASTNN_NUM_THREADS"),
    ({"OMP_NUM_THREADS": ""}, None, "available CPUs"),
    ({}, None, "available CPUs"),
])
def test_env_precedence(monkeypatch, env, want, source):
    """Issue 10: OMP_NUM_THREADS=1 was ignored.  FASTNN_NUM_THREADS, then
    OMP_NUM_THREADS, then the CPUs this process may use."""
    for name in ("OMP_NUM_THREADS", "FASTNN_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    fastnn.set_num_threads(None)
    want = _threads.available_cpus() if want is None else want
    assert fastnn.get_num_threads() == want
    assert _threads.default_threads_source() == (want, source)
    assert _threads.pools()["source"] == source
    with fastnn.threads(1):                              # an explicit count still wins
        assert fastnn.get_num_threads() == 1


@pytest.mark.parametrize("value", ["zero", "0", "-1", "5000"])
def test_bad_omp_num_threads_names_it(monkeypatch, value):
    monkeypatch.delenv("FASTNN_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    fastnn.set_num_threads(None)
    with pytest.raises(ValueError, match="OMP_NUM_THREADS must be"):
        fastnn.get_num_threads()


@pytest.mark.parametrize("request_", ["set", "context", "env"])
def test_more_threads_than_cpus_warns_once(monkeypatch, request_):
    """Issue 10: --threads 64 on 2 CPUs silently halved throughput."""
    monkeypatch.setattr(_threads, "_cpus_cache", 2)
    monkeypatch.setattr(_threads, "_oversub_warned", False)
    monkeypatch.delenv("FASTNN_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)

    def ask(n):
        if request_ == "set":
            fastnn.set_num_threads(n)
        elif request_ == "context":
            with fastnn.threads(n):
                pass
        else:
            monkeypatch.setenv("OMP_NUM_THREADS", str(n))
            fastnn.set_num_threads(None)
            fastnn.get_num_threads()

    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        ask(2)                                          # as many as the CPUs: fine
        assert got == []
        ask(64)
        ask(65)                                         # once per process
        ask(64)
    assert len(got) == 1 and got[0].category is RuntimeWarning
    msg = str(got[0].message)
    assert "64 threads" in msg and "only 2 CPU(s)" in msg
    if request_ == "env":
        assert "OMP_NUM_THREADS=64" in msg
    assert got[0].filename == __file__ or request_ == "env"      # points at the caller


def test_set_and_get():
    fastnn.set_num_threads(3)
    assert fastnn.get_num_threads() == 3
    fastnn.set_num_threads(1)
    assert fastnn.get_num_threads() == 1
    fastnn.set_num_threads(None)
    assert fastnn.get_num_threads() == _threads._default_threads()


@pytest.mark.parametrize("bad, exc, match", [
    (0, ValueError, ">= 1"), (-2, ValueError, ">= 1"), (1.5, TypeError, "integer"),
    ("2", TypeError, "integer"), (True, TypeError, "integer"),
])
def test_set_validates(bad, exc, match):
    with pytest.raises(exc, match=match):
        fastnn.set_num_threads(bad)
    with pytest.raises(exc, match=match):
        with fastnn.threads(bad):
            pass


def test_numpy_integer_accepted():
    fastnn.set_num_threads(np.int64(2))
    assert fastnn.get_num_threads() == 2


def test_context_manager_restores():
    fastnn.set_num_threads(2)
    with fastnn.threads(1) as n:
        assert n == 1
        assert fastnn.get_num_threads() == 1
        with fastnn.threads(3):
            assert fastnn.get_num_threads() == 3
        assert fastnn.get_num_threads() == 1
    assert fastnn.get_num_threads() == 2


def test_context_manager_restores_after_exception():
    fastnn.set_num_threads(None)
    default = fastnn.get_num_threads()
    with pytest.raises(RuntimeError):
        with fastnn.threads(1):
            raise RuntimeError("boom")
    assert fastnn.get_num_threads() == default
    assert _threads._num_threads is None


def test_default_honours_affinity():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no sched_getaffinity on this platform")
    allowed = os.sched_getaffinity(0)
    one = {min(allowed)}
    code = ("import os, fastnn; os.sched_setaffinity(0, %r); "
            "print(fastnn.get_num_threads(), fastnn._threads.available_cpus())" % (one,))
    env = {k: v for k, v in os.environ.items() if k != "FASTNN_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True).stdout.split()
    assert out == ["1", "1"]
    # the current process: never more than the affinity mask allows
    assert _threads.available_cpus() <= len(allowed)


def test_env_default():
    code = "import fastnn; print(fastnn.get_num_threads())"
    env = dict(os.environ, FASTNN_NUM_THREADS="5")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True).stdout.strip()
    assert out == "5"
    env["FASTNN_NUM_THREADS"] = "zero"
    bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "FASTNN_NUM_THREADS" in bad.stderr


def test_blas_pool_follows_our_count():
    import threadpoolctl

    from fastnn.kernels import get, variants
    assert "blas" in variants("matmul")       # numpy's a @ b: always registered
    a = np.ones((8, 8), np.float32)
    out = np.empty((8, 8), np.float32)

    def blas_threads():
        return [p["num_threads"] for p in threadpoolctl.threadpool_info()
                if p["user_api"] == "blas"]

    if not blas_threads():
        pytest.skip("numpy's BLAS is not visible to threadpoolctl")
    with fastnn.threads(1):
        get("matmul", "blas")(a, a, out, None, False, 1)
        assert all(n == 1 for n in blas_threads())
    fastnn.set_num_threads(2)
    get("matmul", "blas")(a, a, out, None, False, 2)
    assert all(n == 2 for n in blas_threads())


def test_numba_pool_follows_our_count():
    from fastnn.kernels import variants
    assert "numba" in variants("matmul")      # numba is a runtime dependency
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba was started with a single thread")
    with fastnn.threads(1):
        assert _threads.sync_numba() == 1
        assert numba.get_num_threads() == 1
    with fastnn.threads(2):
        assert _threads.sync_numba() == 2
        assert numba.get_num_threads() == 2


def test_public_matmul_uses_current_count():
    # 1 and 2 threads must agree bit for bit through the public API too
    from fastnn.kernels import matmul, variants
    assert "c" in variants("matmul")          # a broken build must fail, not skip
    rng = np.random.default_rng(0)
    a = rng.standard_normal((130, 300)).astype(np.float32)
    b = rng.standard_normal((300, 200)).astype(np.float32)
    with fastnn.threads(1):
        one = matmul(a, b, variant="c")
    with fastnn.threads(2):
        two = matmul(a, b, variant="c")
    assert np.array_equal(one, two)


def test_import_does_not_import_numba_or_set_pools():
    code = ("import sys, fastnn, fastnn.kernels; "
            "print('numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
