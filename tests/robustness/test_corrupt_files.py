"""Corrupt IDX files and checkpoints: every outcome is a clean result or DataFormatError.

Truncation at every byte boundary, every single-byte flip (checkpoints:
hypothesis-chosen flips), wrong magic bytes, absurd dimensions (with a
tracemalloc bound on what they may allocate), and no pickle anywhere.

Run with ``-s`` to see how many inputs each test tried (TRIED, printed at
the end of the module).
"""
import gzip
import io
import os
import pickle
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastnn import layers, serialize
from fastnn.datasets import load_idx
from fastnn.errors import DataFormatError
from fastnn.sequential import Sequential

TRIED = {}
HYP = settings(max_examples=150, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.function_scoped_fixture,
                                      HealthCheck.too_slow])
# An absurd header may cost the reader this much, no more.
ALLOC_LIMIT = 4 << 20


def count(name, n=1):
    TRIED[name] = TRIED.get(name, 0) + n


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    total = sum(v for k, v in TRIED.items() if not k.endswith("_identical"))
    print("\n[robustness] inputs tried:", ", ".join(f"{k}={v}" for k, v in sorted(TRIED.items())),
          f"| total={total}")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("corrupt")


def idx_bytes(arr, code):
    head = bytes([0, 0, code, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


SMALL = np.arange(60, dtype=np.int16).reshape(3, 4, 5) - 30
SMALL_RAW = idx_bytes(SMALL, 0x0B)                  # 16 header + 120 payload bytes
SMALL_GZ = gzip.compress(SMALL_RAW, mtime=0)


def put(path, data):
    with open(path, "wb") as fh:
        fh.write(data)
    return str(path)


def load_outcome(path):
    """load_idx result, or None when it raised DataFormatError (any other exception fails)."""
    try:
        return load_idx(path)
    except DataFormatError:
        return None


# ----------------------------------------------------------------------------- IDX

@pytest.mark.parametrize("kind, good", [("raw", SMALL_RAW), ("gz", SMALL_GZ)])
def test_idx_every_truncation(work, kind, good):
    p = str(work / f"trunc.{kind}")
    np.testing.assert_array_equal(load_idx(put(p, good)), SMALL)
    for n in range(len(good)):
        with pytest.raises(DataFormatError):
            load_idx(put(p, good[:n]))
        count(f"idx_{kind}_truncations")


@pytest.mark.parametrize("kind, good", [("raw", SMALL_RAW), ("gz", SMALL_GZ)])
def test_idx_trailing_garbage(work, kind, good):
    p = str(work / f"trail.{kind}")
    for extra in (b"\x00", b"\x01", b"\x1f\x8b", b"junk" * 5, bytes(512)):
        got = load_outcome(put(p, good + extra))
        # A gzip stream may legally be followed by zero padding; raw never.
        assert got is None or (kind == "gz" and not any(extra))
        count(f"idx_{kind}_trailing")


@pytest.mark.parametrize("kind, good", [("raw", SMALL_RAW), ("gz", SMALL_GZ)])
def test_idx_every_byte_flip(work, kind, good):
    p = str(work / f"flip.{kind}")
    for i in range(len(good)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(good)
            bad[i] ^= mask
            got = load_outcome(put(p, bytes(bad)))
            if got is not None:
                if kind == "gz":
                    # The gzip CRC catches data damage: what loads is the original
                    # (a flip in mtime/OS/flags-free header bytes changes nothing).
                    np.testing.assert_array_equal(got, SMALL)
                else:
                    # Raw IDX has no checksum: a payload flip loads, a header flip must
                    # still describe exactly the bytes present.
                    assert got.nbytes == len(good) - 4 - 4 * got.ndim
            count(f"idx_{kind}_flips")


@HYP
@given(data=st.binary(min_size=0, max_size=200), gz=st.booleans())
def test_idx_random_bytes(work, data, gz):
    p = put(work / "random", gzip.compress(data) if gz else data)
    got = load_outcome(p)
    assert got is None or isinstance(got, np.ndarray)
    count("idx_random_files")


@HYP
@given(i=st.integers(0, len(SMALL_GZ) - 1), mask=st.integers(1, 255), j=st.integers(0, 200),
       mask2=st.integers(0, 255))
def test_idx_gz_random_double_flips(work, i, mask, j, mask2):
    bad = bytearray(SMALL_GZ)
    bad[i] ^= mask
    bad[j % len(bad)] ^= mask2
    got = load_outcome(put(work / "flip2.gz", bytes(bad)))
    assert got is None or np.array_equal(got, SMALL)
    count("idx_gz_double_flips")


def test_idx_every_wrong_magic(work):
    p = str(work / "magic")
    body = struct.pack(">I", 4) + b"\x01\x02\x03\x04"
    for b0 in range(256):
        for b1 in range(256):
            if b0 == 0 and b1 == 0:
                continue
            if (b0, b1) == (0x1F, 0x8B):
                continue                 # that is the gzip magic: covered by the gzip tests
            if b1 % 51 and b0 % 51:      # a thinned grid: 0, 51, 102, ... in either byte
                continue
            with pytest.raises(DataFormatError, match="magic"):
                load_idx(put(p, bytes([b0, b1, 0x08, 1]) + body))
            count("idx_wrong_magic")
    valid = {0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E}
    for code in range(256):
        if code in valid:
            continue
        with pytest.raises(DataFormatError, match="type code"):
            load_idx(put(p, bytes([0, 0, code, 1]) + body))
        count("idx_wrong_type_code")
    for ndim in list(range(9, 256)) + [0]:
        with pytest.raises(DataFormatError, match="dimensions"):
            load_idx(put(p, bytes([0, 0, 0x08, ndim]) + body))
        count("idx_wrong_ndim")


def _peak_during(fn):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        try:
            fn()
        finally:
            peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dims=st.lists(st.integers(0, 2 ** 32 - 1), min_size=1, max_size=8),
       code=st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]),
       gz=st.booleans(), payload=st.integers(0, 64))
