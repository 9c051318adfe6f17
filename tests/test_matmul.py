"""The matmul family: every variant against the float64 numpy reference.

Shapes include 0, 1, primes, sizes that are not multiples of the engine's
MR/NR/KC/MC blocks and a few above 1000; layouts NN, NT, TN, TT, strided,
Fortran and negative strides; float32 and float64 with tolerances that scale
with K.  The C engine's full epilogue (mask, accumulate) is exercised through
``fastnn._ext.matmul_c.gemm_ex``.
"""
import os

import numpy as np
import pytest

import fastnn
from fastnn.errors import DTypeError, ShapeError
from fastnn.kernels import matmul, variants
from fastnn.kernels.matmul import reference

# Every variant, built or not: one that does not load fails its tests (a variant
# left out of the parametrization would pass by testing nothing).
ALL = variants("matmul", available_only=False)
FAST = ["c", "cython", "numba", "blas"]
NATIVE = ["c", "cython"]

# (M, K, N): 0 and 1, primes, around the 6 x 16 tile, past KC (320) / MC (144)
SHAPES = [
    (0, 5, 3), (4, 0, 3), (3, 5, 0), (1, 1, 1), (1, 7, 1), (2, 3, 5),
    (7, 13, 17), (6, 16, 16), (5, 17, 15), (13, 331, 37), (37, 29, 101),
    (40, 350, 50), (145, 321, 33), (150, 97, 10), (128, 64, 10),
]
BIG_SHAPES = [(1031, 67, 23), (19, 1201, 41), (33, 45, 1103)]
DTYPES = [np.float32, np.float64]


def test_every_variant_loads():
    assert set(FAST) | {"reference"} == set(ALL)
    missing = {row["name"]: row["error"] for row in fastnn.kernels.describe("matmul")
               if not row["available"]}
    assert not missing, f"matmul variants that do not load: {missing}"


def _tol(dtype, k):
    eps = 1e-6 if dtype == np.float32 else 1e-14
    return eps * 8 * max(k, 1) ** 0.5 * 4


def _operand(rng, shape, dtype, trans):
    """A (rows, cols) operand; trans=True gives a transposed view of a C array."""
    if trans:
        return rng.standard_normal(shape[::-1]).astype(dtype).T
    return rng.standard_normal(shape).astype(dtype)


def _check(out, expect, dtype, k):
    expect = np.asarray(expect, dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(expect)))) if expect.size else 1.0
    err = float(np.max(np.abs(out.astype(np.float64) - expect))) if expect.size else 0.0
    assert err <= _tol(dtype, k) * scale, f"max error {err:.3g} (scale {scale:.3g})"


def _run(variant, a, b, bias=None, relu=False, nthreads=1):
    out = np.full((a.shape[0], b.shape[1]), np.nan, dtype=a.dtype)
    fn = fastnn.kernels.get("matmul", variant)
    return fn(a, b, out, bias, relu, nthreads)


@pytest.mark.parametrize("variant", FAST)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_variant_matches_reference(variant, dtype, shape):
    rng = np.random.default_rng(hash(shape) % 2**32)
    m, k, n = shape
    for ta, tb in ((False, False), (False, True), (True, False), (True, True)):
        a = _operand(rng, (m, k), dtype, ta)
        b = _operand(rng, (k, n), dtype, tb)
        bias = rng.standard_normal(n).astype(dtype)
        for bias_, relu in ((None, False), (bias, True), (bias, False)):
            got = _run(variant, a, b, bias_, relu, nthreads=2)
            ref = reference.matmul(a, b, np.empty((m, n)), bias_, relu)
            _check(got, ref, dtype, k)


@pytest.mark.parametrize("variant", ["c", "cython", "blas", "numba"])
@pytest.mark.parametrize("shape", BIG_SHAPES)
def test_big_shapes(variant, shape):
    rng = np.random.default_rng(7)
    m, k, n = shape
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    got = _run(variant, a, b, None, False, nthreads=2)
    _check(got, a.astype(np.float64) @ b, np.float32, k)


