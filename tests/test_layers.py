"""Layers: forward values against numpy, both dtypes, configs, modes, bad calls."""
import json

import numpy as np
import pytest

from fastnn import layers as L
from fastnn.errors import DTypeError, ShapeError

TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", [None, "relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("n", [1, 7, 33])
def test_dense_forward_backward_vs_numpy(dtype, activation, n):
    rng = np.random.default_rng(n)
    layer = L.Dense(13, 9, activation=activation, init="glorot", dtype=dtype)
    layer.reset_parameters(rng)
    layer.bias.data[...] = rng.standard_normal(9)
    x = rng.standard_normal((n, 13)).astype(dtype)
    w, b = layer.weight.data.astype(np.float64), layer.bias.data.astype(np.float64)
    z = x.astype(np.float64) @ w + b
    act = {None: lambda v: v, "relu": lambda v: np.maximum(v, 0),
           "sigmoid": lambda v: 1 / (1 + np.exp(-v)), "tanh": np.tanh}[activation]
    y = layer.forward(x)
    assert y.dtype == dtype and y.shape == (n, 9)
    np.testing.assert_allclose(y, act(z), **TOL[dtype])

    dy = rng.standard_normal((n, 9)).astype(dtype)
    ya = act(z)
    dact = {None: 1.0, "relu": (ya > 0), "sigmoid": ya * (1 - ya), "tanh": 1 - ya ** 2}
    dz = dy * dact[activation]
    dx = layer.backward(dy)
    np.testing.assert_allclose(dx, dz @ w.T, **TOL[dtype])
    np.testing.assert_allclose(layer.weight.grad, x.T.astype(np.float64) @ dz, **TOL[dtype])
    np.testing.assert_allclose(layer.bias.grad, dz.sum(axis=0), **TOL[dtype])
    # input_grad=False skips dx but still accumulates dW, db
    assert layer.backward(dy, input_grad=False) is None
    np.testing.assert_allclose(layer.bias.grad, 2 * dz.sum(axis=0), **TOL[dtype])


def test_dense_dx_mask_fuses_relu_of_previous_layer():
    rng = np.random.default_rng(0)
    layer = L.Dense(6, 4, dtype=np.float64)
    x = np.maximum(rng.standard_normal((5, 6)), 0)         # a previous ReLU's output
    layer.forward(x)
    dy = rng.standard_normal((5, 4))
    fused = layer.backward(dy, dx_mask=x)
    np.testing.assert_allclose(fused, (dy @ layer.weight.data.T) * (x > 0), rtol=1e-12)


def test_dense_strided_input():
    rng = np.random.default_rng(1)
    layer = L.Dense(5, 3, dtype=np.float64)
    big = rng.standard_normal((8, 10))
    x = big[::2, ::2]                                      # non-contiguous view
    np.testing.assert_allclose(layer.forward(x),
                               x @ layer.weight.data + layer.bias.data, rtol=1e-12)


@pytest.mark.parametrize("init", ["he", "glorot", "torch", "zeros"])
def test_initializers_statistics(init):
    rng = np.random.default_rng(2)
    layer = L.Dense(400, 300, init=init, dtype=np.float64)
    layer.reset_parameters(rng)
    w, b = layer.weight.data, layer.bias.data
    if init == "zeros":
        assert not w.any() and not b.any()
    elif init == "he":
        assert w.std() == pytest.approx(np.sqrt(2 / 400), rel=0.02) and not b.any()
    elif init == "glorot":
        a = np.sqrt(6 / 700)
        assert np.abs(w).max() <= a and w.std() == pytest.approx(a / np.sqrt(3), rel=0.02)
    else:
        a = 1 / np.sqrt(400)
        assert np.abs(w).max() <= a and np.abs(b).max() <= a and b.std() > a / 3


def test_elementwise_and_softmax_layers():
    x = np.array([[-2.0, 0.5, 3.0]])
    np.testing.assert_allclose(L.ReLU().forward(x), [[0, 0.5, 3.0]])
    np.testing.assert_allclose(L.Sigmoid().forward(x), 1 / (1 + np.exp(-x)))
    np.testing.assert_allclose(L.Tanh().forward(x), np.tanh(x))
    sm = L.Softmax().forward(x)
    np.testing.assert_allclose(sm, np.exp(x) / np.exp(x).sum(), rtol=1e-12)
    # stable for huge logits
    big = L.Softmax().forward(np.array([[1e4, 0.0]], np.float32))
    assert np.isfinite(big).all() and big[0, 0] == 1.0


def test_dropout_statistics_and_modes():
    d = L.Dropout(0.25, seed=0)
    x = np.ones((200, 100), np.float32)
    y = d.forward(x)
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    assert y.sum() == pytest.approx(x.sum(), rel=0.02)       # inverted: mean preserved
    np.testing.assert_array_equal(d.backward(np.ones_like(x)), y)
    d.eval()
    assert d.forward(x) is x and d.backward(x) is x
    # same seed, same masks
    a = L.Dropout(0.5, seed=3).forward(x)
    b = L.Dropout(0.5, seed=3).forward(x)
    np.testing.assert_array_equal(a, b)
    assert np.array_equal(L.Dropout(0.0).forward(x), x)


def test_flatten():
    f = L.Flatten()
    x = np.zeros((3, 28, 28), np.float32)
    assert f.forward(x).shape == (3, 784)
    assert f.output_shape((3, 28, 28)) == (3, 784)
    with pytest.raises(ShapeError, match="cannot be reshaped"):
        f.backward(np.zeros((3, 5), np.float32))


