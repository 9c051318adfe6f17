"""fastnn.tensorboard: CRC32C, TFRecord framing, protobuf encoding, writer API, reader,
and cross-checks against the real tensorboard package (skipped when it is absent)."""
import os
import struct

import numpy as np
import pytest

from fastnn import tensorboard as tb
from fastnn.errors import DataFormatError


def only_file(logdir):
    files = [f for f in os.listdir(logdir) if f.startswith("events.out.tfevents.")]
    assert len(files) == 1, files
    return os.path.join(logdir, files[0])


def write_demo(logdir):
    rng = np.random.default_rng(0)
    vals = rng.standard_normal(1000) * 3 + 1
    with tb.SummaryWriter(logdir) as w:
        for step in range(5):
            w.add_scalar("train/loss", 1.0 / (step + 1), step)
            w.add_scalar("val/accuracy", np.float32(0.1 * step), np.int64(step))
        w.add_histogram("dense/weight", vals, 4)
    return vals


# ----------------------------------------------------------------------------- CRC32C

@pytest.mark.parametrize("data, crc", [
    (b"", 0x00000000),
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),                 # RFC 3720 B.4 test vectors
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
])
def test_crc32c_known_vectors(data, crc):
    assert tb.crc32c(data) == crc


def test_masked_crc_matches_tensorboard():
    pw = pytest.importorskip("tensorboard.compat.tensorflow_stub.pywrap_tensorflow")
    rng = np.random.default_rng(1)
    for n in (0, 1, 7, 8, 100, 1000):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert tb._masked_crc(data) == pw.masked_crc32c(data)


# ----------------------------------------------------------------------------- framing / encoding

def test_file_name_and_first_record(tmp_path):
    w = tb.SummaryWriter(tmp_path / "run")
    w.close()
    path = only_file(tmp_path / "run")
    name = os.path.basename(path).split(".")
    assert name[:3] == ["events", "out", "tfevents"] and name[3].isdigit()
    data = open(path, "rb").read()
    length, = struct.unpack("<Q", data[:8])
    assert len(data) == 8 + 4 + length + 4
    body = data[12:12 + length]
    assert struct.unpack("<I", data[8:12])[0] == tb._masked_crc(data[:8])
    assert struct.unpack("<I", data[-4:])[0] == tb._masked_crc(body)
    # wall_time (field 1, double), step 0, then file_version (field 3, string)
    assert body[0] == 0x09 and b"\x1a\x0dbrain.Event:2" in body
    ev = tb.read_events(path)
    assert len(ev) == 1 and ev[0]["file_version"] == "brain.Event:2"


def test_protobuf_parses_with_official_schema(tmp_path):
    event_pb2 = pytest.importorskip("tensorboard.compat.proto.event_pb2")
    vals = write_demo(tmp_path)
    data = open(only_file(tmp_path), "rb").read()
    pos, events = 0, []
    while pos < len(data):
        n, = struct.unpack("<Q", data[pos:pos + 8])
        events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + n]))
        pos += 16 + n
    assert events[0].file_version == "brain.Event:2"
    assert [(e.step, e.summary.value[0].tag) for e in events[1:3]] == [
        (0, "train/loss"), (0, "val/accuracy")]
    assert events[3].summary.value[0].simple_value == pytest.approx(0.5)
    h = events[-1].summary.value[0].histo
    assert h.num == 1000 and h.min == vals.min() and h.max == vals.max()
    assert h.sum == pytest.approx(vals.sum()) and sum(h.bucket) == 1000


def test_negative_and_large_steps(tmp_path):
    with tb.SummaryWriter(tmp_path) as w:
        for s in (-1, -(1 << 63), (1 << 63) - 1, 1 << 40):
            w.add_scalar("x", 1.5, s)
    assert [s for s, _ in tb.read_scalars(tmp_path)["x"]] == [-1, -(1 << 63), (1 << 63) - 1,
                                                               1 << 40]


# ----------------------------------------------------------------------------- round trip