@pytest.mark.parametrize("variant", FAST)
@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_fortran_negative(variant, dtype):
    rng = np.random.default_rng(3)
    big_a = rng.standard_normal((70, 100)).astype(dtype)
    big_b = rng.standard_normal((90, 120)).astype(dtype)
    cases = [
        (big_a[::2, ::3], big_b[:34:1, ::3][:34]),                 # x[::2, ::3]
        (np.asfortranarray(big_a[:35, :34]), np.asfortranarray(big_b[:34, :41])),
        (big_a[::-2, ::-3], big_b[:34][::-1, ::-2]),               # negative strides
        (big_a[5:40, 7:41].T.T, big_b[::-1, :][:34, 3:50].T[::-1].T),
    ]
    for a, b in cases:
        assert a.shape[1] == b.shape[0]
        bias = rng.standard_normal(b.shape[1]).astype(dtype)
        got = _run(variant, a, b, bias, True, nthreads=2)
        ref = reference.matmul(a, b, np.empty((a.shape[0], b.shape[1])), bias, True)
        _check(got, ref, dtype, a.shape[1])


@pytest.mark.parametrize("variant", FAST)
def test_strided_out(variant):
    rng = np.random.default_rng(4)
    a = rng.standard_normal((23, 40)).astype(np.float32)
    b = rng.standard_normal((40, 31)).astype(np.float32)
    big = np.zeros((50, 100), np.float32)
    out = big[::2, ::3][:23, :31]
    fastnn.kernels.get("matmul", variant)(a, b, out, None, False, 1)
    _check(out, a.astype(np.float64) @ b, np.float32, 40)
    untouched = big.copy()
    untouched[::2, ::3][:23, :31] = 0
    assert not np.any(untouched), "wrote outside the strided out view"


@pytest.mark.parametrize("variant", NATIVE + ["numba"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_threads_bitwise_identical(variant, dtype):
    rng = np.random.default_rng(5)
    for m, k, n in ((128, 784, 512), (301, 333, 97), (7, 1000, 300), (128, 512, 10),
                    (1000, 300, 7), (9, 700, 900)):
        a = rng.standard_normal((m, k)).astype(dtype)
        b = rng.standard_normal((k, n)).astype(dtype)
        bias = rng.standard_normal(n).astype(dtype)
        one = _run(variant, a, b, bias, True, nthreads=1)
        two = _run(variant, a, b, bias, True, nthreads=2)
        again = _run(variant, a, b, bias, True, nthreads=2)
        assert np.array_equal(one, two), f"{variant}: 1 vs 2 threads differ for {(m, k, n)}"
        assert np.array_equal(two, again), f"{variant}: repeated calls differ for {(m, k, n)}"


@pytest.fixture
def scalar_simd():
    old = fastnn.kernels.simd_level()
    fastnn.kernels.set_simd_level(0)
    yield
    fastnn.kernels.set_simd_level(old)


@pytest.mark.parametrize("variant", NATIVE)
@pytest.mark.parametrize("dtype", DTYPES)
def test_scalar_fallback_matches_avx2(variant, dtype, scalar_simd):
    from fastnn.kernels._registry import native_module
    mod = native_module("matmul_c" if variant == "c" else "matmul_cy")
    assert mod.simd_level() == 0
    rng = np.random.default_rng(6)
    for m, k, n in ((13, 331, 37), (64, 70, 130), (150, 97, 10)):
        a = rng.standard_normal((k, m)).astype(dtype).T
        b = rng.standard_normal((k, n)).astype(dtype)
        bias = rng.standard_normal(n).astype(dtype)
        scalar = _run(variant, a, b, bias, True, nthreads=2)
        mod.set_simd_level(1)
        try:
            vec = _run(variant, a, b, bias, True, nthreads=2)
        finally:
            mod.set_simd_level(0)
        _check(scalar, vec, dtype, k)
        _check(scalar, reference.matmul(a, b, np.empty((m, n)), bias, True), dtype, k)


def test_nan_and_inf_propagate():
    a = np.ones((7, 5), np.float32)
    b = np.ones((5, 17), np.float32)
    a[2, 3] = np.nan
    b[1, 4] = np.inf
    got = _run("c", a, b, np.zeros(17, np.float32), True)
    ref = reference.matmul(a, b, np.empty((7, 17)), np.zeros(17, np.float32), True)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(ref))


# ----------------------------------------------------------------------------- gemm_ex epilogue

def _gemm_ex():
    from fastnn._ext.matmul_c import gemm_ex     # not built: an error, never a skip
    return gemm_ex


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 13, 17), (13, 700, 37), (128, 512, 10),
                                   (64, 96, 130), (5, 0, 9), (5, 64, 40)])
