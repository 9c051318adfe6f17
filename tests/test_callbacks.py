"""Callbacks: CSV contents, TensorBoard event files, checkpoints (and resuming from them),
early stopping, stop-at-accuracy, per-step calls."""
import csv
import json
import math

import numpy as np
import pytest

from fastnn import callbacks as cbs
from fastnn import presets, serialize, training
from fastnn.losses import SoftmaxCrossEntropy
from fastnn.optim import SGD, optimizer_from_state
from fastnn.tensorboard import read_events, read_scalars

N_TRAIN, N_TEST = 2000, 500


@pytest.fixture(scope="module")
def data():
    from fastnn.datasets import mnist
    (x, y), (xt, yt) = mnist.load_data()
    return (x[:N_TRAIN].reshape(N_TRAIN, -1), y[:N_TRAIN],
            xt[:N_TEST].reshape(N_TEST, -1), yt[:N_TEST])


def _model(seed=0):
    return presets.build_model(presets.Preset("t", (784, 32, 10), batch_size=64, lr=0.05),
                               seed=seed)


def _fit(model, data, callbacks=(), epochs=2, opt=None, **kw):
    x, y, xt, yt = data
    opt = opt or SGD(model.parameters(), lr=0.05, momentum=0.9)
    return training.fit(model, x, y, epochs=epochs, batch_size=64, loss=SoftmaxCrossEntropy(),
                        optimizer=opt, validation_data=(xt, yt), seed=0, verbose=0,
                        callbacks=callbacks, **kw)


class _FakeState:
    """Just enough of TrainState to drive a callback by hand."""

    def __init__(self, model=None):
        self.model = model
        self.stop_training = False


def _drive(cb, values, monitor="val_loss"):
    """Feed cb.on_epoch_end a sequence of monitor values; return the epochs it stopped at."""
    st = _FakeState(_model())
    cb.set_state(st)
    cb.on_train_begin({})
    for epoch, v in enumerate(values):
        cb.on_epoch_end(epoch, {monitor: v})
        if st.stop_training:
            return epoch + 1
    return None


# ------------------------------------------------------------------ CSVLogger

def test_csv_logger(tmp_path, data):
    path = tmp_path / "sub" / "log.csv"
    h = _fit(_model(), data, [cbs.CSVLogger(path)], epochs=3)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert set(rows[0]) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy",
                            "epoch_time", "samples_per_s"}
    for k in ("loss", "val_accuracy"):
        assert [float(r[k]) for r in rows] == h.history[k]      # repr() round-trips exactly
    hist = json.loads((tmp_path / "sub" / "log.json").read_text())
    assert hist["history"]["loss"] == h.history["loss"] and hist["epoch"] == [0, 1, 2]


def test_csv_logger_append(tmp_path, data):
    path = tmp_path / "log.csv"
    model = _model()
    _fit(model, data, [cbs.CSVLogger(path)], epochs=1)
    _fit(model, data, [cbs.CSVLogger(path, append=True)], epochs=1)
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("epoch,")
    _fit(model, data, [cbs.CSVLogger(path)], epochs=1)        # no append: starts over
    assert len(path.read_text().splitlines()) == 2


# ------------------------------------------------------------------ TensorBoard

def test_tensorboard_epoch_scalars_and_histograms(tmp_path, data):
    h = _fit(_model(), data, [cbs.TensorBoard(tmp_path)], epochs=2)
    train = read_scalars(tmp_path / "train")
    val = read_scalars(tmp_path / "validation")
    assert [v for _, v in train["epoch_loss"]] == pytest.approx(h.history["loss"])
    assert [s for s, _ in train["epoch_loss"]] == [1, 2]
    assert [v for _, v in val["epoch_accuracy"]] == pytest.approx(h.history["val_accuracy"])
    assert "epoch_time" in train and "batch_loss" not in train
    hist_tags = {}
    for ev in read_events(tmp_path / "train"):
        for v in ev["summary"]:
            if "histo" in v:
                hist_tags.setdefault(v["tag"], []).append(ev["step"])
                assert v["histo"]["num"] > 0
    assert hist_tags == {"0.weight": [1, 2], "0.bias": [1, 2], "1.weight": [1, 2],
                         "1.bias": [1, 2]}


