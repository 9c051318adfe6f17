"""Sequential: flat buffers, inputs, workspaces, modes, config, summary, bad calls."""
import json

import numpy as np
import pytest

import fastnn
from fastnn import layers as L
from fastnn.errors import DTypeError, ShapeError
from fastnn.losses import SoftmaxCrossEntropy
from fastnn.parameter import Parameter
from fastnn.sequential import Sequential


def mlp(dtype=np.float32, seed=0):
    return Sequential([L.Dense(8, 6, activation="relu", dtype=dtype), L.Dropout(0.5, seed=1),
                       L.Dense(6, 5, activation="tanh", dtype=dtype), L.Dense(5, 3, dtype=dtype)],
                      seed=seed)


def test_flat_buffers_alias_every_parameter():
    m = mlp()
    params = m.parameters()
    assert [p.name for p in params] == ["0.weight", "0.bias", "2.weight", "2.bias",
                                        "3.weight", "3.bias"]
    assert m.flat_params.size == m.count_params() == 8 * 6 + 6 + 6 * 5 + 5 + 5 * 3 + 3
    assert m.flat_params.flags.c_contiguous and m.flat_grads.flags.c_contiguous
    off = 0
    for p in params:
        assert p.offset == off
        assert np.shares_memory(p.data, m.flat_params) and np.shares_memory(p.grad, m.flat_grads)
        np.testing.assert_array_equal(p.data.ravel(), m.flat_params[off:off + p.size])
        off += p.size
    # writes go both ways
    m.flat_params[:] = np.arange(m.flat_params.size)
    assert m[0].weight.data[0, 1] == 1.0 and m[3].bias.data[-1] == m.flat_params.size - 1
    m[2].bias.data[...] = -7
    assert (m.flat_params[params[3].offset:params[3].offset + 5] == -7).all()
    # assigning .data copies into the view instead of breaking the aliasing
    p = m[0].weight
    p.data = np.ones(p.shape)
    assert np.shares_memory(p.data, m.flat_params) and (p.data == 1).all()
    with pytest.raises(ShapeError, match="must have shape"):
        p.data = np.ones((2, 2))
    assert dict(m.named_parameters())["3.weight"] is m[3].weight
    # re-initialising writes into the flat buffer too, reproducibly
    m.reset_parameters(5)
    assert np.shares_memory(m[0].weight.data, m.flat_params)
    np.testing.assert_array_equal(m.flat_params, mlp(seed=5).flat_params)


def test_backward_accumulates_and_zero_grad_is_one_fill(monkeypatch):
    m = mlp(np.float64)
    x = np.random.default_rng(0).standard_normal((4, 8))
    y = np.array([0, 1, 2, 0])
    f = SoftmaxCrossEntropy()
    f(m(x), y)
    m.backward(f.backward())
    g1 = m.flat_grads.copy()
    assert np.abs(g1).sum() > 0
    m.backward(f.backward())
    np.testing.assert_allclose(m.flat_grads, 2 * g1, rtol=1e-12)
    calls = []
    real_fill = np.ndarray.fill

    class Spy(np.ndarray):
        def fill(self, v):
            calls.append(v)
            return real_fill(self, v)

    m.flat_grads = m.flat_grads.view(Spy)
    m.zero_grad()
    assert calls == [0] and not m.flat_grads.any() and not m[0].weight.grad.any()


def test_models_share_nothing_and_layers_cannot_be_reused():
    a, b = mlp(seed=1), mlp(seed=1)
    np.testing.assert_array_equal(a.flat_params, b.flat_params)      # seed reproducible
    assert not np.shares_memory(a.flat_params, b.flat_params)
    assert not np.array_equal(mlp(seed=2).flat_params, a.flat_params)
    with pytest.raises(ValueError, match="already belongs to another Sequential"):
        Sequential(a.layers)
    d = L.Dense(2, 2)
    with pytest.raises(ValueError, match="appears twice"):
        Sequential([d, d])


def test_seed_none_keeps_layer_values():
    d = L.Dense(3, 2, init="zeros")
    d.weight.data[...] = 5
    m = Sequential([d])
    assert (m.flat_params[:6] == 5).all()


def test_dtypes():
    with pytest.raises(DTypeError, match="mix dtypes"):
        Sequential([L.Dense(3, 2, dtype=np.float32), L.Dense(2, 2, dtype=np.float64)])
    with pytest.raises(DTypeError, match="dtype=float64 but the layers have dtype float32"):
        Sequential([L.Dense(3, 2)], dtype=np.float64)
    with pytest.raises(DTypeError, match="float32 or float64"):
        Sequential([L.ReLU()], dtype=np.int64)
    assert Sequential([L.ReLU()]).dtype == np.float32
    assert Sequential([L.ReLU()], dtype="float64").dtype == np.float64
    m = mlp(np.float64)
    assert m.flat_params.dtype == np.float64 and m(np.zeros((2, 8))).dtype == np.float64