@pytest.mark.parametrize("level", [3, 2, 1, 0])
def test_gemm_ex_mask_accumulate(dtype, shape, level):
    """Every SIMD level (clamped to the CPU's); at the AVX-512 levels the fp32
    AVX-512 engine is forced, since the dispatcher may keep AVX2 on this CPU."""
    gemm_ex = _gemm_ex()
    from fastnn._ext import matmul_c
    old_level = matmul_c.simd_level()
    matmul_c.set_fp32_engine("avx512" if level >= 2 else "auto")
    rng = np.random.default_rng(8)
    m, k, n = shape
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((n, k)).astype(dtype).T            # NT
    bias = rng.standard_normal(n).astype(dtype)
    mask = np.asfortranarray((rng.standard_normal((m, n)) > 0).astype(dtype) *
                             rng.uniform(0.5, 2.0, (m, n)).astype(dtype))
    old = rng.standard_normal((m, n)).astype(dtype)
    matmul_c.set_simd_level(level)
    try:
        for bias_, relu, mask_, accumulate in ((None, False, None, True), (bias, True, mask, True),
                                               (None, False, mask, False), (bias, False, None, True),
                                               (bias, True, mask, False)):
            expect = a.astype(np.float64) @ b
            if accumulate:
                expect += old
            if bias_ is not None:
                expect += bias_
            if relu:
                expect = np.maximum(expect, 0)
            if mask_ is not None:
                expect = np.where(mask_ > 0, expect, 0)
            outs = []
            for nt in (1, 2):
                out = old.copy()
                gemm_ex(a, b, out, bias_, relu, mask_, accumulate, nt)
                _check(out, expect, dtype, k)
                outs.append(out)
            assert np.array_equal(outs[0], outs[1])
    finally:
        matmul_c.set_simd_level(old_level)
        matmul_c.set_fp32_engine("auto")


def test_gemm_ex_strided_out_and_mask():
    gemm_ex = _gemm_ex()
    rng = np.random.default_rng(9)
    a = rng.standard_normal((30, 25))
    b = rng.standard_normal((25, 35))
    big = rng.standard_normal((80, 120))
    out = big[::2, ::3][:30, :35]
    old = out.copy()
    mask = rng.standard_normal((60, 70))[::2, ::-2]
    gemm_ex(a, b, out, None, False, mask, True, 2)
    _check(out, np.where(mask > 0, a @ b + old, 0), np.float64, 25)


def test_gemm_ex_and_raw_validate():
    gemm_ex = _gemm_ex()
    from fastnn._ext.matmul_c import gemm_raw
    a = np.ones((3, 4), np.float32)
    b = np.ones((4, 5), np.float32)
    out = np.zeros((3, 5), np.float32)
    with pytest.raises(ValueError, match="inner dimensions"):
        gemm_ex(a, np.ones((3, 5), np.float32), out)
    with pytest.raises(ValueError, match="out must have shape"):
        gemm_raw(a, b, np.zeros((3, 4), np.float32))
    with pytest.raises(TypeError, match="b must have dtype"):
        gemm_ex(a, b.astype(np.float64), out)
    with pytest.raises(ValueError, match="mask must have shape"):
        gemm_ex(a, b, out, mask=np.ones((5, 3), np.float32))
    with pytest.raises(ValueError, match="bias must be"):
        gemm_ex(a, b, out, bias=np.ones(4, np.float32))
    np.testing.assert_array_equal(gemm_raw(a, b, out, 2, 3), np.full((3, 5), 4.0))


