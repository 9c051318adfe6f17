"""The batch-normalisation kernels (kernels/elementwise/batchnorm.c) against their
numpy reference (float64), and BatchNorm2D on top of them.

The C kernel sums in blocks of 256 rows in the element type and adds the block
sums in float64 in block order, so its results match the float64 reference to a
few ulps of the element type, and are bitwise the same for any thread count and
at every SIMD level that vectorises the same way (the AVX2 and baseline bodies
are one loop; see the test of levels)."""
import numpy as np
import pytest

import fastnn
import fastnn.kernels as K
from fastnn.errors import DTypeError, ShapeError
from fastnn.kernels.elementwise import batchnorm_backward, batchnorm_forward
from fastnn.layers import BatchNorm2D

SHAPES = [(1, 1), (2, 3), (7, 5), (255, 16), (256, 16), (257, 17), (1000, 33),
          (128 * 13 * 13, 16), (64, 512)]
TOL = {np.float32: 3e-6, np.float64: 1e-13}


def _data(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(3.0, 2.0, shape).astype(dtype)     # an offset mean: the centred pass matters
    c = shape[1]
    return (x, rng.normal(1.0, 0.3, c).astype(dtype), rng.normal(0.0, 1.0, c).astype(dtype),
            rng.standard_normal(shape).astype(dtype))


def _close(got, want, scale, tol, what):
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    err = np.max(diff / np.maximum(np.asarray(scale, np.float64), 1e-300))
    assert err <= tol, f"{what}: error {err:.2e} > {tol:.0e}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_c_matches_reference_training(dtype, shape):
    x, g, b, dy = _data(shape, dtype, sum(shape))
    m, c = shape
    res = {}
    for v in ("reference", "c"):
        xhat = np.empty_like(x)
        y, mean, var, inv = batchnorm_forward(x, g, b, 1e-5, xhat=xhat, variant=v)
        dx, sdy, sdyx = batchnorm_backward(dy, xhat, g, inv, variant=v)
        res[v] = dict(y=y, mean=mean, var=var, inv=inv, xhat=xhat, dx=dx, sdy=sdy, sdyx=sdyx)
    r, k = res["reference"], res["c"]
    tol = TOL[dtype]
    # sums are compared relative to the sum of the magnitudes of their terms
    _close(k["mean"], r["mean"], np.abs(x).mean(axis=0), tol, "mean")
    _close(k["var"], r["var"], r["var"] + np.abs(x - r["mean"]).mean(axis=0) ** 2 + 1e-30, tol,
           "var")
    _close(k["inv"], r["inv"], r["inv"], tol, "inv_std")
    _close(k["xhat"], r["xhat"], 1 + np.abs(r["xhat"]), 4 * tol, "xhat")
    _close(k["y"], r["y"], 1 + np.abs(r["y"]), 4 * tol, "y")
    _close(k["sdy"], r["sdy"], np.abs(dy).sum(axis=0), tol, "sum dy")
    _close(k["sdyx"], r["sdyx"], np.abs(dy * r["xhat"]).sum(axis=0), 4 * tol, "sum dy xhat")
    dxscale = np.abs(g * r["inv"]) * (np.abs(dy) + np.abs(dy).mean(axis=0)
                                      + np.abs(r["xhat"]) * np.abs(dy * r["xhat"]).mean(axis=0))
    _close(k["dx"], r["dx"], dxscale + 1e-30, 8 * tol, "dx")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_c_matches_reference_eval(dtype):
    x, g, b, dy = _data((300, 7), dtype, 3)
    rm = np.linspace(-1, 1, 7)
    rv = np.linspace(0.5, 2, 7)
    out = {}
    for v in ("reference", "c"):
        xhat = np.empty_like(x)
        y, mean, var, inv = batchnorm_forward(x, g, b, 1e-3, training=False, mean=rm, var=rv,
                                              xhat=xhat, variant=v)
        np.testing.assert_array_equal(mean, rm)
        np.testing.assert_array_equal(var, rv)
        dx, _, _ = batchnorm_backward(dy, xhat, g, inv, batch_stats=False, variant=v)
        out[v] = (y, dx)
    for a, b_ in zip(out["c"], out["reference"]):
        np.testing.assert_allclose(a, b_, rtol=4 * TOL[dtype], atol=4 * TOL[dtype])
    # running statistics: dx is dy scaled per channel, nothing subtracted
    np.testing.assert_allclose(out["c"][1], dy * (g / np.sqrt(rv + 1e-3)).astype(dtype),
                               rtol=4 * TOL[dtype])


@pytest.mark.parametrize("level", ["scalar", "avx2", "avx512"])
def test_same_bits_for_any_thread_count(level, restore_level):
    """Block partials are reduced in block order: the thread count never changes the
    bits, at any SIMD level.  Across levels the AVX2 body contracts multiply-adds
    into FMAs, so the levels agree to rounding, not bitwise."""
    x, g, b, dy = _data(((1 << 21) // 16 + 3, 16), np.float32, 5)   # > BN_PAR_MIN elements
    def run():
        xhat = np.empty_like(x)
        y, mean, var, inv = batchnorm_forward(x, g, b, xhat=xhat, variant="c")
        dx, s1, s2 = batchnorm_backward(dy, xhat, g, inv, variant="c")
        return y, mean, var, dx, s1, s2
    K.set_simd_level(level)
    with fastnn.threads(1):
        want = run()
    with fastnn.threads(2):
        got = run()
    for a, b_ in zip(got, want):
        np.testing.assert_array_equal(a, b_)
    K.set_simd_level("scalar")
    with fastnn.threads(2):
        base = run()
    for a, b_ in zip(got, base):
        np.testing.assert_allclose(a, b_, rtol=1e-5, atol=1e-5)


def test_in_place_and_non_contiguous_input():
    x, g, b, dy = _data((64, 6), np.float64, 7)
    wide = np.zeros((64, 12))
    wide[:, ::2] = x                                   # a strided view: copied first
    y_ref, _, _, inv = batchnorm_forward(x, g, b, variant="reference")
    y, _, _, _ = batchnorm_forward(wide[:, ::2], g, b)
    np.testing.assert_allclose(y, y_ref, rtol=1e-13, atol=1e-13)
    z = x.copy()
    out, _, _, _ = batchnorm_forward(z, g, b, out=z)  # in place
    assert out is z
    np.testing.assert_allclose(z, y_ref, rtol=1e-13, atol=1e-13)
    g2 = dy.copy()
    dx, _, _ = batchnorm_backward(g2, y_ref, g, inv, dx=g2)
    assert dx is g2


def test_constant_channel_is_finite():
    x = np.ones((50, 3), np.float32)
    y, mean, var, inv = batchnorm_forward(x, np.ones(3), np.zeros(3), 1e-5)
    assert np.all(var == 0) and np.all(np.isfinite(inv)) and np.all(y == 0)


def test_bad_input():
    x = np.ones((4, 3), np.float32)
    with pytest.raises(ShapeError, match="2-D"):
        batchnorm_forward(np.ones((4, 3, 2), np.float32), np.ones(3), np.zeros(3))
    with pytest.raises(ShapeError, match=r"gamma must have shape \(3,\)"):
        batchnorm_forward(x, np.ones(4), np.zeros(3))
    with pytest.raises(DTypeError, match="float32 or float64"):
        batchnorm_forward(np.ones((4, 3), np.int32), np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match="running statistics"):
        batchnorm_forward(x, np.ones(3), np.zeros(3), training=False)
    with pytest.raises(ValueError, match="var must be >= 0"):
        batchnorm_forward(x, np.ones(3), np.zeros(3), training=False, mean=np.zeros(3),
                          var=-np.ones(3))
    with pytest.raises(ValueError, match="eps"):
        batchnorm_forward(x, np.ones(3), np.zeros(3), eps=-1.0)
    with pytest.raises(ShapeError, match="xhat must match dy"):
        batchnorm_backward(x, np.ones((5, 3), np.float32), np.ones(3), np.ones(3))
    with pytest.raises(ShapeError, match="dx must have shape"):
        batchnorm_backward(x, x, np.ones(3), np.ones(3), dx=np.ones((3, 3), np.float32))


def test_layer_gradients_match_finite_differences():
    """BatchNorm2D on the kernels: d(sum(w * y))/dx, dgamma, dbeta against central
    differences in float64, training mode."""
    rng = np.random.default_rng(11)
    x = rng.normal(1.0, 2.0, (3, 4, 5, 2))
    w = rng.standard_normal(x.shape)
    bn = BatchNorm2D(2, dtype=np.float64)
    bn.gamma.data[...] = [1.5, -0.7]
    bn.beta.data[...] = [0.2, 0.3]

    def loss(xv):
        b2 = BatchNorm2D(2, dtype=np.float64)
        b2.gamma.data[...] = bn.gamma.data
        b2.beta.data[...] = bn.beta.data
        return float(np.sum(w * b2.forward(xv)))

    bn.forward(x)
    bn.gamma.grad[...] = 0
    bn.beta.grad[...] = 0
    dx = bn.backward(w)
    h = 1e-6
    for idx in [(0, 0, 0, 0), (2, 3, 4, 1), (1, 2, 2, 0)]:
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        assert abs((loss(xp) - loss(xm)) / (2 * h) - dx[idx]) < 1e-6
    np.testing.assert_allclose(bn.beta.grad, w.reshape(-1, 2).sum(axis=0), rtol=1e-12)
    xhat = (x - x.mean(axis=(0, 1, 2))) / np.sqrt(x.var(axis=(0, 1, 2)) + 1e-5)
    np.testing.assert_allclose(bn.gamma.grad, (w * xhat).reshape(-1, 2).sum(axis=0),
                               rtol=1e-10)
