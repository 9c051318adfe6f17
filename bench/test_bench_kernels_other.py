"""Benchmarks of the xent, elementwise, reduce and optim kernel families against
the numpy code a user would write for the same step.

Every variant in the registry is timed (the float64 ``reference`` is left out:
it is the spec, not a contender), next to a ``numpy`` baseline in the same
dtype.  Numba's compilation is paid in a warm-up call before timing.  Each
result's extra_info names the thread count, the SIMD path and the CPU.

    python -m pytest bench/test_bench_kernels_other.py --benchmark-only -q \
        --benchmark-columns=median,iqr,rounds --benchmark-sort=name
    FASTNN_NUM_THREADS=1 python -m pytest bench/test_bench_kernels_other.py ...   # one thread
    FASTNN_SIMD=scalar python -m pytest bench/test_bench_kernels_other.py ...     # scalar C paths
"""
import platform

import numpy as np
import pytest

import fastnn
from fastnn import kernels as K

pytest.importorskip("pytest_benchmark")

DT = np.float32


def _contenders(family):
    return ["numpy"] + [v for v in K.variants(family) if v != "reference"]


def _info(benchmark, family, variant):
    simd = "numpy"
    if variant != "numpy":
        row = next(r for r in K.describe(family) if r["name"] == variant)
        simd = row["simd"]
    benchmark.extra_info.update(family=family, variant=variant, simd=simd,
                                threads=fastnn.get_num_threads(), cpu=platform.processor())
    benchmark.group = family


def _run(benchmark, fn):
    fn()                     # warm-up: Numba compile / cache load, first-touch of outputs
    benchmark(fn)


# ----------------------------------------------------------------------------- xent

XENT_SHAPES = [(256, 10), (256, 1000)]


def numpy_xent(x, y, d, scale):
    m = x.max(axis=1, keepdims=True)
    z = x - m
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    losses = np.log(s[:, 0]) - z[np.arange(len(y)), y]
    np.divide(e, s, out=d)
    d[np.arange(len(y)), y] -= 1.0
    d *= scale
    return losses


@pytest.mark.parametrize("B,C", XENT_SHAPES, ids=[f"{b}x{c}" for b, c in XENT_SHAPES])
@pytest.mark.parametrize("variant", _contenders("xent"))
def test_softmax_xent_loss_and_grad(benchmark, variant, B, C):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, C)).astype(DT) * 3
    y = rng.integers(0, C, B)
    d = np.empty_like(x)
    losses = np.empty(B, DT)
    _info(benchmark, "xent", variant)
    if variant == "numpy":
        _run(benchmark, lambda: numpy_xent(x, y, d, 1.0 / B))
    else:
        _run(benchmark, lambda: K.softmax_xent(x, y, losses=losses, dlogits=d,
                                               grad_scale=1.0 / B, variant=variant))


@pytest.mark.parametrize("variant", _contenders("xent"))
def test_softmax_256x1000(benchmark, variant):
    x = np.random.default_rng(1).standard_normal((256, 1000)).astype(DT)
    out = np.empty_like(x)
    _info(benchmark, "xent", variant)

    def numpy_softmax():
        np.subtract(x, x.max(axis=1, keepdims=True), out=out)
        np.exp(out, out=out)
        np.divide(out, out.sum(axis=1, keepdims=True), out=out)

    if variant == "numpy":
        _run(benchmark, numpy_softmax)
    else:
        _run(benchmark, lambda: K.softmax(x, out, variant=variant))


# ----------------------------------------------------------------------------- elementwise

ACT_SHAPE = (256, 1024)
NUMPY_FWD = {
    "relu": lambda x, out: np.maximum(x, 0, out=out),
    "sigmoid": lambda x, out: np.divide(1.0, np.add(1.0, np.exp(-x)), out=out),
    "tanh": lambda x, out: np.tanh(x, out=out),
}
NUMPY_BWD = {
    "relu": lambda y, g, dx: np.multiply(g, y > 0, out=dx),
    "sigmoid": lambda y, g, dx: np.multiply(g * y, 1.0 - y, out=dx),
    "tanh": lambda y, g, dx: np.multiply(g, 1.0 - y * y, out=dx),
}


@pytest.mark.parametrize("kind", list(NUMPY_FWD))
@pytest.mark.parametrize("variant", _contenders("elementwise"))
def test_activation_forward(benchmark, variant, kind):
    x = np.random.default_rng(2).standard_normal(ACT_SHAPE).astype(DT)
    out = np.empty_like(x)
    _info(benchmark, "elementwise", variant)
    if variant == "numpy":
        _run(benchmark, lambda: NUMPY_FWD[kind](x, out))
    else:
        _run(benchmark, lambda: K.activation_forward(kind, x, out, variant=variant))


