"""Hypothesis fuzzing of every kernel family against its float64 reference.

One test per family (matmul, xent, elementwise, reduce, optim).  Each example
draws shapes (0 and 1 included, sizes off the SIMD width and block sizes),
memory layouts (Fortran order, sliced steps, negative strides, transposes,
misaligned buffers, zero strides), float32/float64, a SIMD level for the native modules,
and runs every available variant on 1 and 2 threads through the public entry
point (so the Python validation and the native kernel are exercised together)
against the ``"reference"`` variant:

* results agree with the reference within a per-dtype tolerance (for matmul
  and column sums a rounding-error bound scaled by ``|a| @ |b|`` or
  ``sum |x|``, elsewhere rtol/atol);
* native variants (c, cython, numba) give bitwise the same result on 1 and 2
  threads (numpy's BLAS is only held to the tolerance: OpenBLAS splits work
  by thread count);
* inputs are never modified, outputs keep their layout.

Examples are derandomized so CI is reproducible.  ``.ci/sanitize`` runs this
file under ASan/UBSan with ``FASTNN_SANITIZED=1``: the Numba variants are
skipped there (its JIT is slow under ASan) and torch is never imported.

``-s`` prints how many examples each family ran (``EXAMPLES``).
"""
import contextlib
import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastnn
from fastnn import kernels as K

SANITIZED = os.environ.get("FASTNN_SANITIZED") == "1"
DTYPES = (np.float32, np.float64)
EPS = {np.float32: float(np.finfo(np.float32).eps), np.float64: float(np.finfo(np.float64).eps)}
EXAMPLES = {}

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _variants(family):
    """Available non-reference variants, without loading Numba when sanitized."""
    names = K.variants(family, available_only=False)
    if SANITIZED:
        names = [n for n in names if n != "numba"]
    return [n for n in names if n != "reference" and K._registry.available(family, n)]


VARIANTS = {f: _variants(f) for f in ("matmul", "xent", "elementwise", "reduce", "optim")}
# bitwise 1-vs-2-thread agreement is promised by our own kernels, not by numpy's BLAS
THREAD_EXACT = ("c", "cython", "numba")


