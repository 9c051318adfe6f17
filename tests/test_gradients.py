"""Every layer's and loss's backward against float64 central finite differences.

    dL/dtheta_i ~ (L(theta + h e_i) - L(theta - h e_i)) / (2 h),   h = 1e-6

with L = sum(forward(x) * R) for a fixed random R (so backward(R) is dL/dx).
The truncation error is O(h^2 f''') ~ 1e-12 and the rounding error
~ 1e-16 / h = 1e-10, so gradients must agree to rtol 1e-6, atol 1e-8.
Inputs are kept away from the ReLU kink (|x| > 0.05).
"""
import numpy as np
import pytest

import fastnn
from fastnn import layers as L
from fastnn import losses

H = 1e-6
RTOL, ATOL = 1e-6, 1e-8


def _away_from_zero(rng, shape, low=0.05):
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < low, np.sign(x + 1e-12) * low * 2, x)


def numeric_grad(f, arr):
    """Central differences of scalar f() w.r.t. every entry of arr (perturbed in place)."""
    g = np.zeros_like(arr)
    it = np.nditer(arr, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = arr[i]
        arr[i] = old + H
        fp = f()
        arr[i] = old - H
        fm = f()
        arr[i] = old
        g[i] = (fp - fm) / (2 * H)
    return g


def check_layer(layer, x, rng):
    r = rng.standard_normal(layer.forward(x.copy()).shape)

    def f():
        return float(np.sum(layer.forward(x) * r))

    for p in layer.parameters():
        p.grad[...] = 0
    f()
    dx = layer.backward(r.copy())
    analytic_params = [p.grad.copy() for p in layer.parameters()]
    np.testing.assert_allclose(dx, numeric_grad(f, x), rtol=RTOL, atol=ATOL, err_msg="dx")
    for p, ga in zip(layer.parameters(), analytic_params):
        np.testing.assert_allclose(ga, numeric_grad(f, p.data), rtol=RTOL, atol=ATOL,
                                   err_msg=p.name)


@pytest.mark.parametrize("activation", [None, "relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("init", ["he", "torch"])
def test_dense(activation, init):
    rng = np.random.default_rng(1)
    layer = L.Dense(5, 3, activation=activation, init=init, dtype=np.float64)
    layer.reset_parameters(rng)
    assert [p.data.shape for p in layer.parameters()] == [(5, 3), (3,)]   # both are checked
    x = _away_from_zero(rng, (4, 5))
    if activation == "relu":   # keep pre-activations off the kink too
        z = x @ layer.weight.data + layer.bias.data
        layer.bias.data[...] += np.where(np.abs(z) < 0.05, 0.2, 0.0).max(axis=0)
    check_layer(layer, x, rng)


def test_dense_no_bias_and_accumulation():
    rng = np.random.default_rng(2)
    layer = L.Dense(3, 2, use_bias=False, dtype=np.float64)
    assert layer.bias is None and len(layer.parameters()) == 1
    check_layer(layer, rng.standard_normal((6, 3)), rng)
    # backward ACCUMULATES: a second call doubles dW
    x = rng.standard_normal((6, 3))
    dy = rng.standard_normal((6, 2))
    layer.weight.grad[...] = 0
    layer.forward(x)
    layer.backward(dy)
    once = layer.weight.grad.copy()
    layer.backward(dy)
    np.testing.assert_allclose(layer.weight.grad, 2 * once, rtol=1e-12)
    np.testing.assert_allclose(once, x.T @ dy, rtol=1e-12)


@pytest.mark.parametrize("cls", [L.ReLU, L.Sigmoid, L.Tanh, L.Softmax])
def test_activation_layers(cls):
    rng = np.random.default_rng(3)
    check_layer(cls(), _away_from_zero(rng, (5, 7)), rng)


def test_dropout_train_mode_gradient():
    rng = np.random.default_rng(4)
    layer = L.Dropout(0.4, seed=7)
    x = rng.standard_normal((6, 5))
    y = layer.forward(x)
    mask = layer.scaled_mask()         # keep the same mask for every probe

    r = rng.standard_normal(y.shape)
    dx = layer.backward(r)
    np.testing.assert_allclose(dx, r * mask, rtol=1e-12)
    kept = mask != 0
    assert 0 < kept.mean() < 1
    np.testing.assert_allclose(mask[kept], 1 / 0.6, rtol=1e-12)


def test_flatten_roundtrip():
    x = np.arange(24.0).reshape(2, 3, 4)
    f = L.Flatten()
    y = f.forward(x)
    assert y.shape == (2, 12) and np.shares_memory(x, y)
    assert f.backward(y).shape == (2, 3, 4)


def _check_loss(loss_fn, z, t):
    def f():
        return loss_fn(z, t)
    f()
    g = loss_fn.backward().copy()
    np.testing.assert_allclose(g, numeric_grad(f, z), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_softmax_cross_entropy_indices(smoothing):
    rng = np.random.default_rng(5)
    _check_loss(losses.SoftmaxCrossEntropy(smoothing), rng.standard_normal((6, 4)) * 3,
                rng.integers(0, 4, 6))


def test_softmax_cross_entropy_probabilities():
    rng = np.random.default_rng(6)
    t = rng.random((5, 3))
    t /= t.sum(axis=1, keepdims=True)
    _check_loss(losses.SoftmaxCrossEntropy(0.2), rng.standard_normal((5, 3)), t)


def test_mse_and_bce():
    rng = np.random.default_rng(7)
    _check_loss(losses.MeanSquaredError(), rng.standard_normal((4, 3)),
                rng.standard_normal((4, 3)))
    _check_loss(losses.BinaryCrossEntropyWithLogits(), rng.standard_normal((4, 3)) * 4,
                rng.random((4, 3)))


def test_loss_values_closed_form():
    z = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    y = np.array([2, 0])
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    ref = -(logp[0, 2] + logp[1, 0]) / 2
    assert losses.SoftmaxCrossEntropy()(z, y) == pytest.approx(ref, rel=1e-12)
    onehot = np.eye(3)[y]
    assert losses.SoftmaxCrossEntropy()(z, onehot) == pytest.approx(ref, rel=1e-12)
    zz = np.array([[-30.0, 0.0, 30.0]])
    tt = np.array([[0.0, 1.0, 1.0]])
    ref = np.mean(np.log1p(np.exp(-np.abs(zz))) + np.maximum(zz, 0) - zz * tt)
    assert losses.BinaryCrossEntropyWithLogits()(zz, tt) == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("engine", ["gemm_ex", "fallback"])
def test_whole_model_gradient_with_fused_relu_mask(engine, monkeypatch):
    """Dense(relu) -> Dense(tanh) -> Dense: the Sequential's backward (which fuses
    the ReLU mask into the next GEMM and accumulates dW in the GEMM epilogue) vs
    finite differences; "fallback" is the path without the C engine's gemm_ex."""
    calls = []
    if engine == "fallback":
        monkeypatch.setattr(L, "_GEMM_EX", [None])
    else:
        gemm_ex = L._gemm_ex()
        assert gemm_ex is not None, "fastnn._ext.matmul_c.gemm_ex is not built"

        def counted(*args, **kw):
            calls.append(len(args))
            return gemm_ex(*args, **kw)

        monkeypatch.setattr(L, "_GEMM_EX", [counted])
    rng = np.random.default_rng(8)
    model = fastnn.Sequential([L.Dense(6, 5, activation="relu", dtype=np.float64),
                               L.Dense(5, 4, activation="tanh", dtype=np.float64),
                               L.Dense(4, 3, dtype=np.float64)], seed=3)
    x = rng.standard_normal((7, 6))
    y = rng.integers(0, 3, 7)
    loss_fn = losses.SoftmaxCrossEntropy()

    def f():
        return loss_fn(model(x), y)

    model.zero_grad()
    f()
    dx = model.backward(loss_fn.backward())
    analytic = model.flat_grads.copy()
    np.testing.assert_allclose(analytic, numeric_grad(f, model.flat_params), rtol=1e-5,
                               atol=1e-8)
    np.testing.assert_allclose(dx, numeric_grad(f, x), rtol=1e-5, atol=1e-8)
    # the engine under test really ran: dW accumulated and the ReLU mask applied
    # in gemm_ex's epilogue (3 dW GEMMs + the masked dX of the relu layer at least)
    if engine == "gemm_ex":
        assert len(calls) >= 4, calls
