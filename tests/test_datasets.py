"""fastnn.datasets: the IDX reader and the MNIST loader (search path, checksums, mirrors).

No test touches the network: an autouse fixture makes every non-loopback
urlopen fail, mirrors are served by a local function or by http.server on
127.0.0.1.
"""
import functools
import gzip
import hashlib
import http.server
import os
import shutil
import struct
import threading
import urllib.parse
import urllib.request

import numpy as np
import pytest

from fastnn.datasets import load_idx, mnist
from fastnn.datasets.idx import MAX_PAYLOAD_BYTES
from fastnn.errors import DataFormatError, DatasetNotFoundError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_DIR = os.path.join(ROOT, "data", "mnist")
CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C,
         np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(arr, code=None):
    """The IDX encoding of ``arr`` (an independent writer: the test's spec of the format)."""
    arr = np.asarray(arr)
    code = CODES[arr.dtype.type] if code is None else code
    head = bytes([0, 0, code, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write(path, data):
    with open(path, "wb") as fh:
        fh.write(data)
    return str(path)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    real = urllib.request.urlopen

    def guarded(url, *args, **kwargs):
        host = urllib.parse.urlparse(url if isinstance(url, str) else url.full_url).hostname
        if host not in ("127.0.0.1", "localhost"):
            raise AssertionError(f"test tried to reach the network: {url}")
        return real(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No FASTNN_DATA, cwd and cache in tmp, no checkout dir: MNIST is nowhere."""
    monkeypatch.delenv("FASTNN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(mnist, "_checkout_dir", lambda: None)
    monkeypatch.setattr(mnist, "_cache", {})
    return tmp_path


# ----------------------------------------------------------------------------- load_idx

@pytest.mark.parametrize("dtype", list(CODES))
@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip_every_type(tmp_path, dtype, gz):
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal((3, 5, 7)) * 100).astype(dtype)
    data = idx_bytes(arr)
    p = write(tmp_path / "a.idx", gzip.compress(data) if gz else data)
    out = load_idx(p)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("shape", [(0,), (1,), (13,), (2, 0, 3), (1,) * 8, (2, 3, 1, 5)])
def test_idx_awkward_shapes(tmp_path, shape):
    arr = np.arange(int(np.prod(shape)), dtype=np.int16).reshape(shape)
    for data in (idx_bytes(arr), gzip.compress(idx_bytes(arr))):
        out = load_idx(write(tmp_path / "x", data))
        assert out.shape == shape
        np.testing.assert_array_equal(out, arr)


def test_idx_detects_gzip_by_magic_not_name(tmp_path):
    arr = np.arange(10, dtype=np.uint8)
    np.testing.assert_array_equal(load_idx(write(tmp_path / "raw.gz", idx_bytes(arr))), arr)
    gz = gzip.compress(idx_bytes(arr))
    np.testing.assert_array_equal(load_idx(write(tmp_path / "plain.idx", gz)), arr)


def test_idx_multi_member_gzip(tmp_path):
    data = idx_bytes(np.arange(100, dtype=np.int32))
    two = gzip.compress(data[:37]) + gzip.compress(data[37:])
    np.testing.assert_array_equal(load_idx(write(tmp_path / "m", two)), np.arange(100))


def test_idx_reads_committed_mnist_file():
    y = load_idx(os.path.join(MNIST_DIR, "t10k-labels-idx1-ubyte.gz"))
    assert y.shape == (10000,) and y.dtype == np.uint8
    assert y[:5].tolist() == [7, 2, 1, 0, 4]


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated_and_trailing(tmp_path, gz):
    data = idx_bytes(np.arange(24, dtype=np.int32).reshape(2, 3, 4))
    enc = gzip.compress if gz else (lambda b: b)
    p = write(tmp_path / "t", enc(data[:-3]))
    with pytest.raises(DataFormatError, match=r"truncated.*96 payload bytes.*93") as ei:
        load_idx(p)
    assert str(p) in str(ei.value)
    p = write(tmp_path / "g", enc(data + b"xyz"))
    trailing = r"trailing.*96 payload bytes.*holds (99|more than 96)"
    with pytest.raises(DataFormatError, match=trailing):
        load_idx(p)


@pytest.mark.parametrize("head, msg", [
    (b"\x01\x00\x08\x01", "bad magic"),
    (b"\x00\x00\x07\x01", "unknown data type code 0x07"),
    (b"\x00\x00\x08\x00", "number of dimensions is 0"),
    (b"\x00\x00\x08\x09", "number of dimensions is 9"),
    (b"\x00\x00", "truncated header"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x01\x00", "expected 16 header bytes, got 9"),
])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_bad_header(tmp_path, head, msg, gz):
    data = head if len(head) != 4 else head + b"\x00\x00\x00\x01" * 9 + b"\x00" * 16
    p = write(tmp_path / "h", gzip.compress(data) if gz else data)
    with pytest.raises(DataFormatError, match=msg):
        load_idx(p)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_absurd_dims_rejected_cheaply(tmp_path, gz):
    # 2**31 images of 28x28 float64: far over the cap.
    data = b"\x00\x00\x0e\x03" + struct.pack(">III", 2 ** 31, 28, 28) + b"\x00" * 64
    p = write(tmp_path / "big", gzip.compress(data) if gz else data)
    with pytest.raises(DataFormatError, match=str(MAX_PAYLOAD_BYTES)):
        load_idx(p)
    # 2**31 one-byte items: under the cap, but the data is not there.
    data = b"\x00\x00\x08\x01" + struct.pack(">I", 2 ** 31) + b"\x00" * 64
    p = write(tmp_path / "big2", gzip.compress(data) if gz else data)
    with pytest.raises(DataFormatError, match="truncated"):
        load_idx(p)


def test_idx_corrupt_gzip_crc(tmp_path):
    gz = bytearray(gzip.compress(idx_bytes(np.arange(50, dtype=np.uint8))))
    gz[-6] ^= 0xFF                   # inside the CRC32 trailer
    with pytest.raises(DataFormatError, match="corrupt gzip"):
        load_idx(write(tmp_path / "c", bytes(gz)))
    with pytest.raises(DataFormatError):
        load_idx(write(tmp_path / "d", b"\x1f\x8bnot really gzip"))


def test_idx_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_idx(tmp_path / "nope")


# ----------------------------------------------------------------------------- MNIST

def test_mnist_from_committed_copy(monkeypatch):
    monkeypatch.setattr(mnist, "_fetch", None)     # must not download
    (x, y), (xt, yt) = mnist.load_data(download=False)
    assert x.shape == (60000, 28, 28) and y.shape == (60000,)
    assert xt.shape == (10000, 28, 28) and yt.shape == (10000,)
    assert x.dtype == y.dtype == xt.dtype == yt.dtype == np.uint8
    assert y[:5].tolist() == [5, 0, 4, 1, 9] and yt[:5].tolist() == [7, 2, 1, 0, 4]
    assert np.bincount(y).tolist()[:2] == [5923, 6742]
    assert int(x.max()) == 255 and int(x.min()) == 0
    # Copies: scribbling on the result never reaches the next caller.
    x[:] = 0
    y[:] = 3
    (x2, y2), _ = mnist.load_data(download=False)
    assert x2.flags.writeable and int(x2.max()) == 255 and y2[0] == 5


def test_mnist_found_from_another_directory_via_checkout(isolated, monkeypatch):
    monkeypatch.setattr(mnist, "_checkout_dir", lambda: MNIST_DIR)
    (_, y), _ = mnist.load_data(download=False)
    assert y.shape == (60000,)


def test_checkout_dir_points_at_committed_data():
    assert os.path.realpath(mnist._checkout_dir()) == os.path.realpath(MNIST_DIR)


def test_search_order(isolated, monkeypatch):
    monkeypatch.setenv("FASTNN_DATA", "/env/data")
    monkeypatch.setattr(mnist, "_checkout_dir", lambda: "/src/data/mnist")
    dirs = mnist.search_dirs()
    assert dirs == ["/env/data", "/env/data/mnist",
                    os.path.join(os.getcwd(), "data", "mnist"), "/src/data/mnist",
                    os.path.join(str(isolated), "cache", "fastnn", "mnist")]
    # an explicit path is the only place searched (issue 10: --data was silently ignored)
    assert mnist.search_dirs("/explicit") == ["/explicit", "/explicit/mnist"]


@pytest.mark.parametrize("make", ["empty", "missing", "file", "partial"])
def test_explicit_path_without_mnist_is_an_error(isolated, monkeypatch, make):
    """load_data(path=DIR) never falls back to another copy (the committed one, the
    cache) nor downloads: it names DIR and the four files expected."""
    monkeypatch.setattr(mnist, "_checkout_dir", lambda: MNIST_DIR)   # a copy elsewhere
    monkeypatch.setattr(mnist, "_fetch", None)                       # must not download
    d = isolated / "mine"
    if make == "empty":
        d.mkdir()
    elif make == "file":
        d.write_text("not a directory")
    elif make == "partial":
        _recompressed_copy(str(d), raw=())
        (d / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError) as ei:
        mnist.load_data(path=str(d))                  # download=True by default
    msg = str(ei.value)
    assert str(d) in msg and "\n" not in msg
    for name in mnist.FILES:
        assert name in msg
    want = {"empty": "holds none of the four files", "missing": "does not exist",
            "file": "is not a directory",
            "partial": "lacks t10k-labels-idx1-ubyte[.gz] of the four files"}
    assert want[make] in msg


def test_explicit_path_mnist_subdirectory_accepted(isolated):
    _recompressed_copy(str(isolated / "data" / "mnist"), raw=())
    (_, y), _ = mnist.load_data(path=isolated / "data")
    assert y[0] == 5


def _recompressed_copy(dst, raw=("train-images-idx3-ubyte",)):
    """MNIST copy in ``dst``: files in ``raw`` decompressed, the rest re-gzipped at level 1."""
    os.makedirs(dst, exist_ok=True)
    for name in mnist.FILES:
        with gzip.open(os.path.join(MNIST_DIR, name + ".gz"), "rb") as fh:
            data = fh.read()
        if name in raw:
            write(os.path.join(dst, name), data)
        else:
            write(os.path.join(dst, name + ".gz"), gzip.compress(data, compresslevel=1, mtime=0))


def test_recompressed_and_raw_copies_accepted(isolated):
    d = str(isolated / "copy")
    _recompressed_copy(d)
    (x, y), (xt, yt) = mnist.load_data(path=d, download=False)
    (x0, y0), (xt0, yt0) = mnist.load_data(path=MNIST_DIR, download=False)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(yt, yt0)


def test_fastnn_data_env(isolated, monkeypatch):
    d = isolated / "envdir" / "mnist"
    _recompressed_copy(str(d), raw=())
    monkeypatch.setenv("FASTNN_DATA", str(isolated / "envdir"))
    (_, y), _ = mnist.load_data(download=False)
    assert y[0] == 5


def test_damaged_copy_rejected_with_both_md5(isolated):
    d = isolated / "copy"
    _recompressed_copy(str(d))
    p = d / "train-images-idx3-ubyte"
    data = bytearray(p.read_bytes())
    data[5000] ^= 1                                  # one pixel off by one
    p.write_bytes(bytes(data))
    actual = hashlib.md5(bytes(data)).hexdigest()
    with pytest.raises(DataFormatError) as ei:
        mnist.load_data(path=str(d), download=False)
    msg = str(ei.value)
    assert str(p) in msg and actual in msg and mnist.FILES["train-images-idx3-ubyte"] in msg


def test_not_found_message_lists_files_and_dirs(isolated):
    with pytest.raises(DatasetNotFoundError) as ei:
        mnist.load_data(download=False)
    msg = str(ei.value)
    for name in mnist.FILES:
        assert name in msg
    for d in mnist.search_dirs():
        assert d in msg
    assert "FASTNN_DATA" in msg
    assert isinstance(ei.value, FileNotFoundError)


def _gz_payloads():
    out = {}
    for name in mnist.FILES:
        with open(os.path.join(MNIST_DIR, name + ".gz"), "rb") as fh:
            out[name] = fh.read()
    return out


def test_mirror_fallback_checksum_and_atomic_cache(isolated, monkeypatch):
    payloads = _gz_payloads()
    calls = []

    def fake_fetch(url, timeout):
        calls.append(url)
        mirror, name = url.rsplit("/", 1)
        name = name[:-3]
        if mirror == "http://down":
            raise OSError("connection refused")
        if mirror == "http://evil":
            return gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07")   # valid IDX, wrong md5
        return payloads[name]

    monkeypatch.setattr(mnist, "MIRRORS", ("http://down/", "http://evil/", "http://good/"))
    monkeypatch.setattr(mnist, "_fetch", fake_fetch)
    (x, y), (xt, yt) = mnist.load_data()
    assert y[:5].tolist() == [5, 0, 4, 1, 9]
    assert len(calls) == 12 and calls[:3] == [m + "train-images-idx3-ubyte.gz"
                                              for m in mnist.MIRRORS]
    cache = isolated / "cache" / "fastnn" / "mnist"
    # no temp files; "decoded" holds the checked arrays for the next process
    assert sorted(os.listdir(cache)) == sorted([n + ".gz" for n in mnist.FILES] + ["decoded"])
    assert all(f.endswith(".bin") for f in os.listdir(cache / "decoded"))
    # Second call is served from the cache: no fetch at all.
    monkeypatch.setattr(mnist, "_fetch", None)
    (_, y2), _ = mnist.load_data()
    assert y2[0] == 5


def test_all_mirrors_fail(isolated, monkeypatch):
    def fetch(url, timeout):
        raise OSError("no route")

    monkeypatch.setattr(mnist, "_fetch", fetch)
    with pytest.raises(DatasetNotFoundError, match="no route") as ei:
        mnist.load_data()
    assert all(m in str(ei.value) for m in mnist.MIRRORS)
    assert not os.path.exists(isolated / "cache" / "fastnn" / "mnist") or \
        os.listdir(isolated / "cache" / "fastnn" / "mnist") == []


def test_interrupted_cache_write_leaves_nothing(isolated, monkeypatch):
    payloads = _gz_payloads()
    monkeypatch.setattr(mnist, "_fetch", lambda url, timeout: payloads[url.rsplit("/", 1)[1][:-3]])

    def boom(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(mnist.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        mnist.load_data()
    cache = isolated / "cache" / "fastnn" / "mnist"
    assert os.listdir(cache) == []


@pytest.fixture
def http_mirror(tmp_path):
    """Loopback HTTP server: /good/ serves the MNIST .gz files, anything else 404s."""
    root = tmp_path / "www"
    (root / "good").mkdir(parents=True)
    for name in mnist.FILES:
        shutil.copy(os.path.join(MNIST_DIR, name + ".gz"), root / "good")
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(root))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_download_over_loopback_http(isolated, monkeypatch, http_mirror):
    monkeypatch.setattr(mnist, "MIRRORS", (http_mirror + "/missing/", http_mirror + "/good/"))
    monkeypatch.setattr(mnist, "TIMEOUT", 10.0)
    (_, y), (_, yt) = mnist.load_data()
    assert y[0] == 5 and yt[0] == 7
    assert len([f for f in os.listdir(isolated / "cache" / "fastnn" / "mnist")
                if f != "decoded"]) == 4


def test_label_and_count_checks(isolated, monkeypatch):
    # Crafted tiny "MNIST" whose checksums we declare, to reach the semantic checks.
    d = isolated / "tiny"
    d.mkdir()
    files = {
        "train-images-idx3-ubyte": idx_bytes(np.zeros((3, 28, 28), np.uint8)),
        "train-labels-idx1-ubyte": idx_bytes(np.array([1, 2, 10], np.uint8)),
        "t10k-images-idx3-ubyte": idx_bytes(np.zeros((2, 28, 28), np.uint8)),
        "t10k-labels-idx1-ubyte": idx_bytes(np.array([1, 2, 3], np.uint8)),
    }
    for name, data in files.items():
        write(d / name, data)
    monkeypatch.setattr(mnist, "FILES", {n: hashlib.md5(b).hexdigest() for n, b in files.items()})
    monkeypatch.setattr(mnist, "_EXPECTED", {n: load_idx(d / n).shape for n in files})
    with pytest.raises(DataFormatError, match="labels must be in 0..9, found 10"):
        mnist.load_data(path=str(d), download=False)
    files["train-labels-idx1-ubyte"] = idx_bytes(np.array([1, 2, 9], np.uint8))
    write(d / "train-labels-idx1-ubyte", files["train-labels-idx1-ubyte"])
    monkeypatch.setattr(mnist, "FILES", {n: hashlib.md5(b).hexdigest() for n, b in files.items()})
    with pytest.raises(DataFormatError, match="2 images but 3 labels"):
        mnist.load_data(path=str(d), download=False)


def test_damaged_cache_copy_is_replaced_by_download(isolated, monkeypatch):
    cache = isolated / "cache" / "fastnn" / "mnist"
    _recompressed_copy(str(cache), raw=("t10k-labels-idx1-ubyte",))
    p = cache / "t10k-labels-idx1-ubyte"
    p.write_bytes(p.read_bytes()[:-1] + b"\x0a")              # last label 6 -> 10
    payloads = _gz_payloads()
    calls = []

    def fetch(url, timeout):
        calls.append(url)
        return payloads[url.rsplit("/", 1)[1][:-3]]

    monkeypatch.setattr(mnist, "_fetch", fetch)
    with pytest.raises(DataFormatError, match="MD5"):
        mnist.load_data(download=False)                       # no download: reported
    _, (_, yt) = mnist.load_data()
    assert calls == [mnist.MIRRORS[0] + "t10k-labels-idx1-ubyte.gz"]
    assert yt[-1] == 6 and not p.exists() and (cache / "t10k-labels-idx1-ubyte.gz").exists()


# ------------------------------------------------------ decoded cache (across processes)

def _decoded_files(isolated):
    d = isolated / "cache" / "fastnn" / "mnist" / "decoded"
    return sorted(d.glob("*.bin")) if d.is_dir() else []


def _new_process(monkeypatch):
    """What a new process sees: an empty in-process cache."""
    monkeypatch.setattr(mnist, "_cache", {})


def test_decoded_cache_is_written_then_used(isolated, monkeypatch):
    d = str(isolated / "copy")
    _recompressed_copy(d)
    first = mnist.load_data(path=d, download=False)
    assert len(_decoded_files(isolated)) == 4
    _new_process(monkeypatch)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded the IDX file again instead of reading the cache")

    monkeypatch.setattr(mnist, "_load", no_decoding)
    second = mnist.load_data(path=d, download=False)
    third = mnist.load_data(path=d, download=False)
    for a, b, c in zip(first, second, third):
        for u, v, w in zip(a, b, c):
            np.testing.assert_array_equal(u, v)
            assert v.flags.writeable and v is not w
    second[0][0][:] = 0                      # the caller's own array: nothing shared
    assert int(third[0][0].max()) == 255


def test_damaged_decoded_entry_is_ignored_and_rewritten(isolated, monkeypatch):
    d = str(isolated / "copy")
    _recompressed_copy(d)
    want = mnist.load_data(path=d, download=False)
    entry = next(p for p in _decoded_files(isolated) if p.name.startswith("train-images"))
    for damage in ("flip", "truncate"):
        data = bytearray(entry.read_bytes())
        if damage == "flip":
            data[1000] ^= 0x40
        else:
            data = data[:-1]
        entry.write_bytes(bytes(data))
        _new_process(monkeypatch)
        got = mnist.load_data(path=d, download=False)
        np.testing.assert_array_equal(got[0][0], want[0][0])
        assert mnist._read_decoded("train-images-idx3-ubyte", str(entry)) is not None


def test_changed_source_misses_the_decoded_cache(isolated, monkeypatch):
    d = isolated / "copy"
    _recompressed_copy(str(d))
    mnist.load_data(path=str(d), download=False)     # entries for the good files
    p = d / "train-images-idx3-ubyte"
    data = bytearray(p.read_bytes())
    data[5000] ^= 1                                  # same size, new content
    p.write_bytes(bytes(data))
    _new_process(monkeypatch)
    with pytest.raises(DataFormatError, match="damaged or not the canonical"):
        mnist.load_data(path=str(d), download=False)
    # the damaged version never gets an entry; the good one's was replaced or kept
    assert len(_decoded_files(isolated)) == 4


def test_unwritable_decoded_cache_costs_nothing(isolated, monkeypatch):
    d = str(isolated / "copy")
    _recompressed_copy(d)
    cache = isolated / "cache" / "fastnn" / "mnist"
    cache.mkdir(parents=True)
    (cache / "decoded").write_text("a file where the directory should be")
    (x, y), _ = mnist.load_data(path=d, download=False)
    assert x.shape == (60000, 28, 28) and y[0] == 5


def test_decoded_cache_can_be_turned_off(isolated, monkeypatch):
    d = str(isolated / "copy")
    _recompressed_copy(d)
    monkeypatch.setenv("FASTNN_MNIST_DECODED_CACHE", "0")
    (_, y), _ = mnist.load_data(path=d, download=False)
    assert y[0] == 5 and _decoded_files(isolated) == []