@pytest.mark.parametrize("kind", list(NUMPY_BWD))
@pytest.mark.parametrize("variant", _contenders("elementwise"))
def test_activation_backward(benchmark, variant, kind):
    rng = np.random.default_rng(3)
    y = K.activation_forward(kind, rng.standard_normal(ACT_SHAPE).astype(DT))
    g = rng.standard_normal(ACT_SHAPE).astype(DT)
    dx = np.empty_like(y)
    _info(benchmark, "elementwise", variant)
    if variant == "numpy":
        _run(benchmark, lambda: NUMPY_BWD[kind](y, g, dx))
    else:
        _run(benchmark, lambda: K.activation_backward(kind, y, g, dx, variant=variant))


# ----------------------------------------------------------------------------- reduce

@pytest.mark.parametrize("shape", [(256, 1024), (10000, 10)], ids=["256x1024", "10000x10"])
@pytest.mark.parametrize("variant", _contenders("reduce"))
def test_column_sums(benchmark, variant, shape):
    x = np.random.default_rng(4).standard_normal(shape).astype(DT)
    out = np.empty(shape[1], DT)
    _info(benchmark, "reduce", variant)
    if variant == "numpy":
        _run(benchmark, lambda: np.sum(x, axis=0, out=out))
    else:
        _run(benchmark, lambda: K.column_sums(x, out, variant=variant))


# ----------------------------------------------------------------------------- optim

N_PARAMS = 669_706          # the Keras MNIST MLP 784-512-512-10


def numpy_sgd_momentum(p, g, v, lr, mu):
    v *= mu
    v += g
    p -= lr * v


def numpy_adam(p, g, m, v, t, lr, b1=0.9, b2=0.999, eps=1e-8):
    m *= b1
    m += (1 - b1) * g
    v *= b2
    v += (1 - b2) * g * g
    denom = np.sqrt(v) / np.sqrt(1 - b2 ** t)
    denom += eps
    p -= (lr / (1 - b1 ** t)) * m / denom


@pytest.mark.parametrize("variant", _contenders("optim"))
def test_sgd_momentum_update(benchmark, variant):
    rng = np.random.default_rng(5)
    p = rng.standard_normal(N_PARAMS).astype(DT)
    g = rng.standard_normal(N_PARAMS).astype(DT) * 1e-3
    v = np.zeros_like(p)
    _info(benchmark, "optim", variant)
    if variant == "numpy":
        _run(benchmark, lambda: numpy_sgd_momentum(p, g, v, 1e-3, 0.9))
    else:
        _run(benchmark, lambda: K.sgd_update(p, g, lr=1e-3, momentum=0.9, velocity=v,
                                             variant=variant))


@pytest.mark.parametrize("variant", _contenders("optim"))
def test_adam_update(benchmark, variant):
    rng = np.random.default_rng(6)
    p = rng.standard_normal(N_PARAMS).astype(DT)
    g = rng.standard_normal(N_PARAMS).astype(DT) * 1e-3
    m, v = np.zeros_like(p), np.zeros_like(p)
    _info(benchmark, "optim", variant)
    if variant == "numpy":
        _run(benchmark, lambda: numpy_adam(p, g, m, v, 10, 1e-3))
    else:
        _run(benchmark, lambda: K.adam_update(p, g, m, v, step=10, lr=1e-3, variant=variant))


# ----------------------------------------------------------------------------- numba compile time

NUMBA_FIRST_CALL = {
    "xent": "K.softmax_xent(x, np.zeros(4, np.int64), dlogits=np.empty_like(x), variant='numba')",
    "elementwise": "K.activation_forward('relu', x, variant='numba')",
    "reduce": "K.column_sums(x, variant='numba')",
    "optim": "K.sgd_update(x.ravel().copy(), x.ravel(), lr=0.1, variant='numba')",
}


@pytest.mark.parametrize("cache", ["cold", "cached"])
@pytest.mark.parametrize("family", list(NUMBA_FIRST_CALL))
def test_numba_first_call(benchmark, family, cache, tmp_path_factory):
    """What a user feels: a fresh interpreter's first Numba call of one float32 kernel,
    compiling (cold: empty NUMBA_CACHE_DIR) or loading from the on-disk cache (cached).
    Timed inside the child, after the imports."""
    import os
    import subprocess
    import sys
    cache_dir = str(tmp_path_factory.mktemp(f"numba_{family}"))
    code = ("import time, numpy as np, fastnn\nfrom fastnn import kernels as K\nimport numba\n"
            "x = np.ones((4, 8), np.float32)\nt0 = time.perf_counter()\n"
            f"{NUMBA_FIRST_CALL[family]}\nprint(time.perf_counter() - t0)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir,
               PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def first_call():
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])

    if cache == "cached":
        first_call()                     # fill the cache
    seconds = first_call()
    benchmark.extra_info.update(family=family, variant="numba", cache=cache,
                                threads=fastnn.get_num_threads(), first_call_s=seconds)
    benchmark.group = "numba first call"
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\nnumba {family} first call ({cache}): {seconds:.2f} s")
