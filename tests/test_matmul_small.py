"""The GEMM engine's small-M path (kernels/matmul/gemm_small.h, issue 14): products with
at most 16 rows and a B whose rows are contiguous stream B in place instead of packing
it.  Checked against numpy (float64 accumulation) at every SIMD level the CPU has, in
float32 and float64, on awkward shapes, every epilogue option, strided and transposed
operands, 1 and 2 threads (bitwise equal: the thread split never changes a column's
arithmetic), and against the packed engine it replaces."""
import numpy as np
import pytest

import fastnn
from fastnn import kernels as K
from fastnn.kernels import _registry

LEVELS = list(range(_registry.cpu_max_simd_level() + 1))
MS = (1, 2, 3, 4, 5, 7, 8, 12, 16)
KS = (1, 3, 10, 17, 784, 513)
NS = (1, 3, 10, 17, 513)


def _mc():
    return _registry.native_module("matmul_c")          # not built: an error, never a skip


@pytest.fixture
def restore():
    old = K.simd_level()
    yield
    K.set_simd_level(old)
    _mc().set_small_path(None)
    _mc().set_fp32_engine("auto")


def _ref(a, b, bias=None, relu=False, c_old=None, mask=None):
    acc = a.astype(np.float64) @ b.astype(np.float64)
    if c_old is not None:
        acc += c_old
    if bias is not None:
        acc += bias
    if relu:
        acc = np.maximum(acc, 0)
    if mask is not None:
        acc = np.where(mask > 0, acc, 0)
    return acc


def _close(got, want, k, dt):
    # float32: a dot product of k terms of magnitude ~1 is good to ~eps * sqrt(k) * scale
    eps = 2e-6 if dt == np.float32 else 1e-14
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got.astype(np.float64) - want).max()) / scale
    assert err <= eps * max(1.0, np.sqrt(k)) * 4, err


def _data(rng, m, k, n, dt):
    return (rng.standard_normal((m, k)).astype(dt), rng.standard_normal((k, n)).astype(dt),
            rng.standard_normal(n).astype(dt))


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_small_m_matches_numpy_every_level(level, dt, restore):
    K.set_simd_level(level)
    mc = _mc()
    rng = np.random.default_rng(level)
    for m in MS:
        for k in KS:
            for n in NS:
                a, b, bias = _data(rng, m, k, n, dt)
                want = _ref(a, b, bias, relu=True)
                outs = []
                for nt in (1, 2):
                    out = np.full((m, n), np.nan, dt)
                    mc.gemm_ex(a, b, out, bias, True, None, False, nt)
                    _close(out, want, k, dt)
                    outs.append(out)
                # the thread split never changes a column's arithmetic
                np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("level", LEVELS)
