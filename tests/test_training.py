"""fit / evaluate / predict: history, determinism, engines, inputs, validation, divergence.

Small MNIST subsets (2000 training images) keep every test well under a second
or two; the full-data check lives in test_cli.py (marked slow).
"""
import numpy as np
import pytest

import fastnn
from fastnn import Sequential, _fused, presets, training
from fastnn.errors import DivergenceError, DTypeError, ShapeError
from fastnn.layers import Dense, Dropout
from fastnn.losses import SoftmaxCrossEntropy
from fastnn.optim import SGD, Adam, CosineDecay

N_TRAIN, N_TEST = 2000, 500


@pytest.fixture(scope="module")
def data():
    from fastnn.datasets import mnist
    (x, y), (xt, yt) = mnist.load_data()
    return (x[:N_TRAIN].reshape(N_TRAIN, -1), y[:N_TRAIN].astype(np.int64),
            xt[:N_TEST].reshape(N_TEST, -1), yt[:N_TEST].astype(np.int64))


def _mlp(sizes=(784, 32, 10), seed=0, dtype="float32"):
    p = presets.Preset("t", tuple(sizes), batch_size=64, lr=0.05, momentum=0.9)
    return presets.build_model(p, seed=seed, dtype=dtype)


def _fit(model, x, y, lr=0.05, momentum=0.9, **kw):
    kw.setdefault("epochs", 2)
    kw.setdefault("batch_size", 64)
    kw.setdefault("seed", 0)
    kw.setdefault("verbose", 0)
    opt = kw.pop("optimizer", None) or SGD(model.parameters(), lr=lr, momentum=momentum)
    return training.fit(model, x, y, loss=SoftmaxCrossEntropy(), optimizer=opt, **kw), opt


# fused=None lets fit pick the native plan, which it must for these float32 Dense+ReLU
# MLPs: a test parametrized over the engines checks that the one it meant really ran
# (a plan that declined would otherwise test the general path twice, and pass)
ENGINE = {None: "fused", True: "fused", False: "general"}


def _assert_plan(model, batch_size=64):
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    assert _fused.plan(model, SoftmaxCrossEntropy(), opt, batch_size) is not None, (
        f"the fused plan declined {[type(l).__name__ for l in model.layers]} at batch "
        f"{batch_size}, a model it is meant to train")


# ------------------------------------------------------------------ history