@pytest.mark.parametrize("fused", [None, False])
def test_tensorboard_update_freq_steps(tmp_path, data, fused):
    tb = cbs.TensorBoard(tmp_path, histogram_freq=0, update_freq=10)
    assert tb.step_freq == 10
    _fit(_model(), data, [tb], epochs=2, fused=fused)
    train = read_scalars(tmp_path / "train")
    steps = [s for s, _ in train["batch_loss"]]
    per_epoch = -(-N_TRAIN // 64)                           # 32
    assert steps == sorted(set(range(10, 2 * per_epoch + 1, 10)) | {per_epoch, 2 * per_epoch})
    assert all(math.isfinite(v) for _, v in train["batch_loss"])
    assert all(0 <= v <= 1 for _, v in train["batch_accuracy"])
    assert not any("histo" in v for ev in read_events(tmp_path / "train") for v in ev["summary"])


def test_tensorboard_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="update_freq"):
        cbs.TensorBoard(tmp_path, update_freq=0)
    with pytest.raises(ValueError, match="update_freq"):
        cbs.TensorBoard(tmp_path, update_freq="batch")
    with pytest.raises(ValueError, match="histogram_freq"):
        cbs.TensorBoard(tmp_path, histogram_freq=-1)
    with pytest.raises(TypeError, match="logdir"):
        cbs.TensorBoard(3)


# ------------------------------------------------------------------ ModelCheckpoint

def test_checkpoint_loads_and_holds_resume_state(tmp_path, data):
    path = tmp_path / "ck.npz"
    model = _model()
    mc = cbs.ModelCheckpoint(path, extra={"note": "hi"})
    h = _fit(model, data, [mc], epochs=2)
    ck = serialize.load(path, with_optimizer=True)
    np.testing.assert_array_equal(ck.model.flat_params, model.flat_params)
    assert ck.extra["epoch"] == 2 and ck.extra["note"] == "hi"
    assert ck.extra["history"]["history"]["loss"] == h.history["loss"]
    assert ck.extra["rng_state"]["bit_generator"] == "PCG64"
    assert ck.optimizer_state["class"] == "SGD" and ck.optimizer_state["step"] == 64
    assert mc.last_saved == str(path) and mc.epochs_done == 2


