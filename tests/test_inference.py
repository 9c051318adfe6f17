"""``predict``'s lean path (training.predict: an MLP fed a C-contiguous float batch of its
dtype runs as bare C GEMM calls) gives bitwise the outputs of the general path
(``model(x)`` batch by batch), with and without ``out=``, and ``out=`` allocates nothing
beyond what the caller passed (issue 14)."""
import threading
import tracemalloc

import numpy as np
import pytest

import fastnn
from fastnn import training
from fastnn.errors import DTypeError, ShapeError
from fastnn.layers import Dense, Dropout, Sigmoid
from fastnn.presets import build_model, get_preset


def general(model, x, batch_size=training.EVAL_BATCH):
    """The general path: model(x) per batch, in eval mode."""
    model.eval()
    return np.concatenate([model(x[s:s + batch_size]) for s in range(0, len(x), batch_size)])


def batch(n, d=784, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).random((n, d)).astype(dtype)


@pytest.mark.parametrize("name", ["softmax", "mlp", "mlp-keras"])
@pytest.mark.parametrize("n,batch_size", [(1, 1000), (7, 3), (1000, 256)])
def test_lean_predict_equals_general_path(name, n, batch_size):
    model = build_model(get_preset(name), seed=0)
    x = batch(n)
    assert training._lean_plan(model, x, batch_size) is not None
    want = general(model, x, batch_size)
    np.testing.assert_array_equal(model.predict(x, batch_size=batch_size), want)
    out = np.full(want.shape, np.nan, np.float32)
    assert model.predict(x, batch_size=batch_size, out=out) is out
    np.testing.assert_array_equal(out, want)


def test_dropout_and_float64_and_fallbacks():
    model = fastnn.Sequential([Dense(20, 16, activation="relu"), Dropout(0.5, seed=0),
                               Dense(16, 3)], seed=0).train()
    x = batch(33, 20)
    assert training._lean_plan(model, x, 8) is not None
    np.testing.assert_array_equal(model.predict(x, batch_size=8), general(model, x, 8))
    m64 = fastnn.Sequential([Dense(20, 4, activation="relu", dtype="float64"),
                             Dense(4, 2, dtype="float64")], seed=0)
    x64 = batch(9, 20, dtype=np.float64)
    np.testing.assert_array_equal(m64.predict(x64), general(m64, x64))
    # not lean: a sigmoid layer, uint8 input, a non-contiguous batch; same numbers anyway
    sig = fastnn.Sequential([Dense(20, 4), Sigmoid(), Dense(4, 2)], seed=0)
    assert training._lean_plan(sig, x, 8) is None
    np.testing.assert_array_equal(sig.predict(x), general(sig, x))
    u8 = (x * 255).astype(np.uint8)
    assert training._lean_plan(model, u8, 8) is None
    np.testing.assert_array_equal(model.predict(u8), general(model, u8 * np.float32(1 / 255)))
    xt = np.asfortranarray(x)
    assert training._lean_plan(model, xt, 8) is None
    np.testing.assert_array_equal(model.predict(xt), general(model, x))


def test_predict_keeps_training_mode():
    model = build_model(get_preset("mlp"), seed=0).train()
    model.predict(batch(4))
    assert model.training


def test_out_is_checked():
    model = build_model(get_preset("mlp"), seed=0)
    x = batch(5)
    with pytest.raises(DTypeError, match="float32"):
        model.predict(x, out=np.empty((5, 10), np.float64))
    with pytest.raises(ShapeError, match="5 rows"):
        model.predict(x, out=np.empty((4, 10), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        model.predict(x, out=np.empty((10, 5), np.float32).T)
    with pytest.raises(TypeError, match="numpy array"):
        model.predict(x, out=[[0.0] * 10] * 5)


def test_out_allocates_nothing():
    model = build_model(get_preset("mlp-keras"), seed=0)
    x = batch(1000)
    out = np.empty((1000, 10), np.float32)
    model.predict(x, out=out)                      # workspaces made on the first call
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        model.predict(x, out=out)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    # one 1000 x 512 float32 intermediate would be 2 MB; the output alone 40 kB
    assert peak < 4096, peak


def test_threads_sharing_a_model_get_their_own_results():
    model = build_model(get_preset("mlp"), seed=0)
    xs = [batch(300, seed=s) for s in range(4)]
    want = [general(model, x) for x in xs]
    got = [None] * 4

    def work(i):
        for _ in range(20):
            got[i] = model.predict(xs[i])

    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_lean_runner_follows_changes_to_the_model():
    """The lean path keeps a native runner per model; it must see in-place weight
    updates, a changed activation, a replaced layer or parameter."""
    model = build_model(get_preset("mlp"), seed=0)
    x = batch(3)
    model.predict(x)
    model.layers[-1].weight.data = np.random.default_rng(1).random((128, 10), np.float32)
    np.testing.assert_array_equal(model.predict(x), general(model, x))
    model.layers[0].activation = None
    np.testing.assert_array_equal(model.predict(x), general(model, x))
    model.layers[0].activation = "relu"
    model.layers[1] = Dense(128, 10)
    np.testing.assert_array_equal(model.predict(x), general(model, x))
    sig = fastnn.Sequential([Dense(784, 4), Sigmoid(), Dense(4, 2)], seed=0)
    assert training._lean_plan(sig, x, 8) is None
    sig.layers[1] = Dropout(0.5)                 # now an MLP: the lean path takes it
    assert training._lean_plan(sig, x, 8) is not None
    np.testing.assert_array_equal(sig.predict(x), general(sig, x))


def test_out_overlapping_x_is_still_right():
    model = build_model(get_preset("mlp"), seed=0)
    buf = np.random.default_rng(2).random(2 * 784, np.float32)
    x = buf[:784].reshape(1, 784)
    want = general(model, x.copy())
    out = buf[700:710].reshape(1, 10)            # inside x
    assert model.predict(x, out=out) is out
    np.testing.assert_array_equal(out, want)


def test_lean_chain_checks_its_layers_and_repeats():
    from fastnn._ext import matmul_c
    w1 = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="chain"):
        matmul_c.LeanMLP([(None, w1, None, True), (None, np.ones((5, 2), np.float32), None,
                                                    False)], [])
    with pytest.raises(TypeError, match="2-D"):
        matmul_c.LeanMLP([(None, np.ones(3, np.float32), None, False)], [])
    with pytest.raises(ValueError, match="bias"):
        matmul_c.LeanMLP([(None, w1, np.ones(3, np.float32), False)], [])
    run = matmul_c.LeanMLP([(None, w1, -np.ones(4, np.float32), True),
                            (None, np.ones((4, 2), np.float32), None, False)], [])
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    want = np.maximum(x @ w1 - 1, 0) @ np.ones((4, 2), np.float32)
    np.testing.assert_array_equal(run.run(x, None, 1, 1), want)
    np.testing.assert_array_equal(run.run(x, None, 1000, 2, 3), want)
    assert run.run(x.astype(np.float64), None, 8, 1) is None        # not its dtype
    assert run.run(np.asfortranarray(np.ones((2, 3), np.float32)), None, 8, 1) is None
    assert run.run(x, np.empty((2, 3), np.float32), 8, 1) is None   # wrong out shape