@pytest.mark.parametrize("fused", [None, False])
def test_history_keys_and_lengths(data, fused):
    x, y, xt, yt = data
    model = _mlp()
    h, _ = _fit(model, x, y, epochs=3, validation_data=(xt, yt), fused=fused)
    assert h.params["engine"] == ENGINE[fused]
    assert set(h.history) == {"loss", "accuracy", "val_loss", "val_accuracy", "epoch_time",
                              "samples_per_s"}
    assert all(len(v) == 3 for v in h.history.values())
    assert h.epoch == [0, 1, 2]
    assert h.params["steps"] == -(-N_TRAIN // 64) and h.params["samples"] == N_TRAIN
    assert h.history["loss"][2] < h.history["loss"][0]
    assert h.history["val_accuracy"][-1] > 0.8
    # the recorded validation metrics are what evaluate() says for the final weights
    ev = training.evaluate(model, xt, yt)
    assert ev["accuracy"] == h.history["val_accuracy"][-1]
    assert ev["loss"] == pytest.approx(h.history["val_loss"][-1], rel=1e-6)
    for t, s in zip(h.history["epoch_time"], h.history["samples_per_s"]):
        assert t > 0 and s == pytest.approx(N_TRAIN / t)


def test_no_validation_keys_and_zero_epochs(data):
    x, y, _, _ = data
    model = _mlp()
    before = model.flat_params.copy()
    with pytest.warns(UserWarning, match="nothing to train"):
        h, _ = _fit(model, x, y, epochs=0)
    assert h.epoch == [] and all(v == [] for v in h.history.values())
    np.testing.assert_array_equal(model.flat_params, before)
    h, _ = _fit(model, x, y, epochs=1)
    assert "val_loss" not in h.history and len(h.history["loss"]) == 1


def test_model_fit_delegates(data):
    x, y, xt, yt = data
    model = _mlp()
    opt = SGD(model.parameters(), lr=0.05)
    h = model.fit(x, y, epochs=1, batch_size=100, loss=SoftmaxCrossEntropy(), optimizer=opt,
                  seed=1, verbose=0)
    assert isinstance(h, training.History)
    assert model.evaluate(xt, yt)["accuracy"] == training.evaluate(model, xt, yt)["accuracy"]
    assert model.predict(xt[:7]).shape == (7, 10)


def test_verbose_epoch_line(data, capsys):
    x, y, xt, yt = data
    _fit(_mlp(), x, y, epochs=1, verbose=2, validation_data=(xt, yt))
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("Epoch 1/1 - ") and "loss: " in line and "val_accuracy: " in line
    assert line.endswith("samples/s")


# ------------------------------------------------------------------ determinism, engines

@pytest.mark.parametrize("fused", [None, False])
def test_seed_determinism(data, fused):
    x, y, _, _ = data
    a, b, c = _mlp(), _mlp(), _mlp()
    ha, _ = _fit(a, x, y, seed=3, fused=fused)
    hb, _ = _fit(b, x, y, seed=3, fused=fused)
    assert ha.params["engine"] == ENGINE[fused]
    _fit(c, x, y, seed=4, fused=fused)
    np.testing.assert_array_equal(a.flat_params, b.flat_params)
    # what a seeded run computes, never its timings (epoch_time, samples_per_s)
    for key in ("loss", "accuracy"):
        assert ha.history[key] == hb.history[key], key
    assert not np.array_equal(a.flat_params, c.flat_params)


def test_shuffle_false_is_seed_independent(data):
    x, y, _, _ = data
    a, b = _mlp(), _mlp()
    _fit(a, x, y, shuffle=False, seed=1, fused=False)
    _fit(b, x, y, shuffle=False, seed=2, fused=False)
    np.testing.assert_array_equal(a.flat_params, b.flat_params)


def test_general_path_matches_manual_loop(data):
    """The general engine is exactly: permutation, batches (last one partial), SGD steps."""
    x, y, _, _ = data
    x, y = x[:300], y[:300]
    model, ref = _mlp(), _mlp()
    _fit(model, x, y, epochs=2, batch_size=64, fused=False, seed=5)
    loss = SoftmaxCrossEntropy()
    opt = SGD(ref.parameters(), lr=0.05, momentum=0.9)
    rng = np.random.default_rng(5)
    for _ in range(2):
        perm = rng.permutation(300)
        for s in range(0, 300, 64):                    # 4 full batches + one of 44
            idx = perm[s:s + 64]
            xb = np.multiply(x[idx], np.float32(1 / 255), dtype=np.float32)
            ref.zero_grad()
            loss(ref(xb), y[idx])
            ref.backward(loss.backward())
            opt.step()
    np.testing.assert_array_equal(model.flat_params, ref.flat_params)


@pytest.mark.parametrize("sizes,batch", [((784, 32, 10), 64), ((784, 10), 100),
                                         ((784, 48, 24, 10), 37)])
def test_fused_matches_general(data, sizes, batch):
    x, y, _, _ = data
    _assert_plan(_mlp(sizes), batch)
    a, b = _mlp(sizes), _mlp(sizes)
    ha, _ = _fit(a, x, y, batch_size=batch, fused=True)
    hb, _ = _fit(b, x, y, batch_size=batch, fused=False)
    assert ha.params["engine"] == "fused" and hb.params["engine"] == "general"
    np.testing.assert_allclose(a.flat_params, b.flat_params, rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=2e-3)
    assert abs(ha.history["accuracy"][-1] - hb.history["accuracy"][-1]) < 0.01


def test_fused_chunks_match_whole_epochs(data):
    """Returning to Python every n steps (a per-step callback) must not change the result."""
    x, y, _, _ = data
    _assert_plan(_mlp())

    class Every7(fastnn.callbacks.Callback):
        step_freq = 7

        def __init__(self):
            super().__init__()
            self.steps = []

        def on_batch_end(self, step, logs):
            self.steps.append(step)

    a, b = _mlp(), _mlp()
    cb = Every7()
    _fit(a, x, y, fused=True, callbacks=[cb])
    _fit(b, x, y, fused=True)
    np.testing.assert_array_equal(a.flat_params, b.flat_params)
    steps = -(-N_TRAIN // 64)
    expected = sorted({s for s in range(7, 2 * steps + 1, 7)} | {steps, 2 * steps})
    assert cb.steps == expected


@pytest.mark.parametrize("fused", [None, False])
def test_uint8_matches_prescaled_float(data, fused):
    x, y, _, _ = data
    a, b = _mlp(), _mlp()
    ha, _ = _fit(a, x, y, fused=fused)
    hb, _ = _fit(b, x.astype(np.float32) / 255, y, fused=fused)
    assert ha.params["engine"] == hb.params["engine"] == ENGINE[fused]
    np.testing.assert_allclose(a.flat_params, b.flat_params, rtol=1e-4, atol=1e-5)
    # scaling by the float32 reciprocal gives bitwise the same batches
    c = _mlp()
    _fit(c, np.multiply(x, np.float32(1 / 255), dtype=np.float32), y, fused=fused)
    np.testing.assert_array_equal(a.flat_params, c.flat_params)


def test_float64_model(data):
    x, y, xt, yt = data
    model = _mlp(dtype="float64")
    h, _ = _fit(model, x, y, epochs=1)
    assert model.flat_params.dtype == np.float64
    assert training.evaluate(model, xt, yt)["accuracy"] > 0.7
    assert training.predict(model, xt[:3]).dtype == np.float64


def test_schedule_and_adam(data):
    x, y, _, _ = data
    model = _mlp()
    opt = Adam(model.parameters(), lr=3e-3)
    sched = CosineDecay(opt, total_steps=2 * -(-N_TRAIN // 64))
    h, _ = _fit(model, x, y, optimizer=opt, schedule=sched)
    assert opt.lr == pytest.approx(sched.lr_at(2 * -(-N_TRAIN // 64) - 1))
    assert h.history["accuracy"][-1] > 0.8
    # a plain callable works too, and a fused run applies it per step like the general one
    a, b = _mlp(), _mlp()
    f = lambda t: 0.1 / (1 + t)  # noqa: E731
    ha, _ = _fit(a, x, y, schedule=f, fused=None)
    hb, _ = _fit(b, x, y, schedule=f, fused=False)
    assert ha.params["engine"] == "fused" and hb.params["engine"] == "general"
    np.testing.assert_allclose(a.flat_params, b.flat_params, rtol=2e-3, atol=2e-4)


def test_dropout_model_resumes_bitwise(data):
    """Dropout masks come from the layer's generator: its state travels in resume_extra."""
    x, y, _, _ = data

    def build():
        return Sequential([Dense(784, 32, activation="relu", init="torch"), Dropout(0.3, seed=1),
                           Dense(32, 10, init="torch")], seed=0)

    full = build()
    _fit(full, x, y, epochs=2)
    part = build()
    opt = SGD(part.parameters(), lr=0.05, momentum=0.9)
    states = []

    class Grab(fastnn.callbacks.Callback):
        def on_epoch_end(self, epoch, logs):
            states.append(self.state.resume_extra())
            self.state.stop_training = True

    _fit(part, x, y, epochs=2, optimizer=opt, callbacks=[Grab()])
    _fit(part, x, y, epochs=2, optimizer=opt, resume=states[0])
    np.testing.assert_array_equal(full.flat_params, part.flat_params)


@pytest.mark.parametrize("fused", [None, False])
def test_resume_in_process_is_bitwise(data, fused):
    x, y, xt, yt = data
    full = _mlp()
    hfull, _ = _fit(full, x, y, epochs=3, validation_data=(xt, yt), fused=fused)
    assert hfull.params["engine"] == ENGINE[fused]
    part = _mlp()
    opt = SGD(part.parameters(), lr=0.05, momentum=0.9)
    extra = {}

    class StopAfter1(fastnn.callbacks.Callback):
        def on_epoch_end(self, epoch, logs):
            extra.update(self.state.resume_extra())
            self.state.stop_training = True

    _fit(part, x, y, epochs=3, optimizer=opt, callbacks=[StopAfter1()],
         validation_data=(xt, yt), fused=fused)
    assert extra["epoch"] == 1
    h, _ = _fit(part, x, y, epochs=3, optimizer=opt, resume=extra, validation_data=(xt, yt),
                fused=fused)
    np.testing.assert_array_equal(full.flat_params, part.flat_params)
    assert h.epoch == [0, 1, 2]
    assert h.params["engine"] == ENGINE[fused]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert h.history[key] == hfull.history[key], key


# ------------------------------------------------------------------ evaluate / predict

def test_evaluate_and_predict(data):
    x, y, xt, yt = data
    model = _mlp()
    _fit(model, x, y, epochs=1)
    out = training.predict(model, xt, batch_size=128)
    assert out.shape == (N_TEST, 10) and out.dtype == np.float32
    # other batch sizes block the GEMMs differently: equal to float32 rounding
    np.testing.assert_allclose(out, training.predict(model, xt, batch_size=7), rtol=1e-5,
                               atol=2e-5)
    acc = float(np.mean(out.argmax(1) == yt))
    ev = training.evaluate(model, xt, yt, batch_size=33)
    assert ev["accuracy"] == acc
    logp = out - out.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    assert ev["loss"] == pytest.approx(-logp[np.arange(N_TEST), yt].mean(), rel=1e-4)
    # uint8 input and pre-scaled float input predict the same
    np.testing.assert_allclose(out, training.predict(model, xt.astype(np.float32) / 255),
                               rtol=1e-4, atol=1e-5)
    # images (N, 28, 28) work as well as rows
    np.testing.assert_array_equal(out, training.predict(model, xt.reshape(-1, 28, 28),
                                                        batch_size=128))
    assert model.training is False


def test_evaluate_leaves_training_mode(data):
    x, y, xt, yt = data
    model = _mlp().train()
    training.evaluate(model, xt, yt)
    assert model.training is True


# ------------------------------------------------------------------ validation

def test_argument_validation(data):
    x, y, xt, yt = data
    model = _mlp()
    opt = SGD(model.parameters(), lr=0.1)
    base = dict(epochs=1, batch_size=32, loss=SoftmaxCrossEntropy(), optimizer=opt, verbose=0)

    def fit(xx=x, yy=y, **kw):
        return training.fit(model, xx, yy, **{**base, **kw})

    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        fit(batch_size=0)
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        fit(batch_size=3.5)
    with pytest.raises(ValueError, match="epochs must be >= 0"):
        fit(epochs=-1)
    with pytest.raises(TypeError, match="epochs must be an integer"):
        fit(epochs=True)
    with pytest.raises(ShapeError, match="different lengths"):
        fit(yy=y[:-1])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 9\]"):
        fit(yy=np.where(np.arange(len(y)) == 5, 10, y))
    with pytest.raises(ValueError, match="labels"):
        fit(yy=y - 1)
    with pytest.raises(DTypeError, match="integer class labels"):
        fit(yy=y.astype(np.float32))
    with pytest.raises(DTypeError, match="uint8 images or a float"):
        fit(xx=x.astype(np.int32))
    with pytest.raises(DTypeError, match="numpy array"):
        fit(xx=x.tolist())
    with pytest.raises(ShapeError, match="empty"):
        fit(xx=x[:0], yy=y[:0])
    with pytest.raises(ShapeError, match=r"\(N, features"):
        fit(xx=x[0], yy=y[:784])
    with pytest.raises(ShapeError):
        fit(xx=x[:, :100])                      # the model expects 784 features
    with pytest.raises(ShapeError, match=r"shape \(N,\)"):
        fit(yy=y.reshape(-1, 1))
    with pytest.raises(TypeError, match="validation_data"):
        fit(validation_data=xt)
    with pytest.raises(ValueError, match="validation y"):
        fit(validation_data=(xt, yt + 10))
    with pytest.raises(ValueError, match="verbose"):
        fit(verbose=5)
    with pytest.raises(TypeError, match="callbacks"):
        fit(callbacks=[object()])
    with pytest.raises(ValueError, match="batch_size"):
        training.evaluate(model, xt, yt, batch_size=0)
    with pytest.raises(ShapeError):
        training.predict(model, xt[:0])
    with pytest.raises(ShapeError):
        training.evaluate(model, xt, yt[:10])


def test_batch_larger_than_data(data):
    x, y, _, _ = data
    h, _ = _fit(_mlp(), x[:50], y[:50], epochs=1, batch_size=1000)
    assert h.params["steps"] == 1


# ------------------------------------------------------------------ divergence

# fused=True: fit raises (not falls back to the general path) if the plan declines
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "general"])
def test_divergence_huge_lr(data, fused):
    x, y, _, _ = data
    model = _mlp()
    with pytest.raises(DivergenceError, match=r"epoch 1 at step \d+ of 32"):
        _fit(model, x, y, lr=1e6, momentum=0.0, fused=fused)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "general"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_input_row_is_refused_before_any_step(data, fused, bad):
    """A NaN/inf pixel in sample k would surface only as a divergence after a chunk of
    work (the native ReLU even maps NaN to 0): fit names row k and trains nothing."""
    x, y, xt, yt = data
    kind = "NaN" if np.isnan(bad) else "inf"
    xf = x.astype(np.float32) / 255
    xf[1234, 300] = bad
    model = _mlp()
    before = model.flat_params.copy()
    with pytest.raises(ValueError, match=rf"^x holds {kind} in row 1234 "):
        _fit(model, xf, y, seed=7, fused=fused)
    xv = xt.astype(np.float32) / 255
    xv[3, 5] = bad
    with pytest.raises(ValueError, match=rf"^validation x holds {kind} in row 3 "):
        _fit(model, x, y, seed=7, fused=fused, validation_data=(xv, yt))
    np.testing.assert_array_equal(model.flat_params, before)


def test_progress_bar_on_a_terminal(data, monkeypatch):
    """verbose=1 on a terminal: a tqdm bar (updated in chunks of steps) and the epoch
    lines; the chunked run ends on the same weights as a silent one."""
    pytest.importorskip("tqdm")
    import io
    import sys

    class FakeTerminal(io.StringIO):
        def isatty(self):
            return True

    x, y, _, _ = data
    quiet = _mlp()
    _fit(quiet, x, y, verbose=0)
    term = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", term)
    shown = _mlp()
    _fit(shown, x, y, verbose=1)
    text = term.getvalue()
    assert "step" in text and "\r" in text                   # the bar redraws in place
    assert text.count("Epoch 1/2 - ") == 1 and text.count("Epoch 2/2 - ") == 1
    np.testing.assert_array_equal(quiet.flat_params, shown.flat_params)
    # not a terminal: no bar, only the lines
    plain = io.StringIO()
    monkeypatch.setattr(sys, "stdout", plain)
    _fit(_mlp(), x, y, verbose=1)
    assert "\r" not in plain.getvalue() and plain.getvalue().count("\n") == 2