def test_idx_absurd_dims_allocate_little(work, dims, code, gz, payload):
    itemsize = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}[code]
    declared = itemsize * int(np.prod(dims, dtype=object))
    if declared <= payload:              # consistent files are not the point here
        return
    raw = bytes([0, 0, code, len(dims)]) + struct.pack(">" + "I" * len(dims), *dims) \
        + bytes(payload)
    p = put(work / "absurd", gzip.compress(raw) if gz else raw)

    def attempt():
        with pytest.raises(DataFormatError):
            load_idx(p)

    assert _peak_during(attempt) < ALLOC_LIMIT
    count("idx_absurd_headers")


@pytest.mark.parametrize("gz", [False, True])
def test_idx_2pow31_images_claim(work, gz):
    raw = b"\x00\x00\x08\x03" + struct.pack(">III", 2 ** 31, 28, 28) + bytes(28 * 28 * 3)
    p = put(work / "claim", gzip.compress(raw) if gz else raw)
    peak = _peak_during(lambda: pytest.raises(DataFormatError, load_idx, p))
    assert peak < ALLOC_LIMIT
    count("idx_absurd_headers")


def test_idx_gzip_bomb_stops_at_declared_size(work):
    # Declares 100 bytes, decompresses to 64 MB of zeros: reading must stop early.
    raw = b"\x00\x00\x08\x01" + struct.pack(">I", 100) + bytes(64 << 20)
    p = put(work / "bomb.gz", gzip.compress(raw, compresslevel=9))
    peak = _peak_during(lambda: pytest.raises(DataFormatError, load_idx, p))
    assert peak < ALLOC_LIMIT
    count("idx_absurd_headers")


# ----------------------------------------------------------------------------- checkpoints

@pytest.fixture(scope="module")
def ckpt(work):
    model = Sequential([layers.Dense(3, 2, dtype=np.float32)], seed=0)
    path = str(work / "good.npz")
    serialize.save(model, path, extra={"epoch": 1})
    with open(path, "rb") as fh:
        return fh.read(), model


def ck_outcome(path, model):
    """Loaded and identical to ``model`` -> True; DataFormatError -> None."""
    try:
        got = serialize.load(path, with_optimizer=True)
    except DataFormatError:
        return None
    assert got.model.get_config() == model.get_config() and got.extra == {"epoch": 1}
    np.testing.assert_array_equal(got.model.flat_params, model.flat_params)
    return True


def test_checkpoint_every_truncation(work, ckpt):
    good, model = ckpt
    p = str(work / "trunc.npz")
    assert ck_outcome(put(p, good), model)
    for n in range(len(good)):
        with pytest.raises(DataFormatError):
            serialize.load(put(p, good[:n]))
        count("checkpoint_truncations")