def test_the_small_path_is_taken_and_agrees_with_the_packed_engine(level, restore):
    K.set_simd_level(level)
    mc = _mc()
    for m in (1, 4, 16):
        assert mc.gemm_path(m, 784, 512, "NN").startswith("small-M")
        assert not mc.gemm_path(m, 784, 512, "NT").startswith("small-M")   # B^T: not rows
    assert not mc.gemm_path(17, 784, 512, "NN").startswith("small-M")
    rng = np.random.default_rng(7)
    for m, k, n in [(1, 784, 128), (3, 513, 17), (8, 784, 513), (16, 17, 10)]:
        a, b, bias = _data(rng, m, k, n, np.float32)
        small = mc.gemm_ex(a, b, np.empty((m, n), np.float32), bias, True, None, False, 2)
        assert mc.set_small_path(0) == 16
        try:
            assert not mc.gemm_path(m, k, n, "NN").startswith("small-M")
            packed = mc.gemm_ex(a, b, np.empty((m, n), np.float32), bias, True, None, False, 2)
        finally:
            mc.set_small_path(None)
        _close(small, packed.astype(np.float64), k, np.float32)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_every_epilogue_option_and_strided_operands(level, dt, restore):
    K.set_simd_level(level)
    mc = _mc()
    rng = np.random.default_rng(10 + level)
    for m, k, n in [(1, 17, 513), (3, 784, 10), (5, 10, 17), (7, 513, 3), (8, 3, 1), (2, 1, 40)]:
        big_a = rng.standard_normal((m, 2 * k + 1)).astype(dt)
        big_b = rng.standard_normal((k, n + 5)).astype(dt)
        a = big_a[:, 1::2]                     # strided rows of A (csa == 2)
        b = big_b[:, 2:2 + n]                  # B's rows contiguous, row stride != N
        at = np.ascontiguousarray(a.T).T       # a transposed view (rsa == 1)
        bias = rng.standard_normal(n).astype(dt)
        c_old = rng.standard_normal((m, n)).astype(dt)
        mask = rng.standard_normal((m, n)).astype(dt)
        for aa in (a, at):
            for nt in (1, 2):
                # accumulate + bias + ReLU + mask, into a C with a column stride of 2
                cbig = np.zeros((m, 2 * n), dt)
                out = cbig[:, ::2]
                out[...] = c_old
                mc.gemm_ex(aa, b, out, bias, True, mask, True, nt)
                _close(out, _ref(aa, b, bias, True, c_old, mask), k, dt)
                assert not cbig[:, 1::2].any()            # nothing written between columns
                # accumulate only, contiguous C; a transposed-view mask
                out = c_old.copy()
                mask_t = np.ascontiguousarray(mask.T).T
                mc.gemm_ex(aa, b, out, None, False, mask_t, True, nt)
                _close(out, _ref(aa, b, None, False, c_old, mask), k, dt)
                # plain product
                out = np.full((m, n), np.nan, dt)
                mc.gemm_ex(aa, b, out, None, False, None, False, nt)
                _close(out, _ref(aa, b), k, dt)


def test_relu_keeps_nan_and_negative_zero_as_the_packed_engine_does(restore):
    mc = _mc()
    for level in LEVELS:
        K.set_simd_level(level)
        a = np.array([[1.0, np.nan], [1.0, 0.0]], np.float32)
        b = np.array([[-1.0, 2.0, -3.0], [1.0, 1.0, 1.0]], np.float32)
        out = mc.gemm_ex(a, b, np.empty((2, 3), np.float32), None, True, None, False, 1)
        assert np.isnan(out[0]).all()
        np.testing.assert_array_equal(out[1], [0.0, 2.0, 0.0])


@pytest.mark.parametrize("level", LEVELS)
def test_public_matmul_with_transposes(level, restore):
    K.set_simd_level(level)
    rng = np.random.default_rng(3)
    for m, k, n in [(1, 784, 128), (4, 17, 513), (7, 513, 10)]:
        for dt in (np.float32, np.float64):
            a, b, bias = _data(rng, m, k, n, dt)
            got = K.matmul(np.ascontiguousarray(a.T), b, trans_a=True, bias=bias,
                           activation="relu", variant="c")
            _close(got, _ref(a, b, bias, True), k, dt)
            got = K.matmul(a, np.ascontiguousarray(b.T), trans_b=True, variant="c")
            _close(got, _ref(a, b), k, dt)
            with fastnn.threads(2):
                got2 = K.matmul(a, b, bias=bias, variant="c")
            with fastnn.threads(1):
                got1 = K.matmul(a, b, bias=bias, variant="c")
            np.testing.assert_array_equal(got1, got2)
            _close(got1, _ref(a, b, bias), k, dt)


def test_k_zero_and_bad_settings(restore):
    mc = _mc()
    a = np.empty((3, 0), np.float32)
    b = np.empty((0, 5), np.float32)
    bias = np.arange(5, dtype=np.float32)
    out = mc.gemm_ex(a, b, np.full((3, 5), np.nan, np.float32), bias, False, None, False, 2)
    np.testing.assert_array_equal(out, np.broadcast_to(bias, (3, 5)))
    for bad in (-1, 65, 2.0, "8"):
        with pytest.raises(ValueError, match="max_m"):
            mc.set_small_path(bad)
    assert mc.set_small_path(4) == 16
    assert mc.gemm_path(4, 10, 10).startswith("small-M")
    assert not mc.gemm_path(5, 10, 10).startswith("small-M")