@pytest.mark.parametrize("layer", [
    L.Dense(3, 2, activation="tanh", use_bias=False, init="glorot", dtype=np.float64),
    L.Dense(4, 4), L.ReLU(), L.Sigmoid(), L.Tanh(), L.Softmax(), L.Dropout(0.3, seed=5),
    L.Flatten()])
def test_config_roundtrip(layer):
    cfg = layer.get_config()
    assert cfg["class"] == type(layer).__name__
    again = L.layer_from_config(json.loads(json.dumps(cfg)))
    assert type(again) is type(layer) and again.get_config() == cfg
    assert type(layer).__name__ in repr(layer)


def test_layer_bad_calls():
    d = L.Dense(4, 3)
    with pytest.raises(DTypeError, match="must have dtype float32"):
        d.forward(np.zeros((2, 4), np.float64))
    with pytest.raises(ShapeError, match="4 features"):
        d.forward(np.zeros((2, 5), np.float32))
    with pytest.raises(ShapeError, match="2-D"):
        d.forward(np.zeros(4, np.float32))
    with pytest.raises(ShapeError, match="empty batch"):
        d.forward(np.zeros((0, 4), np.float32))
    with pytest.raises(TypeError, match="numpy array"):
        d.forward([[1, 2, 3, 4]])
    with pytest.raises(RuntimeError, match="before forward"):
        L.Dense(4, 3).backward(np.zeros((2, 3), np.float32))
    d.forward(np.zeros((2, 4), np.float32))
    with pytest.raises(ShapeError, match="3 features"):
        d.backward(np.zeros((2, 5), np.float32))
    with pytest.raises(ShapeError, match="forward batch had 2"):
        d.backward(np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="activation must be one of"):
        L.Dense(2, 2, activation="gelu")
    with pytest.raises(ValueError, match="init must be one of"):
        L.Dense(2, 2, init="orthogonal")
    with pytest.raises(ValueError, match="out_features must be a positive integer"):
        L.Dense(2, 0)
    with pytest.raises(DTypeError, match="float32 or float64"):
        L.Dense(2, 2, dtype=np.int32)
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\)"):
        L.Dropout(1.0)
    with pytest.raises(ValueError, match="rate must be"):
        L.Dropout(float("nan"))
    with pytest.raises(ShapeError, match="dout must have shape"):
        r = L.ReLU()
        r.forward(np.zeros((2, 3)))
        r.backward(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="unknown layer class 'Conv3D'"):
        L.layer_from_config({"class": "Conv3D"})
    with pytest.raises(ValueError, match="bad config for Dense"):
        L.layer_from_config({"class": "Dense", "in_features": 3})


# ============================================================================ losses

def test_loss_bad_calls():
    from fastnn import losses
    sce = losses.SoftmaxCrossEntropy()
    z = np.zeros((3, 4), np.float32)
    with pytest.raises(RuntimeError, match="backward called before the loss"):
        losses.SoftmaxCrossEntropy().backward()
    with pytest.raises(ValueError, match=r"labels\[1\] = 4 is not a class index in \[0, 4\)"):
        sce(z, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"labels\[0\] = -1"):
        sce(z, np.array([-1, 0, 1]))
    with pytest.raises(ShapeError, match="labels has 2 entries but logits has 3 rows"):
        sce(z, np.array([0, 1]))
    with pytest.raises(DTypeError, match="integer class indices"):
        sce(z, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ShapeError, match="probability labels must have the logits' shape"):
        sce(z, np.zeros((3, 5)))
    with pytest.raises(ShapeError, match="empty batch"):
        sce(np.zeros((0, 4), np.float32), np.zeros(0, int))
    with pytest.raises(DTypeError, match="float32 or float64"):
        sce(np.zeros((3, 4), np.int32), np.array([0, 1, 2]))
    with pytest.raises(ShapeError, match="2-D"):
        sce(np.zeros(4, np.float32), np.array([0]))
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\]"):
        losses.SoftmaxCrossEntropy(label_smoothing=1.5)
    with pytest.raises(ShapeError, match=r"targets must have the outputs' shape \(3, 4\)"):
        losses.MeanSquaredError()(z, np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 1\]"):
        losses.BinaryCrossEntropyWithLogits()(z, np.full((3, 4), 2.0))
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        losses.get_loss("hinge")


def test_loss_configs_and_dtypes():
    from fastnn import losses
    for name, cls in (("mse", losses.MeanSquaredError),
                      ("cross_entropy", losses.SoftmaxCrossEntropy),
                      ("bce", losses.BinaryCrossEntropyWithLogits)):
        f = losses.get_loss(name)
        assert type(f) is cls
        assert type(losses.loss_from_config(json.loads(json.dumps(f.get_config())))) is cls
    f = losses.loss_from_config({"class": "SoftmaxCrossEntropy", "label_smoothing": 0.1})
    assert f.label_smoothing == 0.1
    rng = np.random.default_rng(0)
    z64 = rng.standard_normal((5, 3))
    y = rng.integers(0, 3, 5)
    for cls, t in ((losses.SoftmaxCrossEntropy, y), (losses.MeanSquaredError, z64[::-1]),
                   (losses.BinaryCrossEntropyWithLogits, rng.random((5, 3)))):
        a, b = cls(), cls()
        la, lb = a(z64, t), b(z64.astype(np.float32), t)
        assert isinstance(la, float) and la == pytest.approx(lb, rel=1e-5)
        assert b.backward().dtype == np.float32
        np.testing.assert_allclose(a.backward(), b.backward(), rtol=1e-4, atol=1e-6)
    # MSE / BCE accept (N,) targets for a single output column
    one = z64[:, :1]
    assert losses.MeanSquaredError()(one, np.zeros(5)) == pytest.approx(np.mean(one ** 2))
