"""The elementwise family (activations): every variant and path against the
float64 reference, the reference against closed forms, threads, validation."""
import numpy as np
import pytest

import fastnn
from fastnn import kernels as K
from kernel_paths import variant_fixture
from fastnn.errors import DTypeError, ShapeError

KINDS = ("relu", "sigmoid", "tanh", "step")
FAST = [v for v in K.variants("elementwise") if v != "reference"]
# relative accuracy of the forward math; backward gets a little absolute slack
# because 1 - y*y cancels near |y| = 1 (FMA or not changes the last bits)
FWD_TOL = {np.float32: dict(rtol=1e-6, atol=1e-30), np.float64: dict(rtol=1e-14, atol=1e-300)}
BWD_TOL = {np.float32: dict(rtol=1e-6, atol=5e-7), np.float64: dict(rtol=1e-14, atol=1e-15)}
SHAPES = [(0,), (1,), (7,), (3, 5), (17, 16), (2, 3, 11), (70001,)]


variant = variant_fixture("elementwise")


def _x(shape, dtype, seed=0):
    rng = np.random.default_rng(seed + sum(shape))
    x = rng.standard_normal(shape) * 4
    flat = x.reshape(-1)
    special = [0.0, -0.0, 1e-6, -1e-6, 0.6249, 0.6251, -0.63, 9.0, -9.0, 30.0, -30.0,
               88.0, -88.0, 100.0, -100.0, 1e4, -1e4]
    flat[:len(special)] = special[:flat.size]
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_reference(variant, dtype, shape):
    x = _x(shape, dtype)
    for kind in KINDS:
        want = K.activation_forward(kind, x, variant="reference")
        got = K.activation_forward(kind, x, variant=variant)
        assert got.shape == shape and got.dtype == dtype
        np.testing.assert_allclose(got, want, **FWD_TOL[dtype], err_msg=kind)
        inplace = x.copy()
        assert K.activation_forward(kind, inplace, inplace, variant=variant) is inplace
        np.testing.assert_allclose(inplace, want, **FWD_TOL[dtype], err_msg=kind)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_reference(variant, dtype, shape):
    x = _x(shape, dtype, seed=1)
    rng = np.random.default_rng(2)
    dout = rng.standard_normal(shape).astype(dtype)
    dx0 = rng.standard_normal(shape).astype(dtype)
    for kind in KINDS:
        y = K.activation_forward(kind, x, variant="reference")
        for acc in (False, True):
            want = K.activation_backward(kind, y, dout, dx0.copy(), accumulate=acc,
                                         variant="reference")
            got = K.activation_backward(kind, y, dout, dx0.copy(), accumulate=acc,
                                        variant=variant)
            np.testing.assert_allclose(got, want, **BWD_TOL[dtype], err_msg=f"{kind} {acc}")
        want = K.activation_backward(kind, y, dout, variant="reference")
        inplace = dout.copy()
        K.activation_backward(kind, y, inplace, inplace, variant=variant)
        np.testing.assert_allclose(inplace, want, **BWD_TOL[dtype])
        into_y = y.copy()            # dx may also be y's buffer (the forward output)
        K.activation_backward(kind, into_y, dout, into_y, variant=variant)
        np.testing.assert_allclose(into_y, want, **BWD_TOL[dtype])