def test_scalars_roundtrip(tmp_path):
    write_demo(tmp_path)
    sc = tb.read_scalars(tmp_path)
    assert set(sc) == {"train/loss", "val/accuracy"}
    assert [s for s, _ in sc["train/loss"]] == list(range(5))
    np.testing.assert_array_equal([v for _, v in sc["train/loss"]],
                                  np.float32([1.0 / (s + 1) for s in range(5)]))
    walls = [e["wall_time"] for e in tb.read_events(tmp_path)]
    assert walls == sorted(walls)


def test_explicit_walltime(tmp_path):
    with tb.SummaryWriter(tmp_path) as w:
        w.add_scalar("a", 2.0, 3, walltime=1234.5)
    assert tb.read_events(tmp_path)[-1]["wall_time"] == 1234.5


def check_histogram(h, vals):
    assert h["num"] == vals.size and h["min"] == vals.min() and h["max"] == vals.max()
    assert h["sum"] == pytest.approx(vals.sum())
    assert h["sum_squares"] == pytest.approx(np.dot(vals, vals))
    assert len(h["bucket"]) == len(h["bucket_limit"])
    assert sum(h["bucket"]) == vals.size
    assert np.all(np.diff(h["bucket_limit"]) > 0)


def test_histogram_default_buckets(tmp_path):
    vals = np.concatenate([np.random.default_rng(2).standard_normal(500), [0.0, 0.0, -7.25]])
    with tb.SummaryWriter(tmp_path) as w:
        w.add_histogram("h", vals.astype(np.float32), 0)
    h = tb.read_events(tmp_path)[-1]["summary"][0]["histo"]
    vals = vals.astype(np.float32).astype(np.float64)
    check_histogram(h, vals)
    # Every bucket holds exactly the values in [previous limit, limit).
    limits = np.array(h["bucket_limit"])
    lower = np.concatenate([[-np.inf], limits[:-1]])
    counts = [np.sum((vals >= lo) & (vals < hi)) for lo, hi in zip(lower, limits)]
    np.testing.assert_array_equal(h["bucket"], counts)
    assert set(limits) <= set(tb.default_buckets())


def test_default_bucket_layout():
    b = tb.default_buckets()
    # 774 powers 1e-12 * 1.1**k below 1e20, then DBL_MAX, mirrored, 0 in the middle.
    assert b.size == 1551 and b[775] == 0.0 and b[776] == 1e-12 and b[-2] < 1e20 < b[-2] * 1.1
    assert b[-1] == np.finfo(np.float64).max
    np.testing.assert_array_equal(b[:775], -b[776:][::-1])
    assert not b.flags.writeable


@pytest.mark.parametrize("bins", [1, 7, 30, "auto"])
def test_histogram_numeric_bins(tmp_path, bins):
    vals = np.arange(-50, 51, dtype=np.int32)
    with tb.SummaryWriter(tmp_path) as w:
        w.add_histogram("h", vals, 1, bins=bins)
    h = tb.read_events(tmp_path)[-1]["summary"][0]["histo"]
    check_histogram(h, vals.astype(np.float64))
    if isinstance(bins, int):
        assert len(h["bucket"]) == bins and h["bucket_limit"][-1] == 50


def test_two_writers_same_dir(tmp_path):
    with tb.SummaryWriter(tmp_path) as a, tb.SummaryWriter(tmp_path) as b:
        a.add_scalar("a", 1.0, 0)
        b.add_scalar("b", 2.0, 0)
    assert len(os.listdir(tmp_path)) == 2
    assert set(tb.read_scalars(tmp_path)) == {"a", "b"}


def test_flush_makes_records_visible(tmp_path):
    w = tb.SummaryWriter(tmp_path)
    w.add_scalar("x", 1.0, 0)
    w.flush()
    assert tb.read_scalars(tmp_path) == {"x": [(0, 1.0)]}
    w.close()
    w.close()                                   # idempotent


# ----------------------------------------------------------------------------- bad input

