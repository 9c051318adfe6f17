"""The reduce family (column sums / bias gradient): every variant and path
against the float64 reference, bit-identical across thread counts."""
import numpy as np
import pytest

import fastnn
from fastnn import kernels as K
from kernel_paths import variant_fixture
from fastnn.errors import DTypeError, ShapeError

FAST = [v for v in K.variants("reduce") if v != "reference"]
TOL = {np.float32: dict(rtol=2e-5, atol=1e-4), np.float64: dict(rtol=1e-12, atol=1e-11)}
# 0 rows, 1, primes, one past the row block (256), many blocks with few columns
# (the scratch-partials path), wide rows with a partial column tile (256)
SHAPES = [(0, 5), (1, 1), (7, 13), (256, 3), (257, 10), (1000, 10), (3000, 7), (513, 257),
          (64, 1000), (2, 0)]


variant = variant_fixture("reduce")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B,N", SHAPES)
def test_column_sums_match_reference(variant, dtype, B, N):
    x = np.random.default_rng(B * 7 + N).standard_normal((B, N)).astype(dtype)
    want = K.column_sums(x, variant="reference")
    got = K.column_sums(x, variant=variant)
    assert got.shape == (N,) and got.dtype == dtype
    np.testing.assert_allclose(got, want, **TOL[dtype])
    np.testing.assert_allclose(want, x.astype(np.float64).sum(axis=0), rtol=1e-6, atol=1e-6)
    acc = np.linspace(-1, 1, N).astype(dtype)
    K.column_sums(x, acc, accumulate=True, variant=variant)
    np.testing.assert_allclose(acc, want + np.linspace(-1, 1, N), **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B,N", [(1000, 10), (2000, 300), (300, 1000)])
def test_same_bits_for_any_thread_count(variant, dtype, B, N):
    x = (np.random.default_rng(9).standard_normal((B, N)) * 100).astype(dtype)
    res = []
    for n in (1, 2, 3):
        with fastnn.threads(n):
            res.append(K.column_sums(x, variant=variant))
    np.testing.assert_array_equal(res[0], res[1])
    np.testing.assert_array_equal(res[0], res[2])


def test_native_variants_agree_bitwise():
    """c and numba perform the same additions in the same order (and the AVX2
    path only vectorises across columns), so they agree to the bit."""
    x = np.random.default_rng(3).standard_normal((1500, 77)).astype(np.float32)
    res = []
    for v in FAST:
        for level in (0, 1):
            K.set_simd_level(level)
            res.append(K.column_sums(x, variant=v))
    K.set_simd_level(1)
    for r in res[1:]:
        np.testing.assert_array_equal(res[0], r)


def test_strided_input():
    x = np.random.default_rng(1).standard_normal((40, 30)).astype(np.float32)
    want = K.column_sums(x, variant="reference")
    for v in FAST:
        np.testing.assert_allclose(K.column_sums(np.asfortranarray(x), variant=v), want,
                                   **TOL[np.float32])
        np.testing.assert_allclose(K.column_sums(np.repeat(x, 2, axis=1)[:, ::2], variant=v),
                                   want, **TOL[np.float32])


def test_validation_errors():
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(ShapeError, match="x must be 2-D"):
        K.column_sums(x[0])
    with pytest.raises(DTypeError, match="x must be float32 or float64"):
        K.column_sums(x.astype(np.int32))
    with pytest.raises(ShapeError, match=r"out must have shape \(3,\)"):
        K.column_sums(x, np.zeros(4, np.float32))
    with pytest.raises(DTypeError, match="out must have dtype float32"):
        K.column_sums(x, np.zeros(3))
    with pytest.raises(ValueError, match="out overlaps x"):
        K.column_sums(x, x[0])
    with pytest.raises(ValueError, match="accumulate=True needs an out array"):
        K.column_sums(x, accumulate=True)
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        K.column_sums(x, np.zeros(6, np.float32)[::2])