def test_checkpoint_every_byte_flip(work, ckpt):
    good, model = ckpt
    p = str(work / "flip.npz")
    loaded = 0
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= 0xFF
        # Some zip bytes (timestamps, "version made by") are not checked by
        # anyone; then the checkpoint must load exactly as saved.
        loaded += bool(ck_outcome(put(p, bytes(bad)), model))
        count("checkpoint_flips")
    count("checkpoint_flips_that_loaded_identical", loaded)
    assert loaded < len(good) // 4


@HYP
@given(flips=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(1, 255)),
                      min_size=1, max_size=4))
def test_checkpoint_random_flips(work, ckpt, flips):
    good, model = ckpt
    bad = bytearray(good)
    for i, mask in flips:
        bad[i % len(bad)] ^= mask
    ck_outcome(put(work / "hflip.npz", bytes(bad)), model)
    count("checkpoint_random_flips")


@HYP
@given(data=st.binary(max_size=400))
def test_checkpoint_random_bytes(work, data):
    with pytest.raises(DataFormatError):
        serialize.load(put(work / "rand.npz", data))
    count("checkpoint_random_files")


def test_checkpoint_wrong_magic(work, ckpt):
    good, _ = ckpt
    p = str(work / "magic.npz")
    for i in range(4):                   # the PK\x03\x04 of the first local header
        for v in range(0, 256, 5):
            if v == good[i]:
                continue
            bad = bytearray(good)
            bad[i] = v
            with pytest.raises(DataFormatError):
                serialize.load(put(p, bytes(bad)))
            count("checkpoint_wrong_magic")


def _forge_npy_member(path, member, header_shape, data_len):
    """Rewrite ``member`` with a .npy header claiming ``header_shape`` over ``data_len`` bytes."""
    with zipfile.ZipFile(path) as zf:
        items = {n: zf.read(n) for n in zf.namelist()}
    hdr = {"descr": "<f4", "fortran_order": False, "shape": header_shape}
    buf = np.lib.format.magic(1, 0)
    text = repr(hdr).encode("latin1")
    pad = 64 - (len(buf) + 2 + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    items[member] = buf + struct.pack("<H", len(text)) + text + bytes(data_len)
    with zipfile.ZipFile(path, "w") as zf:
        for n, b in items.items():
            zf.writestr(n, b)


@pytest.mark.parametrize("shape", [(2 ** 31, 2 ** 20), (2 ** 40,), (3, 2 ** 35), (2 ** 62,)])
def test_checkpoint_absurd_npy_header_allocates_little(work, ckpt, shape):
    good, _ = ckpt
    p = put(work / "absurd.npz", good)
    _forge_npy_member(p, "param.000.npy", shape, 24)
    peak = _peak_during(lambda: pytest.raises(DataFormatError, serialize.load, p))
    assert peak < ALLOC_LIMIT
    count("checkpoint_absurd_headers")


def test_no_pickle_anywhere(work, ckpt, monkeypatch):
    good, model = ckpt

    def refuse(*a, **k):
        raise AssertionError("pickle was used")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    # A pickled object array replacing a legitimate member (and one added beside them).
    for member in ("meta.npy", "param.000.npy", "zz.npy"):
        p = put(work / "pickled.npz", good)
        with zipfile.ZipFile(p) as zf:
            items = {n: zf.read(n) for n in zf.namelist()}
        bio = io.BytesIO()
        np.lib.format.write_array(bio, np.array([os.getcwd, {"a": 1}], dtype=object),
                                  allow_pickle=True)
        items[member] = bio.getvalue()
        with zipfile.ZipFile(p, "w") as zf:
            for n, b in items.items():
                zf.writestr(n, b)
        with pytest.raises(DataFormatError, match="pickled"):
            serialize.load(p)
        count("checkpoint_pickled")
    # And a file that is itself a pickle.
    p = put(work / "pickle.npz", pickle.dumps({"weights": [1, 2]}, protocol=4))
    with pytest.raises(DataFormatError):
        serialize.load(p)
    count("checkpoint_pickled")
    # Saving then loading works with pickle disabled: the format never needs it.
    serialize.save(model, work / "nopickle.npz")
    np.testing.assert_array_equal(serialize.load(work / "nopickle.npz").flat_params,
                                  model.flat_params)