def test_reference_is_the_math():
    x = np.array([-2.0, -0.5, 0.0, 0.5, 3.0])
    f = lambda k: K.activation_forward(k, x, variant="reference")  # noqa: E731
    np.testing.assert_array_equal(f("relu"), [0, 0, 0, 0.5, 3])
    np.testing.assert_array_equal(f("step"), [0, 0, 0, 1, 1])
    np.testing.assert_allclose(f("sigmoid"), 1 / (1 + np.exp(-x)), rtol=1e-15)
    np.testing.assert_allclose(f("tanh"), np.tanh(x), rtol=1e-15)
    # the backward rules are the derivatives: compare with central differences
    h = 1e-6
    for kind in ("sigmoid", "tanh"):
        num = (K.activation_forward(kind, x + h, variant="reference")
               - K.activation_forward(kind, x - h, variant="reference")) / (2 * h)
        got = K.activation_backward(kind, f(kind), np.ones_like(x), variant="reference")
        np.testing.assert_allclose(got, num, rtol=1e-7)
    np.testing.assert_array_equal(K.activation_backward("relu", f("relu"), np.full(5, 2.0)),
                                  [0, 0, 0, 2, 2])
    np.testing.assert_array_equal(K.activation_backward("step", f("step"), np.ones(5)), 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_handling(variant, dtype):
    x = np.array([np.nan, 1.0, -1.0] * 5, dtype)
    for kind in ("relu", "sigmoid", "tanh"):
        y = K.activation_forward(kind, x, variant=variant)
        assert np.all(np.isnan(y[::3])) and np.all(np.isfinite(y[1::3])), kind
    assert np.all(K.activation_forward("step", x, variant=variant)[::3] == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_and_two_threads_identical(variant, dtype):
    x = _x((300, 701), dtype, seed=4)
    dout = np.ones_like(x) * 0.5
    for kind in KINDS:
        res = []
        for n in (1, 2):
            with fastnn.threads(n):
                y = K.activation_forward(kind, x, variant=variant)
                res.append((y, K.activation_backward(kind, y, dout, variant=variant)))
        np.testing.assert_array_equal(res[0][0], res[1][0])
        np.testing.assert_array_equal(res[0][1], res[1][1])


def test_strided_input_is_accepted():
    x = _x((20, 30), np.float32)
    want = K.activation_forward("tanh", x, variant="reference")
    for v in FAST:
        np.testing.assert_allclose(K.activation_forward("tanh", np.asfortranarray(x), variant=v),
                                   want, **FWD_TOL[np.float32])


def test_validation_errors():
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError,
                       match=r"kind must be one of \('relu', 'sigmoid', 'tanh', 'step'\)"):
        K.activation_forward("gelu", x)
    with pytest.raises(DTypeError, match="x must be float32 or float64"):
        K.activation_forward("relu", x.astype(np.int64))
    with pytest.raises(ShapeError, match=r"out must have shape \(3, 4\)"):
        K.activation_forward("relu", x, np.zeros((4, 3), np.float32))
    with pytest.raises(DTypeError, match="out must have dtype float32"):
        K.activation_forward("relu", x, np.zeros((3, 4)))
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        K.activation_forward("relu", x, np.zeros((4, 3), np.float32).T)
    big = np.zeros(13, np.float32)
    with pytest.raises(ValueError, match="out overlaps x"):
        K.activation_forward("relu", big[:12], big[1:])
    with pytest.raises(DTypeError, match="dout must have y's dtype float32"):
        K.activation_backward("relu", x, x.astype(np.float64))
    with pytest.raises(ShapeError, match=r"dout must have y's shape \(3, 4\)"):
        K.activation_backward("relu", x, x.T)
    with pytest.raises(ValueError, match="accumulate=True needs a dx array"):
        K.activation_backward("relu", x, x.copy(), accumulate=True)
    with pytest.raises(ValueError, match="dx overlaps y"):
        big = np.zeros(13, np.float32)
        K.activation_backward("relu", big[:12], np.ones(12, np.float32), big[1:])
    with pytest.raises(ValueError, match="dx is read-only"):
        ro = np.zeros_like(x)
        ro.flags.writeable = False
        K.activation_backward("relu", x, x.copy(), ro)


def test_float32_sigmoid_tanh_accuracy_on_a_dense_grid(variant):
    """The AVX2 paths use their own exp / rational tanh: check them everywhere, not
    only at random points (relative error against float64 within 2.5e-7: as good
    as libm, which matters because backward computes 1 - y*y from y)."""
    grid = np.linspace(-40, 40, 160001)
    small = np.logspace(-9, 0, 5001)
    x = np.concatenate([grid, small, -small]).astype(np.float32)
    for kind in ("sigmoid", "tanh"):
        want = K.activation_forward(kind, x.astype(np.float64), variant="reference")
        got = K.activation_forward(kind, x, variant=variant)
        # below ~1e-38 sigmoid's true value is subnormal; the vector exp flushes it to 0
        np.testing.assert_allclose(got, want, rtol=2.5e-7, atol=2e-38, err_msg=kind)