@pytest.mark.parametrize("fused", [None, False])
def test_resume_from_checkpoint_file_is_bitwise(tmp_path, data, fused):
    full = _model()
    h_full = _fit(full, data, epochs=3, fused=fused)

    path = tmp_path / "ck.npz"
    part = _model()

    class StopAfter(cbs.Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 1:
                self.state.stop_training = True

    _fit(part, data, [cbs.ModelCheckpoint(path), StopAfter()], epochs=3, fused=fused)
    ck = serialize.load(path, with_optimizer=True)
    model = ck.model
    opt = optimizer_from_state(model.parameters(), ck.optimizer_state)
    h = _fit(model, data, epochs=3, opt=opt, resume=ck.extra, fused=fused)
    np.testing.assert_array_equal(model.flat_params, full.flat_params)
    assert h.history["loss"] == h_full.history["loss"]
    assert h.epoch == [0, 1, 2]


def test_checkpoint_save_initial_and_format(tmp_path, data):
    mc = cbs.ModelCheckpoint(tmp_path / "ck-{epoch:02d}.npz", save_initial=True)
    _fit(_model(), data, [mc], epochs=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck-00.npz", "ck-01.npz", "ck-02.npz"]
    assert serialize.load(tmp_path / "ck-00.npz", with_optimizer=True).extra["epoch"] == 0


def test_checkpoint_save_best_only(tmp_path):
    path = tmp_path / "best.npz"
    mc = cbs.ModelCheckpoint(path, save_best_only=True, monitor="val_loss")
    saved = []

    class Rec(cbs.ModelCheckpoint):
        def _save(self, epoch, logs):
            saved.append(epoch)

    rec = Rec(path, save_best_only=True, monitor="val_loss")
    assert _drive(rec, [0.5, 0.6, 0.4, 0.4, float("nan"), 0.3]) is None
    assert saved == [1, 3, 6] and rec.best == 0.3
    saved.clear()
    rec = Rec(path, save_best_only=True, monitor="val_accuracy")
    _drive(rec, [0.5, 0.6, 0.4, 0.7], monitor="val_accuracy")
    assert saved == [1, 2, 4]
    assert mc.mode == "min"
    with pytest.raises(ValueError, match="mode"):
        cbs.ModelCheckpoint(path, mode="up")


# ------------------------------------------------------------------ EarlyStopping, StopAtAccuracy

def test_early_stopping_rules():
    assert _drive(cbs.EarlyStopping(patience=0), [1.0, 0.9, 0.95]) == 3
    assert _drive(cbs.EarlyStopping(patience=2), [1.0, 0.9, 0.95, 0.91, 0.8]) == 4
    assert _drive(cbs.EarlyStopping(patience=2), [1.0, 0.9, 0.95, 0.8, 0.85, 0.7]) is None
    # min_delta: improvements smaller than it do not count
    assert _drive(cbs.EarlyStopping(patience=1, min_delta=0.1), [1.0, 0.95, 0.92]) == 2
    assert _drive(cbs.EarlyStopping(patience=1, min_delta=0.01), [1.0, 0.95, 0.92]) is None
    # baseline: must beat it within patience epochs
    assert _drive(cbs.EarlyStopping(patience=2, baseline=0.5), [0.9, 0.8, 0.7, 0.4]) == 2
    assert _drive(cbs.EarlyStopping(patience=2, baseline=0.5), [0.9, 0.4, 0.45, 0.3]) is None
    # accuracy-like metrics maximise in auto mode
    es = cbs.EarlyStopping("val_accuracy", patience=1)
    assert es.mode == "max"
    assert _drive(es, [0.5, 0.6, 0.55, 0.58], monitor="val_accuracy") == 3
    assert es.stopped_epoch == 3 and es.best == 0.6


def test_early_stopping_in_fit_restores_best(data):
    model = _model()
    es = cbs.EarlyStopping("loss", patience=1, min_delta=10.0, restore_best_weights=True)
    best = {}

    class Snap(cbs.Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 0:
                best["w"] = self.model.flat_params.copy()

    h = _fit(model, data, [Snap(), es], epochs=10)
    assert len(h.epoch) == 2 and es.stopped_epoch == 2
    np.testing.assert_array_equal(model.flat_params, best["w"])


def test_early_stopping_bad_arguments():
    with pytest.raises(ValueError, match="patience"):
        cbs.EarlyStopping(patience=-1)
    with pytest.raises(ValueError, match="min_delta"):
        cbs.EarlyStopping(min_delta=float("nan"))
    with pytest.raises(TypeError, match="monitor"):
        cbs.EarlyStopping(monitor=None)


def test_missing_monitor_warns(data):
    x, y, _, _ = data
    model = _model()
    with pytest.warns(RuntimeWarning, match="not in the logs"):
        training.fit(model, x, y, epochs=1, batch_size=64, loss=SoftmaxCrossEntropy(),
                     optimizer=SGD(model.parameters(), lr=0.1), verbose=0,
                     callbacks=[cbs.EarlyStopping("val_loss")])


def test_stop_at_accuracy(data):
    stop = cbs.StopAtAccuracy(0.5)
    h = _fit(_model(), data, [stop], epochs=5)
    assert len(h.epoch) == 1 and stop.reached_epoch == 1
    stop = cbs.StopAtAccuracy(1.0)
    h = _fit(_model(), data, [stop], epochs=2)
    assert len(h.epoch) == 2 and stop.reached_epoch is None
    with pytest.raises(ValueError, match="target"):
        cbs.StopAtAccuracy(1.5)


def test_ctrl_c_during_a_checkpoint_save_is_delivered_after_it(tmp_path, data, monkeypatch):
    """SIGINT in the middle of a save: the save and last_saved complete, then
    KeyboardInterrupt comes out of fit."""
    import os
    import signal
    real_save = serialize.save

    def save_with_ctrl_c(*args, **kw):
        os.kill(os.getpid(), signal.SIGINT)          # arrives while the file is being written
        return real_save(*args, **kw)

    monkeypatch.setattr(serialize, "save", save_with_ctrl_c)
    # Python's own Ctrl-C handler, as in an interactive run: a run started in the background
    # by a non-interactive shell inherits SIGINT ignored, and an ignored Ctrl-C is dropped
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _ctrl_c_during_save(tmp_path, data)
    finally:
        signal.signal(signal.SIGINT, old)


def _ctrl_c_during_save(tmp_path, data):
    import signal
    mc = cbs.ModelCheckpoint(tmp_path / "ck.npz", save_initial=True)
    with pytest.raises(KeyboardInterrupt):
        _fit(_model(), data, [mc], epochs=2)
    assert mc.last_saved == str(tmp_path / "ck.npz") and mc.epochs_done == 0
    assert serialize.load(tmp_path / "ck.npz", with_optimizer=True).extra["epoch"] == 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