# ----------------------------------------------------------------------------- public API

def test_public_matmul_variants_and_transposes():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((20, 30)).astype(np.float32)
    w = rng.standard_normal((40, 30)).astype(np.float32)
    bias = rng.standard_normal(40).astype(np.float32)
    ref = np.maximum(x.astype(np.float64) @ w.T + bias, 0)
    for variant in [None] + ALL:
        got = matmul(x, w, trans_b=True, bias=bias, activation="relu", variant=variant)
        _check(got, ref, np.float32, 30)
    got = matmul(x.T.copy(), w.T.copy(), trans_a=True)
    _check(got, x.astype(np.float64) @ w.T, np.float32, 30)


def test_public_matmul_out_is_used():
    a = np.ones((4, 3))
    b = np.ones((3, 2))
    out = np.empty((4, 2))
    assert matmul(a, b, out=out) is out
    np.testing.assert_array_equal(out, 3.0)


def test_validation_errors():
    f32 = np.ones((3, 4), np.float32)
    w32 = np.ones((4, 5), np.float32)
    with pytest.raises(DTypeError, match="same dtype"):
        matmul(f32, w32.astype(np.float64))
    with pytest.raises(DTypeError, match="float32 or float64"):
        matmul(np.ones((3, 4), np.int64), np.ones((4, 5), np.int64))
    with pytest.raises(ShapeError, match="must be 2-D"):
        matmul(np.ones(4, np.float32), w32)
    with pytest.raises(ShapeError, match="inner dimensions differ"):
        matmul(f32, np.ones((3, 5), np.float32))
    with pytest.raises(ShapeError, match=r"bias must have shape \(5,\)"):
        matmul(f32, w32, bias=np.ones(4, np.float32))
    with pytest.raises(DTypeError, match="bias must have dtype float32"):
        matmul(f32, w32, bias=np.ones(5, np.float64))
    with pytest.raises(ShapeError, match=r"out must have shape \(3, 5\)"):
        matmul(f32, w32, out=np.empty((5, 3), np.float32))
    with pytest.raises(DTypeError, match="out must have dtype float32"):
        matmul(f32, w32, out=np.empty((3, 5), np.float64))
    ro = np.empty((3, 5), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        matmul(f32, w32, out=ro)
    sq = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match="overlaps input a"):
        matmul(sq, np.ones((4, 4), np.float32), out=sq)
    with pytest.raises(ValueError, match="overlaps input b"):
        matmul(np.ones((4, 4), np.float32), sq, out=sq)
    with pytest.raises(ValueError, match="activation must be None or 'relu'"):
        matmul(f32, w32, activation="tanh")
    with pytest.raises(ValueError, match="unknown matmul variant"):
        matmul(f32, w32, variant="nope")


@pytest.mark.parametrize("variant", NATIVE)
def test_concurrent_python_threads(variant):
    """Several Python threads in the engine at once (per-thread packing buffers)."""
    import threading
    rng = np.random.default_rng(11)
    cases = []
    for m, k, n in ((150, 400, 90), (37, 700, 300), (300, 50, 7), (64, 333, 129)):
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        cases.append((a, b, _run(variant, a, b, None, False, 1)))
    errors, done = [], []

    def worker(idx):
        a, b, expect = cases[idx % len(cases)]
        try:
            for _ in range(5):
                got = _run(variant, a, b, None, False, 2)
                if not np.array_equal(got, expect):
                    errors.append(idx)
                done.append(idx)
        except Exception as exc:        # noqa: BLE001 - a thread's exception is not raised here
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(done) == 6 * 5                    # every call ran (none died unseen)