def test_inputs_uint8_images_and_casts():
    m = Sequential([L.Dense(784, 4, dtype=np.float64)], seed=0)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (5, 28, 28)).astype(np.uint8)
    ref = (img.reshape(5, 784) / 255.0) @ m[0].weight.data + m[0].bias.data
    np.testing.assert_allclose(m(img), ref, rtol=1e-12)
    np.testing.assert_allclose(m(img.reshape(5, 784).astype(np.float32) / 255), ref, rtol=1e-6)
    with pytest.raises(ShapeError, match="expects 784 features"):
        m(np.zeros((2, 27, 28), np.uint8))
    with pytest.raises(DTypeError, match="float array or uint8"):
        m(np.zeros((2, 784), np.int32))
    with pytest.raises(ShapeError, match="empty batch"):
        m(np.zeros((0, 784)))
    with pytest.raises(ShapeError, match="single sample"):
        m(np.zeros(784))
    f = Sequential([L.Flatten(), L.Dense(784, 4, dtype=np.float64)])
    f.flat_params[:] = m.flat_params
    np.testing.assert_allclose(f(img), ref, rtol=1e-12)


def test_outputs_are_fresh_but_workspaces_reused():
    m = mlp()
    x = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)
    y1 = m(x)
    y1_copy = y1.copy()
    y2 = m(x * 2)
    np.testing.assert_array_equal(y1, y1_copy)             # not overwritten
    assert not np.shares_memory(y1, y2)
    ws = m._fwd_ws[0]
    m(x * 3)
    assert m._fwd_ws[0] is ws                               # same buffer, no allocation
    m(x[:3])                                                 # smaller batch: a slice of it
    assert m._fwd_ws[0] is ws


def test_trailing_passthrough_layer_output_is_fresh():
    m = Sequential([L.Dense(4, 3), L.Dense(3, 2), L.Dropout(0.5)]).eval()
    x = np.ones((2, 4), np.float32)
    a = m(x)
    keep = a.copy()
    m(2 * x)
    np.testing.assert_array_equal(a, keep)


def test_train_eval_dropout():
    m = mlp()
    x = np.ones((4, 8), np.float32)
    m.eval()
    assert not m.training and not m[1].training
    np.testing.assert_array_equal(m(x), m(x))               # deterministic in eval
    m.train()
    assert m.training and m[1].training
    a, b = m(x), m(x)
    assert not np.array_equal(a, b)                         # fresh masks each call


def test_backward_bad_calls():
    m = mlp()
    with pytest.raises(RuntimeError, match="before forward"):
        m.backward(np.zeros((2, 3), np.float32))
    m(np.zeros((2, 8), np.float32))
    with pytest.raises(ShapeError, match=r"output's shape \(2, 3\)"):
        m.backward(np.zeros((2, 4), np.float32))
    with pytest.raises(DTypeError, match="dtype float32"):
        m.backward(np.zeros((2, 3), np.float64))
    assert m.backward(np.zeros((2, 3), np.float32), input_grad=False) is None


def test_construction_bad_calls():
    with pytest.raises(ValueError, match="non-empty"):
        Sequential([])
    with pytest.raises(TypeError, match=r"layers\[1\] must be a fastnn.layers.Layer"):
        Sequential([L.ReLU(), "dense"])
    with pytest.raises(ShapeError, match="layer 2 \\(Dense\\) expects 5 input features"):
        Sequential([L.Dense(3, 4), L.ReLU(), L.Dense(5, 2)])


def test_config_roundtrip_and_state_dict():
    m = mlp(np.float64)
    cfg = m.get_config()
    assert cfg["class"] == "Sequential" and cfg["dtype"] == "float64"
    assert [c["class"] for c in cfg["layers"]] == ["Dense", "Dropout", "Dense", "Dense"]
    again = Sequential.from_config(json.loads(json.dumps(cfg)))
    assert again.get_config() == cfg and again.dtype == np.float64
    again.load_state_dict(m.state_dict())
    x = np.random.default_rng(1).standard_normal((3, 8))
    np.testing.assert_array_equal(again.eval()(x), m.eval()(x))
    with pytest.raises(ValueError, match="expected a dict with class 'Sequential'"):
        Sequential.from_config({"class": "Dense"})
    with pytest.raises(ValueError, match="missing"):
        again.load_state_dict({})
    bad = m.state_dict()
    bad["0.weight"] = np.zeros((2, 2))
    with pytest.raises(ShapeError, match="0.weight must have shape"):
        again.load_state_dict(bad)


def test_summary():
    m = Sequential([L.Dense(784, 128, activation="relu"), L.Dropout(0.2), L.Dense(128, 10)])
    lines = []
    text = m.summary(print_fn=lines.append)
    assert lines == [text]
    assert "Dense(relu)" in text and "(None, 128)" in text and "(None, 10)" in text
    assert "100,480" in text and "1,290" in text and "Total params: 101,770" in text
    f = Sequential([L.Flatten(), L.Dense(784, 10)])
    assert "(None, 784)" in f.summary(input_shape=(28, 28), print_fn=None)
    assert "?" in f.summary(print_fn=None)


def test_lazy_top_level_names_and_delegation(monkeypatch):
    assert fastnn.Sequential is Sequential
    assert isinstance(Parameter("w", np.zeros(2)).grad, np.ndarray)
    from fastnn import training
    calls = []
    for name in ("fit", "evaluate", "predict"):
        monkeypatch.setattr(training, name,
                            lambda model, *a, _n=name, **k: calls.append((_n, model, a, k)))
    m = mlp()
    m.fit(1, 2, epochs=3, batch_size=4, loss="l", optimizer="o")
    m.evaluate(5, 6)
    m.predict(7, batch_size=8)
    assert [c[:3] for c in calls] == [("fit", m, (1, 2)), ("evaluate", m, (5, 6)),
                                      ("predict", m, (7,))]
    assert calls[0][3]["epochs"] == 3 and calls[0][3]["optimizer"] == "o"
    assert calls[2][3] == {"batch_size": 8}