def _count(family):
    EXAMPLES[family] = EXAMPLES.get(family, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    print("\nkernel fuzz examples:", dict(sorted(EXAMPLES.items())),
          "total", sum(EXAMPLES.values()))


@contextlib.contextmanager
def simd(level):
    """Set every loaded native module to SIMD ``level`` (0 scalar, 1 AVX2) and restore.

    Done on the modules directly (not ``K.set_simd_level``), which would load
    every registered variant, Numba included."""
    mods = [m for n, m in list(sys.modules.items())
            if n.startswith("fastnn._ext.") and hasattr(m, "set_simd_level")]
    old = [m.simd_level() for m in mods]
    for m in mods:
        m.set_simd_level(level)
    try:
        yield
    finally:
        for m, lvl in zip(mods, old):
            m.set_simd_level(lvl)


def run_variants(family, fn, level):
    """``fn(variant)`` for the reference once and every variant on 1 and 2 threads.

    Returns (reference result, {(variant, threads): result}).  Native modules
    run on SIMD ``level``."""
    want = fn("reference")
    got = {}
    with simd(level):
        for name in VARIANTS[family]:
            for nt in (1, 2):
                with fastnn.threads(nt):
                    got[(name, nt)] = fn(name)
    return want, got


def check_threads_equal(got):
    """Our native kernels: 1 and 2 threads give the same bits."""
    for (name, nt), res in got.items():
        if nt == 2 and name in THREAD_EXACT:
            one = got[(name, 1)]
            for a, b in zip(_as_tuple(one), _as_tuple(res)):
                np.testing.assert_array_equal(a, b, err_msg=f"{name}: 1 vs 2 threads differ")


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


# ------------------------------------------------------------------ layouts

SIZES = st.one_of(st.sampled_from([0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33]),
                  st.integers(0, 80))
LAYOUTS = ("C", "F", "step", "neg", "negstep", "T", "misaligned", "bcast")


def make_array(rng, shape, dtype, layout, scale=1.0):
    """A (rows, cols) array of ``dtype`` with values ~ N(0, scale) in the given memory layout."""
    r, c = shape
    vals = (rng.standard_normal((r, c)) * scale).astype(dtype)
    if layout == "C":
        return vals
    if layout == "F":
        return np.asfortranarray(vals)
    if layout == "bcast":                      # one row repeated: row stride 0, read-only
        return np.broadcast_to(vals[:1] if r else vals, (r, c))
    if layout == "step":                       # every 2nd row, every 3rd column of a bigger array
        base = np.full((2 * r, 3 * c), np.nan, dtype)
        view = base[::2, ::3]
    elif layout == "neg":                      # both strides negative
        base = np.full((r, c), np.nan, dtype)
        view = base[::-1, ::-1]
    elif layout == "negstep":                  # negative row step of 2, columns reversed
        base = np.full((2 * r, c + 1), np.nan, dtype)
        view = base[::-2, c::-1][:, :c] if c else base[::-2, :0]
    elif layout == "T":                        # a transposed C array (Fortran-like strides)
        base = np.full((c, r), np.nan, dtype)
        view = base.T
    elif layout == "misaligned":               # data one byte off alignment (the API copies it)
        item = np.dtype(dtype).itemsize
        raw = np.zeros(r * c * item + 1, np.uint8)
        view = raw[1:].view(dtype).reshape(r, c)
    else:
        raise ValueError(layout)
    assert view.shape == (r, c), (layout, view.shape, (r, c))
    view[...] = vals
    return view


def misaligned(v):
    """A copy of the 1-D array ``v`` whose data starts one byte off alignment."""
    raw = np.zeros(v.size * v.itemsize + 1, np.uint8)
    out = raw[1:].view(v.dtype)
    out[...] = v
    return out


def make_out(rng, shape, dtype, layout):
    """A writable output array in ``layout`` filled with NaN (so unwritten cells show)."""
    if layout is None:
        return None
    out = make_array(rng, shape, dtype, layout)
    out[...] = np.nan
    return out


# ------------------------------------------------------------------ matmul

@FUZZ
@given(m=st.one_of(SIZES, st.sampled_from([71, 72, 73, 143, 145, 150])),      # MC: 144 / 72
       k=st.one_of(SIZES, st.sampled_from([319, 320, 321, 641])),             # KC <= 320
       n=SIZES, dtype=st.sampled_from(DTYPES),
       trans_a=st.booleans(), trans_b=st.booleans(),
       layout_a=st.sampled_from(LAYOUTS), layout_b=st.sampled_from(LAYOUTS),
       out_layout=st.sampled_from([None, "C", "F", "step", "neg", "T"]),
       bias=st.sampled_from([None, "C", "misaligned"]), relu=st.booleans(),
       level=st.sampled_from([0, 1]), seed=st.integers(0, 2**32 - 1))
def test_matmul_fuzz(m, k, n, dtype, trans_a, trans_b, layout_a, layout_b, out_layout, bias,
                     relu, level, seed):
    """act(op(a) @ op(b) + bias) for every variant, layout and thread count vs the reference."""
    _count("matmul")
    rng = np.random.default_rng(seed)
    a = make_array(rng, (k, m) if trans_a else (m, k), dtype, layout_a)
    b = make_array(rng, (n, k) if trans_b else (k, n), dtype, layout_b)
    bvec = rng.standard_normal(n).astype(dtype) if bias else None
    if bias == "misaligned":
        bvec = misaligned(bvec)
    a_before, b_before = a.copy(), b.copy()

    def call(variant):
        out = make_out(rng, (m, n), dtype, out_layout)
        res = K.matmul(a, b, trans_a=trans_a, trans_b=trans_b, out=out, bias=bvec,
                       activation="relu" if relu else None, variant=variant)
        if out is not None:
            assert res is out, f"{variant}: out= must be returned"
        assert res.shape == (m, n) and res.dtype == dtype
        return res.copy()

    want, got = run_variants("matmul", call, level)
    # Rounding bound of a length-k dot product: |err| <= k * eps * (|a| @ |b|) (+ |bias| * eps);
    # relu is 1-Lipschitz so the same bound holds after it.
    a64 = np.abs(a.astype(np.float64))
    b64 = np.abs(b.astype(np.float64))
    mag = (a64.T if trans_a else a64) @ (b64.T if trans_b else b64)
    if bias:
        mag = mag + np.abs(bvec.astype(np.float64))
    bound = 2.0 * (k + 2) * EPS[dtype] * mag + np.finfo(dtype).tiny
    for key, res in got.items():
        err = np.abs(res.astype(np.float64) - want)
        assert np.all(err <= bound), (
            f"matmul {key} {dtype.__name__} m={m} k={k} n={n} trans=({trans_a},{trans_b}) "
            f"layouts=({layout_a},{layout_b},{out_layout}) bias={bias} relu={relu} "
            f"simd={level}: max excess {np.max(err - bound) if err.size else 0}")
        if relu:
            assert np.all(res >= 0)
    check_threads_equal(got)
    np.testing.assert_array_equal(a, a_before)
    np.testing.assert_array_equal(b, b_before)


# ------------------------------------------------------------------ xent

XENT_TOL = {np.float32: dict(rtol=3e-5, atol=3e-6), np.float64: dict(rtol=1e-11, atol=1e-12)}


@FUZZ
@given(batch=SIZES, classes=st.one_of(st.sampled_from([1, 2, 3, 7, 8, 9, 10, 17]),
                                      st.integers(1, 300)),
       dtype=st.sampled_from(DTYPES), layout=st.sampled_from(LAYOUTS),
       scale=st.sampled_from([0.0, 1.0, 8.0, 300.0]), prob_labels=st.booleans(),
       with_grad=st.booleans(), grad_scale=st.sampled_from([1.0, 0.5, -2.0, 1e-3]),
       smoothing=st.sampled_from([0.0, 0.1, 1.0]), in_place=st.booleans(),
       level=st.sampled_from([0, 1]), seed=st.integers(0, 2**32 - 1))
def test_xent_fuzz(batch, classes, dtype, layout, scale, prob_labels, with_grad, grad_scale,
                   smoothing, in_place, level, seed):
    """softmax_xent (loss and fused gradient), softmax, log_softmax vs the reference."""
    _count("xent")
    rng = np.random.default_rng(seed)
    z = make_array(rng, (batch, classes), dtype, layout, scale=scale)
    if prob_labels:
        t = rng.random((batch, classes)).astype(dtype)
        t /= np.maximum(t.sum(axis=1, keepdims=True), 1e-3).astype(dtype)
    else:
        t = rng.integers(0, classes, batch)
    if layout == "misaligned":          # labels too: int64 indices or probability rows
        t = misaligned(t.reshape(-1)).reshape(t.shape)
    z_before = z.copy()

    def call(variant):
        d = np.full((batch, classes), np.nan, dtype) if with_grad else None
        losses = K.softmax_xent(z, t, dlogits=d, grad_scale=grad_scale,
                                label_smoothing=smoothing, variant=variant)
        if in_place:
            sm = z.copy(order="C")
            K.softmax(sm, out=sm, variant=variant)
            lsm = z.copy(order="C")
            K.log_softmax(lsm, out=lsm, variant=variant)
        else:
            sm = K.softmax(z, variant=variant)
            lsm = K.log_softmax(z, variant=variant)
        return (losses.copy(), sm, lsm) + ((d,) if with_grad else ())

    want, got = run_variants("xent", call, level)
    tol = dict(XENT_TOL[dtype])
    # log-softmax values grow with the logits' scale; losses add C of them
    tol["atol"] *= 1.0 + scale * max(1, classes) ** 0.5
    for key, res in got.items():
        for name, a, b in zip(("losses", "softmax", "log_softmax", "dlogits"), res, want):
            np.testing.assert_allclose(a, b, **tol, err_msg=f"xent {key} {name} {dtype.__name__} "
                                       f"B={batch} C={classes} scale={scale} simd={level}")
        assert np.all(np.isfinite(res[0])), f"{key}: finite logits gave a non-finite loss"
    check_threads_equal(got)
    np.testing.assert_array_equal(z, z_before)


# ------------------------------------------------------------------ elementwise

EW_TOL = {np.float32: dict(rtol=2e-6, atol=1e-6), np.float64: dict(rtol=1e-13, atol=1e-14)}
SPECIALS = (np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30, 88.0, -88.0, 710.0, -710.0)


@FUZZ
@given(shape=st.one_of(st.lists(st.sampled_from([0, 1, 2, 3, 5, 8, 9, 16, 17, 33]),
                               min_size=0, max_size=3),
                      st.tuples(st.sampled_from([255, 257, 1000, 4099]))),
       kind=st.sampled_from(K.elementwise.KINDS), dtype=st.sampled_from(DTYPES),
       scale=st.sampled_from([1.0, 10.0, 100.0]), n_special=st.integers(0, 4),
       strided=st.booleans(), in_place=st.booleans(), accumulate=st.booleans(),
       level=st.sampled_from([0, 1]), seed=st.integers(0, 2**32 - 1))
def test_elementwise_fuzz(shape, kind, dtype, scale, n_special, strided, in_place, accumulate,
                          level, seed):
    """activation_forward / activation_backward (with accumulate) vs the reference,
    NaN/inf/overflowing inputs included (NaN must stay NaN where the spec says so)."""
    _count("elementwise")
    rng = np.random.default_rng(seed)
    shape = tuple(shape)
    x = np.asarray(rng.standard_normal(shape) * scale).astype(dtype)    # 0-d stays an array
    if x.size and n_special:
        flat = x.reshape(-1)
        flat[rng.integers(0, x.size, n_special)] = rng.choice(SPECIALS, n_special)
    if strided and x.ndim:
        base = np.zeros(shape[:-1] + (2 * shape[-1],), dtype)
        base[..., ::2] = x
        x = base[..., ::2]
    dout = np.asarray(rng.standard_normal(shape)).astype(dtype)
    dx0 = np.asarray(rng.standard_normal(shape)).astype(dtype)
    x_before = x.copy()

    def call(variant):
        if in_place:
            y = x.copy(order="C")
            K.activation_forward(kind, y, out=y, variant=variant)
        else:
            y = K.activation_forward(kind, x, variant=variant)
        # backward from the reference's forward output, so every variant sees the same y
        y_ref = K.activation_forward(kind, x, variant="reference")
        if accumulate:
            dx = dx0.copy()
            K.activation_backward(kind, y_ref, dout, dx, accumulate=True, variant=variant)
        elif in_place:
            dx = dout.copy()
            K.activation_backward(kind, y_ref, dx, dx, variant=variant)
        else:
            dx = K.activation_backward(kind, y_ref, dout, variant=variant)
        return y, dx

    want, got = run_variants("elementwise", call, level)
    for key, (y, dx) in got.items():
        msg = f"elementwise {key} {kind} {dtype.__name__} shape={shape} simd={level}"
        assert y.shape == shape and dx.shape == shape
        np.testing.assert_allclose(y, want[0], **EW_TOL[dtype], equal_nan=True, err_msg=msg)
        np.testing.assert_allclose(dx, want[1], **EW_TOL[dtype], equal_nan=True, err_msg=msg)
    check_threads_equal(got)
    np.testing.assert_array_equal(x, x_before)


# ------------------------------------------------------------------ reduce

@FUZZ
@given(rows=st.one_of(SIZES, st.sampled_from([255, 256, 257, 513, 700])),
       cols=SIZES, dtype=st.sampled_from(DTYPES), layout=st.sampled_from(LAYOUTS),
       accumulate=st.booleans(), level=st.sampled_from([0, 1]),
       seed=st.integers(0, 2**32 - 1))
def test_reduce_fuzz(rows, cols, dtype, layout, accumulate, level, seed):
    """column_sums (with accumulate) vs the reference; bitwise equal on 1 and 2 threads."""
    _count("reduce")
    rng = np.random.default_rng(seed)
    x = make_array(rng, (rows, cols), dtype, layout)
    start = rng.standard_normal(cols).astype(dtype)
    x_before = x.copy()

    def call(variant):
        if accumulate:
            out = start.copy()
            return K.column_sums(x, out=out, accumulate=True, variant=variant)
        return K.column_sums(x, variant=variant)

    want, got = run_variants("reduce", call, level)
    mag = np.abs(x.astype(np.float64)).sum(axis=0) + (np.abs(start) if accumulate else 0)
    bound = 2.0 * (rows + 2) * EPS[dtype] * mag + np.finfo(dtype).tiny
    for key, res in got.items():
        err = np.abs(res.astype(np.float64) - want)
        assert res.shape == (cols,)
        assert np.all(err <= bound), f"column_sums {key} {dtype.__name__} {rows}x{cols} {layout}"
    check_threads_equal(got)
    np.testing.assert_array_equal(x, x_before)


# ------------------------------------------------------------------ optim

OPT_TOL = {np.float32: dict(rtol=3e-5, atol=3e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}


@FUZZ
@given(n=st.one_of(SIZES, st.sampled_from([63, 64, 65, 127, 128, 129, 1000])),
       dtype=st.sampled_from(DTYPES), kind=st.sampled_from(["sgd", "adam", "adamw"]),
       lr=st.sampled_from([0.0, 1e-3, 0.1, 1.0]), momentum=st.sampled_from([0.0, 0.5, 0.9]),
       nesterov=st.booleans(), weight_decay=st.sampled_from([0.0, 1e-4, 0.1]),
       step=st.sampled_from([1, 2, 10, 1000]), steps=st.integers(1, 3),
       level=st.sampled_from([0, 1]), seed=st.integers(0, 2**32 - 1))
def test_optim_fuzz(n, dtype, kind, lr, momentum, nesterov, weight_decay, step, steps, level,
                    seed):
    """sgd_update / adam_update over a few consecutive steps vs the reference: parameters
    and every state buffer; bitwise equal on 1 and 2 threads."""
    _count("optim")
    if kind == "sgd" and nesterov:
        assume(momentum > 0)
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(n).astype(dtype)
    # gradients away from 0 keep Adam's g / sqrt(v) well conditioned
    grads = [(rng.standard_normal(n) + np.sign(rng.standard_normal(n))).astype(dtype)
             for _ in range(steps)]
    grads_before = [g.copy() for g in grads]

    def call(variant):
        p = p0.copy()
        if kind == "sgd":
            vel = np.zeros(n, dtype)
            for g in grads:
                K.sgd_update(p, g, lr=lr, momentum=momentum, velocity=vel, nesterov=nesterov,
                             weight_decay=weight_decay, variant=variant)
            return p, vel
        m, v = np.zeros(n, dtype), np.zeros(n, dtype)
        for i, g in enumerate(grads):
            K.adam_update(p, g, m, v, step=step + i, lr=lr, weight_decay=weight_decay,
                          decoupled=kind == "adamw", variant=variant)
        return p, m, v

    want, got = run_variants("optim", call, level)
    for key, res in got.items():
        for name, a, b in zip(("params", "state1", "state2"), res, want):
            np.testing.assert_allclose(a, b, **OPT_TOL[dtype],
                                       err_msg=f"optim {key} {kind} {name} {dtype.__name__} "
                                               f"n={n} lr={lr} mom={momentum} wd={weight_decay}")
    check_threads_equal(got)
    for g, g0 in zip(grads, grads_before):
        np.testing.assert_array_equal(g, g0)
