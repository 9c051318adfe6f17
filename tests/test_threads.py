"""fastnn's one thread count: set/get, the threads() context manager, the
default from the affinity mask, and the pools it drives (BLAS, Numba)."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastnn
from fastnn import _threads


@pytest.fixture(autouse=True)
def _restore_threads():
    old = _threads._num_threads
    yield
    fastnn.set_num_threads(old)


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
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from fastnn.kernels import get, variants
    if "blas" not in variants("matmul"):
        pytest.skip("blas variant unavailable")
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
    if "numba" not in variants("matmul"):
        pytest.skip("numba variant unavailable")
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
    if "c" not in variants("matmul"):
        pytest.skip("c variant not built")
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
