"""The dropout kernel (kernels/elementwise/dropout.c) against its numpy reference.

The mask is a keyed hash of each element's index: the C kernel must give the
reference's mask bit for bit, at every SIMD level and thread count, and the
outputs to the last bit (one multiply per element in the array's dtype)."""
import numpy as np
import pytest

import fastnn
import fastnn.kernels as K
from fastnn.errors import DTypeError, ShapeError
from fastnn.kernels.elementwise import dropout_backward, dropout_forward, dropout_threshold
from fastnn.kernels.elementwise import reference as R
from fastnn.layers import Dropout

SIZES = [(1,), (7,), (3, 5), (128, 1600), (16385,), (2, 65537), (0, 4)]
KEYS = [0, 1, 0x9E3779B97F4A7C15, (1 << 64) - 1]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SIZES)
@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 0.999])
def test_c_equals_reference(dtype, shape, rate):
    rng = np.random.default_rng(abs(hash((shape, rate))) % 1000)
    x = rng.standard_normal(shape).astype(dtype)
    for key in KEYS:
        y_ref, m_ref = dropout_forward(x, rate, key, variant="reference")
        y_c, m_c = dropout_forward(x, rate, key, variant="c")
        np.testing.assert_array_equal(m_c, m_ref)
        np.testing.assert_array_equal(y_c, y_ref)
        dy = rng.standard_normal(shape).astype(dtype)
        np.testing.assert_array_equal(dropout_backward(dy, m_c, rate, variant="c"),
                                      dropout_backward(dy, m_ref, rate, variant="reference"))


@pytest.mark.parametrize("level", ["scalar", "avx2", "avx512"])
@pytest.mark.parametrize("threads", [1, 2])
def test_mask_independent_of_simd_level_and_threads(level, threads, restore_level):
    x = np.random.default_rng(1).standard_normal((300, 1000)).astype(np.float32)
    want_y, want_m = dropout_forward(x, 0.3, 12345, variant="reference")
    K.set_simd_level(level)
    with fastnn.threads(threads):
        y, m = dropout_forward(x, 0.3, 12345, variant="c")
    np.testing.assert_array_equal(m, want_m)
    np.testing.assert_array_equal(y, want_y)


def test_in_place_and_non_contiguous_input():
    base = np.random.default_rng(2).standard_normal((40, 30))
    x = base[::2, 1::3]                       # strided view: copied to contiguous first
    want, m = dropout_forward(np.ascontiguousarray(x), 0.4, 99, variant="reference")
    y, m2 = dropout_forward(x, 0.4, 99)
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(m2, m)
    z = np.ascontiguousarray(x)
    out, _ = dropout_forward(z, 0.4, 99, out=z)
    assert out is z
    np.testing.assert_array_equal(z, want)
    g = np.ones_like(z)
    assert dropout_backward(g, m, 0.4, dx=g) is g
    np.testing.assert_allclose(g, m / 0.6)


@pytest.mark.parametrize("rate", [0.05, 0.25, 0.5, 0.9])
def test_keep_rate_and_independence(rate):
    """The mask is Bernoulli(1 - rate): its mean within 5 sigma of 1 - rate, no
    correlation between neighbours or between consecutive keys (5 sigma)."""
    n = 1 << 20
    x = np.ones(n, np.float32)
    _, a = dropout_forward(x, rate, 1000)
    _, b = dropout_forward(x, rate, 1001)
    p, sd = 1 - rate, np.sqrt(rate * (1 - rate) / n)
    assert abs(a.mean() - p) < 5 * sd
    af, bf = a.astype(np.float64) - p, b.astype(np.float64) - p
    var = rate * (1 - rate)
    for u, v in ((af[:-1], af[1:]), (af, bf), (af[:-128], af[128:])):
        corr = float(np.mean(u * v)) / var
        assert abs(corr) < 5 / np.sqrt(n), corr


def test_threshold():
    assert dropout_threshold(0.0) == 0
    assert dropout_threshold(0.5) == 1 << 31
    assert dropout_threshold(np.nextafter(1.0, 0.0)) == (1 << 32) - 1
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\)"):
        dropout_threshold(1.0)


def test_bad_input():
    x = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\)"):
        dropout_forward(x, -0.1, 1)
    with pytest.raises(ValueError, match="key must be in"):
        dropout_forward(x, 0.5, -1)
    with pytest.raises(TypeError, match="key must be an integer"):
        dropout_forward(x, 0.5, 1.5)
    with pytest.raises(DTypeError, match="x must be float32 or float64"):
        dropout_forward(x.astype(np.int32), 0.5, 1)
    with pytest.raises(ShapeError, match="mask"):
        dropout_forward(x, 0.5, 1, mask=np.empty((3, 4), np.uint8))
    _, m = dropout_forward(x, 0.5, 1)
    with pytest.raises(DTypeError, match="mask must be a uint8"):
        dropout_backward(x, m.astype(bool), 0.5)
    with pytest.raises(ShapeError, match="mask must have dy's shape"):
        dropout_backward(x, m[:2], 0.5)
    with pytest.raises(ValueError, match="overlap"):
        dropout_forward(x, 0.5, 1, out=x, mask=x.reshape(-1).view(np.uint8)[:12].reshape(4, 3))


def test_layer_masks_follow_the_seed_and_the_generator_state():
    x = np.ones((64, 50), np.float32)
    a, b = Dropout(0.5, seed=3), Dropout(0.5, seed=3)
    ya1, ya2 = a.forward(x).copy(), a.forward(x).copy()
    assert not np.array_equal(ya1, ya2)                  # a new key every step
    np.testing.assert_array_equal(b.forward(x), ya1)
    state = b._rng.bit_generator.state                   # what checkpoints save
    c = Dropout(0.5, seed=99)
    c._rng.bit_generator.state = state
    np.testing.assert_array_equal(c.forward(x), ya2)


def test_layer_reuses_its_mask_buffer():
    d = Dropout(0.2, seed=0)
    x = np.ones((32, 10), np.float32)
    d.forward(x)
    buf = d._mask
    d.forward(x)
    assert d._mask is buf
    d.forward(np.ones((5, 10), np.float32))           # a last, smaller batch
    assert d._mask.shape == (5, 10)
