"""bf16 convolutions (issue 12): the three conv kernels with precision="bf16" against the
numpy reference (bf16-rounded inputs, float64 sums) at every SIMD level, and Conv2D /
fit(precision="bf16") on a convnet.  Layers with one input channel stay float32.

Bound: the kernel and the reference multiply the same bf16 values exactly (a product of two
bf16 numbers fits in float32), so they differ only by float32 summation order: within
K * 2**-24 * sum|terms|, which the tests take as 2e-5 of the output's largest magnitude for
these K (<= 800).  float32 products of unrounded inputs differ from the reference by ~1e-3
of it, which the last test checks, so the bound separates the two."""
import numpy as np
import pytest

import fastnn
import fastnn.kernels as K
from fastnn.errors import DTypeError
from fastnn.kernels import conv2d_backward_data, conv2d_backward_weights, conv2d_forward
from fastnn.layers import Conv2D, Dense, Flatten, MaxPool2D
from fastnn.losses import SoftmaxCrossEntropy
from fastnn.optim import Adam

LEVELS = ["scalar", "avx2", "avx512", "avx512_bf16"]

# (N, H, W, Cin, KH, KW, Cout, stride, padding): the presets' layers (one input channel:
# the direct paths in fp32), 1x1, stride 2, padding, one image, odd sizes
SHAPES = [
    (3, 28, 28, 1, 3, 3, 32, 1, 0),
    (2, 28, 28, 1, 5, 5, 6, 1, 2),
    (2, 13, 13, 32, 3, 3, 64, 1, 0),
    (2, 14, 14, 6, 5, 5, 16, 1, 0),
    (1, 9, 7, 3, 5, 5, 6, 2, 2),
    (2, 5, 6, 4, 1, 1, 7, 1, 0),
    (1, 8, 8, 5, 7, 7, 3, 1, 3),
    (3, 11, 11, 1, 3, 3, 16, 2, 1),
]
BOUND = 2e-5


def _case(shape, seed=0):
    N, H, W, Cin, KH, KW, Cout, st, pad = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, H, W, Cin)).astype(np.float32)
    w = rng.standard_normal((KH, KW, Cin, Cout)).astype(np.float32)
    b = rng.standard_normal(Cout).astype(np.float32)
    return x, w, b, (st, st), (pad,) * 4


def _close(got, want, bound=BOUND):
    scale = max(float(np.abs(want).max()), 1e-30)
    err = float(np.abs(np.asarray(got, np.float64) - want).max()) / scale
    assert err <= bound, err
    return err


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("shape", SHAPES)
def test_bf16_conv_kernels_match_the_reference(shape, level, restore_level):
    x, w, b, st, pd = _case(shape)
    want_y = conv2d_forward(x, w, b, st, pd, activation="relu", precision="bf16",
                            variant="reference")
    dy = np.random.default_rng(1).standard_normal(want_y.shape).astype(np.float32)
    mask = (np.random.default_rng(2).random(x.shape) > 0.3).astype(np.float32)
    want_dx = conv2d_backward_data(dy, w, x.shape, st, pd, mask=mask, precision="bf16",
                                   variant="reference")
    want_dw, want_db = np.zeros_like(w), np.zeros_like(b)
    conv2d_backward_weights(x, dy, w.shape, st, pd, want_dw, want_db, accumulate=False,
                            precision="bf16", variant="reference")
    K.set_simd_level(level)
    for threads in (1, 2):
        with fastnn.threads(threads):
            y = conv2d_forward(x, w, b, st, pd, activation="relu", precision="bf16")
            dx = conv2d_backward_data(dy, w, x.shape, st, pd, mask=mask, precision="bf16")
            dw, db = np.zeros_like(w), np.zeros_like(b)
            conv2d_backward_weights(x, dy, w.shape, st, pd, dw, db, accumulate=False,
                                    precision="bf16")
        _close(y, want_y)
        _close(dx, want_dx)
        _close(dw, want_dw)
        np.testing.assert_allclose(db, want_db, rtol=1e-5)      # dbias: fp32 sums of dy


@pytest.mark.parametrize("shape", [sh for sh in SHAPES if sh[3] > 1])
def test_bf16_is_not_fp32(shape):
    """The bound above separates the precisions: fp32 kernels are far from the bf16 spec."""
    x, w, b, st, pd = _case(shape)
    want = conv2d_forward(x, w, b, st, pd, precision="bf16", variant="reference")
    got32 = conv2d_forward(x, w, b, st, pd)
    err = float(np.abs(got32 - want).max()) / float(np.abs(want).max())
    assert err > 20 * BOUND, err


@pytest.mark.parametrize("shape", [sh for sh in SHAPES if sh[3] == 1])
def test_one_input_channel_stays_fp32(shape):
    """A first layer (Cin = 1) runs its float32 direct kernels under precision='bf16'."""
    x, w, b, st, pd = _case(shape)
    y32 = conv2d_forward(x, w, b, st, pd)
    np.testing.assert_array_equal(conv2d_forward(x, w, b, st, pd, precision="bf16"), y32)
    dy = np.random.default_rng(1).standard_normal(y32.shape).astype(np.float32)
    dw32, dw16 = np.zeros_like(w), np.zeros_like(w)
    conv2d_backward_weights(x, dy, w.shape, st, pd, dw32)
    conv2d_backward_weights(x, dy, w.shape, st, pd, dw16, precision="bf16")
    np.testing.assert_array_equal(dw16, dw32)


def test_bad_precision():
    x, w, b, st, pd = _case(SHAPES[5])
    with pytest.raises(ValueError, match="precision must be one of"):
        conv2d_forward(x, w, b, st, pd, precision="fp16")
    with pytest.raises(DTypeError, match="needs float32"):
        conv2d_forward(x.astype(np.float64), w.astype(np.float64), None, st, pd,
                       precision="bf16")
    layer = Conv2D(4, 7, 1, dtype=np.float64)
    layer.precision = "bf16"
    with pytest.raises(DTypeError, match="Conv2D: precision='bf16' needs a float32 layer"):
        layer.forward(x.astype(np.float64))


def _convnet(seed):
    return fastnn.Sequential([Conv2D(1, 8, 3, activation="relu"), MaxPool2D(2),
                              Conv2D(8, 16, 3, activation="relu"), MaxPool2D(2), Flatten(),
                              Dense(400, 10)], seed=seed)


def test_fit_bf16_runs_the_convolutions_in_bf16_and_restores_fp32():
    rng = np.random.default_rng(0)
    x = rng.random((256, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 256)
    runs = {}
    for precision in ("fp32", "bf16"):
        m = _convnet(3)
        h = m.fit(x, y, epochs=1, batch_size=64, loss=SoftmaxCrossEntropy(),
                  optimizer=Adam(m, lr=1e-3), verbose=0, seed=0, precision=precision)
        assert h.params["precision"] == precision
        assert all(layer.precision == "fp32" for layer in m.layers
                   if hasattr(layer, "PRECISIONS"))
        runs[precision] = m.layers[0].weight.data.copy()
    # the same steps; bf16 rounding makes the weights differ, but only a little
    diff = np.abs(runs["bf16"] - runs["fp32"]).max()
    assert 0 < diff < 0.05 * np.abs(runs["fp32"]).max()