def test_bench_kernels_smoke():
    """`fastnn bench kernels` machinery on a tiny shape (speed is never asserted)."""
    import io
    import json

    from fastnn.bench import bench_kernels
    names = ["c", "blas"]
    buf = io.StringIO()
    info = bench_kernels(threads=1, repeat=1, variants=names, file=buf,
                         shapes=[(16, 24, 8, "NT")])
    text = buf.getvalue()
    assert "threads=1" in text and "16x24x8 NT" in text and "fma peak" in text
    assert {r["variant"] for r in info["results"]} == set(names)
    assert all(r["gflops"] > 0 and r["threads"] == 1 for r in info["results"])
    buf = io.StringIO()
    bench_kernels(threads=1, repeat=1, variants=names, file=buf, as_json=True,
                  shapes=[(16, 24, 8, "NN")], clock="cpu")
    assert json.loads(buf.getvalue())["clock"] == "cpu"
    with pytest.raises(ValueError, match="clock must be"):
        bench_kernels(clock="sundial")


@pytest.mark.parametrize("level", [1, None])
@pytest.mark.parametrize("dtype", DTYPES)
def test_shared_split_bitwise_identical(dtype, level):
    """The shared-A split (N in chunks that share one packed A, the multithreaded MLP
    shapes) gives the per-block split's and the one-thread bits, with the whole
    epilogue, strided operands, tails and emulated bf16 (AVX2 level), at 2 and 3
    threads and for several chunk sizes."""
    from fastnn.kernels._registry import native_module
    mc = native_module("matmul_c")
    old_level = mc.simd_level()
    if level is not None:
        mc.set_simd_level(level)
    rng = np.random.default_rng(11)
    try:
        for m, k, n in ((128, 784, 512), (100, 700, 333), (37, 1000, 97), (250, 650, 257)):
            a = rng.standard_normal((k, m)).astype(dtype).T if m == 37 else \
                rng.standard_normal((m, k)).astype(dtype)
            b = rng.standard_normal((k, n)).astype(dtype)
            bias = rng.standard_normal(n).astype(dtype)
            mask = (rng.standard_normal((m, n)) > 0).astype(dtype)
            start = rng.standard_normal((m, n)).astype(dtype)
            bf16s = (False, True) if dtype == np.float32 else (False,)
            for bf16 in bf16s:
                outs = []
                for shared, chunk, nt in ((False, 0, 1), (True, 0, 2), (False, 0, 2),
                                          (True, 3e6, 2), (True, 1, 3)):
                    mc.set_shared_split(shared, chunk)
                    out = start.copy()
                    mc.gemm_ex(a, b, out, bias, True, mask, True, nt, bf16)
                    outs.append(out)
                for o in outs[1:]:
                    assert np.array_equal(outs[0], o), (m, k, n, bf16)
                if not bf16:
                    want = np.maximum(a.astype(np.float64) @ b + start + bias, 0) * (mask > 0)
                    _check(outs[0], want, dtype, k)
    finally:
        mc.set_shared_split(True, 1024.0 * 1024.0)
        mc.set_simd_level(old_level)


@pytest.mark.parametrize("migrate", ["0", "1"])
def test_pool_wakeups_give_the_same_bits(migrate):
    """The pool's workers sleep between calls separated by a pause; a woken worker that
    finds itself on the caller's CPU steps off it (gemm_pool.h, FASTNN_POOL_MIGRATE).
    Whatever thread ends up running a chunk, the product is bitwise the one-thread one."""
    import subprocess
    import sys
    code = (
        "import time, numpy as np, fastnn\n"
        "from fastnn.kernels.matmul import matmul\n"
        "rng = np.random.default_rng(0)\n"
        "a = rng.standard_normal((128, 784)).astype(np.float32)\n"
        "b = rng.standard_normal((784, 512)).astype(np.float32)\n"
        "with fastnn.threads(1):\n"
        "    want = matmul(a, b, variant='c')\n"
        "with fastnn.threads(2):\n"
        "    for _ in range(4):\n"
        "        time.sleep(0.02)            # the workers go to sleep\n"
        "        for _ in range(3):\n"
        "            assert np.array_equal(matmul(a, b, variant='c'), want)\n"
        "print('ok')\n")
    env = dict(os.environ, FASTNN_POOL_MIGRATE=migrate)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
