"""fastnn.plot: history readers (CSV, JSON, TensorBoard) and the PNG they become."""
import json
import math
import struct
import sys

import pytest

from fastnn import plot
from fastnn.errors import DataFormatError
from fastnn.tensorboard import SummaryWriter

PNG_SIG = b"\x89PNG\r\n\x1a\n"
HIST = {"loss": [2.0, 1.0, 0.5], "accuracy": [0.5, 0.7, 0.9],
        "val_loss": [2.1, 1.2, 0.8], "val_accuracy": [0.45, 0.6, 0.8]}


def png_size(path):
    data = open(path, "rb").read()
    assert data[:8] == PNG_SIG and len(data) > 1000
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def write_csv(path, hist=HIST):
    keys = list(hist)
    lines = ["epoch," + ",".join(keys)]
    for i in range(len(hist[keys[0]])):
        lines.append(f"{i + 1}," + ",".join(repr(hist[k][i]) for k in keys))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_to_png(tmp_path):
    pytest.importorskip("matplotlib")
    src = write_csv(tmp_path / "log.csv")
    out = plot.plot_curves(src, tmp_path / "sub" / "curves.png", title="MNIST")
    w, h = png_size(out)
    assert (w, h) == (1100, 400)             # two panels at dpi 100


def test_loss_only_gives_one_panel(tmp_path):
    pytest.importorskip("matplotlib")
    src = write_csv(tmp_path / "log.csv", {"loss": [3.0, 2.0]})
    assert png_size(plot.plot_curves(src, tmp_path / "c.png"))[0] == 550


def test_read_csv_values(tmp_path):
    src = write_csv(tmp_path / "log.csv")
    cols = plot.read_history(src)
    assert cols["epoch"] == [1.0, 2.0, 3.0]
    for k, v in HIST.items():
        assert cols[k] == v


def test_csv_blank_cells_become_nan(tmp_path):
    p = tmp_path / "h.csv"
    p.write_text("epoch,loss,val_loss,note\n1,2.0,,a\n2,1.0,0.9,b\n")
    cols = plot.read_history(p)
    assert math.isnan(cols["val_loss"][0]) and cols["val_loss"][1] == 0.9
    assert "note" not in cols                # non-numeric column dropped


@pytest.mark.parametrize("payload", [
    HIST,
    [{k: HIST[k][i] for k in HIST} for i in range(3)],
    {"history": HIST, "epoch": [0, 1, 2], "params": {"epochs": 3}},   # History.to_dict()
])
def test_json_forms(tmp_path, payload):
    p = tmp_path / "h.json"
    p.write_text(json.dumps(payload))
    cols = plot.read_history(p)
    for k, v in HIST.items():
        assert cols[k] == v
    if isinstance(payload, dict) and "history" in payload:
        assert cols["epoch"] == [1.0, 2.0, 3.0]


def test_tensorboard_dir_like_callback(tmp_path):
    # Layout of fastnn.callbacks.TensorBoard: <logdir>/train and <logdir>/validation.
    with SummaryWriter(tmp_path / "train") as tr, SummaryWriter(tmp_path / "validation") as va:
        for e in range(3):
            tr.add_scalar("batch_loss", 9.0, e * 10)
            tr.add_scalar("epoch_loss", HIST["loss"][e], e + 1)
            tr.add_scalar("epoch_accuracy", HIST["accuracy"][e], e + 1)
            va.add_scalar("epoch_loss", HIST["val_loss"][e], e + 1)
            va.add_scalar("epoch_accuracy", HIST["val_accuracy"][e], e + 1)
    cols = plot.read_history(tmp_path)
    assert set(cols) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy"}
    assert cols["epoch"] == [1.0, 2.0, 3.0]
    for k, v in HIST.items():
        assert cols[k] == pytest.approx(v, rel=1e-6)        # stored as float32
    pytest.importorskip("matplotlib")
    assert png_size(plot.plot_curves(tmp_path, tmp_path / "tb.png")) == (1100, 400)


def test_tensorboard_slash_tags(tmp_path):
    with SummaryWriter(tmp_path) as w:
        w.add_scalar("train/loss", 1.0, 1)
        w.add_scalar("val/loss", 2.0, 1)
    cols = plot.read_history(tmp_path)
    assert cols["loss"] == [1.0] and cols["val_loss"] == [2.0]


def test_missing_matplotlib_message(tmp_path, monkeypatch):
    src = write_csv(tmp_path / "log.csv")
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match=r"pip install fastnn\[plot\]"):
        plot.plot_curves(src, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("content, name, msg", [
    ("", "e.csv", "empty"),
    ("epoch,loss\n1,2\n3\n", "r.csv", "row 3 has 1 fields"),
    ("epoch,lr\n1,0.1\n", "n.csv", "nothing to plot"),
    ("{broken", "b.json", "not valid JSON"),
    ('{"loss": [1, 2], "acc": [1]}', "l.json", "different lengths"),
    ('"text"', "t.json", "expected"),
])
def test_bad_sources(tmp_path, content, name, msg):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(DataFormatError, match=msg):
        plot.plot_curves(p, tmp_path / "x.png")


def test_binary_file_is_a_data_format_error(tmp_path):
    """A checkpoint passed by mistake: a clear DataFormatError, not UnicodeDecodeError."""
    p = tmp_path / "model.npz"
    p.write_bytes(b"PK\x03\x04\xb1\xff\x00" * 10)
    with pytest.raises(DataFormatError, match="not a text CSV file"):
        plot.read_history(p)


def test_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError):
        plot.plot_curves(tmp_path / "nope.csv", tmp_path / "x.png")
    with pytest.raises(DataFormatError, match="no scalar events"):
        plot.read_history(tmp_path)


def test_logdir_prefers_csv_history(tmp_path):
    # fastnn train --logdir writes both: log.csv (float64) and train/validation events.
    write_csv(tmp_path / "log.csv")
    with SummaryWriter(tmp_path / "train") as tr:
        tr.add_scalar("epoch_loss", 99.0, 1)
        tr.add_scalar("epoch_time", 0.5, 1)
    assert plot.read_history(tmp_path)["loss"] == HIST["loss"]
    (tmp_path / "log.csv").unlink()
    cols = plot.read_history(tmp_path)
    assert cols["loss"] == [99.0] and cols["epoch_time"] == [0.5]


def test_real_training_logdir(tmp_path):
    """End to end with the training engineer's callbacks."""
    import numpy as np
    from fastnn import callbacks, layers, losses, optim
    from fastnn import Sequential
    model = Sequential([layers.Dense(4, 2)], seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 4)).astype(np.float32)
    y = np.arange(32) % 2
    model.fit(x, y, epochs=2, batch_size=8, loss=losses.SoftmaxCrossEntropy(),
              optimizer=optim.SGD(model, lr=0.1), validation_data=(x, y), verbose=0,
              callbacks=[callbacks.TensorBoard(tmp_path),
                         callbacks.CSVLogger(tmp_path / "log.csv")])
    from_csv = plot.read_history(tmp_path)
    (tmp_path / "log.csv").unlink()
    (tmp_path / "log.json").unlink()
    from_events = plot.read_history(tmp_path)
    for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(from_events[k], from_csv[k], rtol=1e-6)
    pytest.importorskip("matplotlib")
    png_size(plot.plot_curves(tmp_path, tmp_path / "c.png"))