def test_argument_errors(tmp_path):
    w = tb.SummaryWriter(tmp_path)
    with pytest.raises(TypeError, match="tag"):
        w.add_scalar("", 1.0, 0)
    with pytest.raises(TypeError, match="tag"):
        w.add_scalar(3, 1.0, 0)
    with pytest.raises(TypeError, match="step"):
        w.add_scalar("a", 1.0, 1.5)
    with pytest.raises(TypeError, match="step"):
        w.add_scalar("a", 1.0, True)
    with pytest.raises(ValueError, match="int64"):
        w.add_scalar("a", 1.0, 1 << 63)
    with pytest.raises(TypeError, match="real number"):
        w.add_scalar("a", "1.0", 0)
    with pytest.raises(ValueError, match="empty"):
        w.add_histogram("h", [], 0)
    with pytest.raises(ValueError, match="NaN"):
        w.add_histogram("h", [1.0, np.nan], 0)
    with pytest.raises(ValueError, match="bins"):
        w.add_histogram("h", [1.0], 0, bins=0)
    with pytest.raises(TypeError, match="numeric"):
        w.add_histogram("h", ["a"], 0)
    w.close()
    with pytest.raises(ValueError, match="closed"):
        w.add_scalar("a", 1.0, 0)
    assert len(tb.read_events(tmp_path)) == 1       # nothing half-written


def test_reader_detects_corruption_and_truncation(tmp_path):
    write_demo(tmp_path)
    path = only_file(tmp_path)
    good = open(path, "rb").read()
    n_events = len(tb.read_events(path))
    bad = bytearray(good)
    bad[len(good) // 2] ^= 0x01
    open(path, "wb").write(bytes(bad))
    with pytest.raises(DataFormatError, match="CRC"):
        tb.read_events(path)
    open(path, "wb").write(good[:-5])
    with pytest.raises(DataFormatError, match="truncated"):
        tb.read_events(path)
    assert len(tb.read_events(path, strict=False)) == n_events - 1


def test_reader_every_truncation_and_flip(tmp_path):
    with tb.SummaryWriter(tmp_path) as w:
        w.add_scalar("a", 1.0, 1)
        w.add_histogram("h", [1.0, 2.0, 3.0], 2, bins=2)
    path = only_file(tmp_path)
    good = open(path, "rb").read()
    cut = tmp_path / "cut"
    tried = 0
    for n in range(len(good)):
        cut.write_bytes(good[:n])
        try:
            events = tb.read_events(str(cut))
            assert n == 0 or len(events) < 3   # only whole records, never garbage
        except DataFormatError:
            pass
        tried += 1
        bad = bytearray(good)
        bad[n] ^= 0x10
        cut.write_bytes(bytes(bad))
        with pytest.raises(DataFormatError):
            tb.read_events(str(cut))
        tried += 1
    assert tried == 2 * len(good)


def test_directory_without_events(tmp_path):
    with pytest.raises(FileNotFoundError, match="no event files"):
        tb.read_events(tmp_path)


# ----------------------------------------------------------------------------- real TensorBoard

def test_tensorboard_event_accumulator_reads_our_files(tmp_path):
    ea_mod = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    vals = write_demo(tmp_path)
    acc = ea_mod.EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    assert set(tags["scalars"]) == {"train/loss", "val/accuracy"}
    assert tags["histograms"] == ["dense/weight"]
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(5))
    np.testing.assert_allclose([e.value for e in loss], [1.0 / (s + 1) for s in range(5)],
                               rtol=1e-6)
    acc_vals = [e.value for e in acc.Scalars("val/accuracy")]
    np.testing.assert_allclose(acc_vals, [0.1 * s for s in range(5)], rtol=1e-6)
    (hev,) = acc.Histograms("dense/weight")
    h = hev.histogram_value
    assert hev.step == 4 and h.num == 1000
    assert h.min == pytest.approx(vals.min()) and h.max == pytest.approx(vals.max())
    assert h.sum == pytest.approx(vals.sum()) and sum(h.bucket) == 1000
    assert h.sum_squares == pytest.approx(np.dot(vals, vals))
