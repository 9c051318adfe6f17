"""MNIST: 70,000 28x28 grey-scale digits (60,000 train, 10,000 test), as uint8.

``load_data()`` looks for the four IDX files, each either raw
(``train-images-idx3-ubyte``) or gzipped (``train-images-idx3-ubyte.gz``).

``load_data(path=DIR)`` (``fastnn train --data DIR``) reads them from ``DIR``
(or ``DIR/mnist``) and nowhere else: a path that does not hold all four is a
``DatasetNotFoundError`` naming the path and the files, never a silent fall
back to another copy, and nothing is downloaded.

Without ``path`` it searches these directories, in order:

1. ``$FASTNN_DATA`` (and ``$FASTNN_DATA/mnist``);
2. ``data/mnist`` under the current directory;
3. ``data/mnist`` in the source checkout fastnn was imported from (so an
   editable install finds the committed copy from any directory);
4. the user cache, ``$XDG_CACHE_HOME/fastnn/mnist`` (default
   ``~/.cache/fastnn/mnist``);

and, when ``download=True`` and a file is still missing (or its copy in the
user cache is damaged), fetches it from the mirrors in ``MIRRORS`` in turn
into the user cache (atomically: temporary file in the cache directory,
fsync, ``os.replace``).

Every file is identified by the MD5 of its *decompressed* content, so a
re-compressed copy is accepted and a damaged or different one is refused
with ``DataFormatError`` naming the file and both digests.

Decoded arrays are cached per process (keyed by file, size and mtime); each
call returns fresh writable copies, so modifying what you got (``x /= 255``
after ``astype``, in-place shuffles) never leaks into a later call.

Across processes, a file's decoded bytes are kept in the user cache
(``.../fastnn/mnist/decoded/``, 55 MB in all) once its MD5 has been checked,
keyed by the source file's path, size and mtime and protected by a CRC32:
a new process reads them in ~0.03 s instead of decompressing and hashing
(~0.25 s; half the start-up of ``fastnn train``).  A changed source file
misses the cache and is checked again; a damaged cache entry is ignored and
rewritten; a cache that cannot be written (read-only home) costs nothing.
``FASTNN_MNIST_DECODED_CACHE=0`` turns this cache off (nothing read or
written there; downloads still go to the user cache).
"""
import hashlib
import os
import threading
import zlib
from typing import Any, Dict, Hashable

import numpy as np

from .._fileio import atomic_write
from ..errors import DataFormatError, DatasetNotFoundError
from .idx import _load

__all__ = ["load_data", "FILES", "MIRRORS", "search_dirs"]

#: name -> MD5 of the decompressed canonical file (from the original distribution).
FILES = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

#: Download mirrors, tried in order (each serves ``<name>.gz``).
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",      # torchvision's mirror
    "https://storage.googleapis.com/cvdf-datasets/mnist/",  # Google CVDF mirror
    "http://yann.lecun.com/exdb/mnist/",                    # the original site, often down
)

#: Seconds before a mirror that does not answer is skipped.
TIMEOUT = 30.0
#: A download larger than this is refused (the largest file is ~10 MB gzipped).
_MAX_DOWNLOAD = 64 << 20

_EXPECTED = {
    "train-images-idx3-ubyte": (60000, 28, 28),
    "train-labels-idx1-ubyte": (60000,),
    "t10k-images-idx3-ubyte": (10000, 28, 28),
    "t10k-labels-idx1-ubyte": (10000,),
}

_cache: Dict[Hashable, Any] = {}      # file identity -> its read-only decoded array
_cache_lock = threading.Lock()


def _user_cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastnn", "mnist")


def _checkout_dir():
    """``data/mnist`` beside the fastnn package (a source checkout), or None."""
    pkg_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    d = os.path.join(pkg_parent, "data", "mnist")
    return d if os.path.isdir(d) else None


def search_dirs(path=None):
    """The directories ``load_data(path)`` searches, in order (duplicates removed):
    ``path`` and ``path/mnist`` alone when a path is given, else the default places."""
    dirs = []
    if path is not None:
        path = os.fspath(path)
        dirs += [path, os.path.join(path, "mnist")]
    else:
        env = os.environ.get("FASTNN_DATA")
        if env:
            dirs += [env, os.path.join(env, "mnist")]
        dirs.append(os.path.join(os.getcwd(), "data", "mnist"))
        checkout = _checkout_dir()
        if checkout is not None:
            dirs.append(checkout)
        dirs.append(_user_cache_dir())
    seen, out = set(), []
    for d in dirs:
        key = os.path.realpath(d)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def _find(name, dirs):
    for d in dirs:
        for fname in (name, name + ".gz"):
            p = os.path.join(d, fname)
            if os.path.isfile(p):
                return p
    return None


_DECODED_MAGIC = b"FNNMNIST"
_DECODED_HEAD = 24          # magic, payload bytes (u64 LE), CRC32 (u32 LE), 4 zero bytes


def _decoded_path(name, key):
    tag = hashlib.sha256(repr((key, FILES[name])).encode()).hexdigest()[:24]
    return os.path.join(_user_cache_dir(), "decoded", f"{name}-{tag}.bin")


def _read_decoded(name, dpath):
    """The verified decoded array stored at ``dpath``, or None (absent, damaged)."""
    shape = _EXPECTED[name]
    n = int(np.prod(shape))
    try:
        if os.path.getsize(dpath) != _DECODED_HEAD + n:
            return None
        with open(dpath, "rb") as fh:
            head = fh.read(_DECODED_HEAD)
            arr = np.fromfile(fh, dtype=np.uint8, count=n)
    except OSError:
        return None
    if head[:8] != _DECODED_MAGIC or int.from_bytes(head[8:16], "little") != n or \
            arr.size != n or int.from_bytes(head[16:20], "little") != zlib.crc32(arr):
        return None
    return arr.reshape(shape)


def _write_decoded(name, dpath, arr):
    """Store a checked array for the next process (best effort), replacing the
    entries of older versions of the same file."""
    head = _DECODED_MAGIC + arr.size.to_bytes(8, "little") + \
        zlib.crc32(arr).to_bytes(4, "little") + bytes(4)
    try:
        atomic_write(dpath, lambda fh: (fh.write(head), fh.write(arr.data)),   # no 47 MB copy
                     make_dirs=True)
        d = os.path.dirname(dpath)
        for other in os.listdir(d):
            if other.startswith(name + "-") and other.endswith(".bin") and \
                    other != os.path.basename(dpath):
                os.unlink(os.path.join(d, other))
    except OSError:
        pass


def _decode_checked(name, path):
    """Decode ``path`` and check the MD5 of its decompressed bytes against FILES[name].

    Returns ``(array, owned)``: owned arrays were just read from the decoded
    cache for this caller alone (reading them again costs less than a copy);
    the others are the process's read-only master copies."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit, False
    # across processes, also the inode and ctime: a file replaced or rewritten
    # in place misses (both change on every write)
    use_decoded = os.environ.get("FASTNN_MNIST_DECODED_CACHE", "1") != "0"
    dpath = _decoded_path(name, key + (st.st_ino, st.st_ctime_ns))
    arr = _read_decoded(name, dpath) if use_decoded else None
    if arr is not None:
        return arr, True
    md5 = hashlib.md5()
    arr = _load(path, hasher=md5)
    if md5.hexdigest() != FILES[name]:
        raise DataFormatError(
            f"MNIST file {path!r} is damaged or not the canonical {name}: MD5 of its "
            f"decompressed content is {md5.hexdigest()}, expected {FILES[name]}. "
            f"Delete it (a fresh copy will be fetched) or replace it.")
    if arr.shape != _EXPECTED[name] or arr.dtype != np.uint8:
        raise DataFormatError(f"MNIST file {path!r}: expected uint8 of shape "
                              f"{_EXPECTED[name]}, got {arr.dtype} {arr.shape}")
    if use_decoded:
        _write_decoded(name, dpath, arr)
    arr.setflags(write=False)       # the cached master copy is never handed out
    with _cache_lock:
        _cache[key] = arr
    return arr, False


def _fetch(url, timeout):
    """Bytes at ``url`` (at most _MAX_DOWNLOAD).  Tests replace this function."""
    import urllib.request           # only when downloading: keeps import cheap
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        data = resp.read(_MAX_DOWNLOAD + 1)
    if len(data) > _MAX_DOWNLOAD:
        raise OSError(f"{url}: larger than {_MAX_DOWNLOAD} bytes")
    return data


def _md5_of_content(data):
    """MD5 of ``data`` after gunzipping it when it is gzip (bounded output)."""
    if data[:2] == b"\x1f\x8b":
        d = zlib.decompressobj(wbits=31)
        md5 = hashlib.md5()
        total = 0
        chunk = data
        while chunk:
            out = d.decompress(chunk, 1 << 20)
            total += len(out)
            if total > 256 << 20:
                raise DataFormatError("decompresses to more than 256 MB")
            md5.update(out)
            chunk = d.unconsumed_tail
        if not d.eof:
            raise DataFormatError("truncated gzip stream")
        return md5.hexdigest()
    return hashlib.md5(data).hexdigest()


def _atomic_write(path, data):
    atomic_write(path, lambda fh: fh.write(data), make_dirs=True)


def _download(name, errors):
    """Fetch ``name`` into the user cache; return its path or None (reasons in ``errors``)."""
    for mirror in MIRRORS:
        url = mirror + name + ".gz"
        try:
            data = _fetch(url, TIMEOUT)
            digest = _md5_of_content(data)
        except (OSError, ValueError, zlib.error, EOFError) as exc:
            # URLError, HTTPError, timeouts are OSErrors; DataFormatError a ValueError.
            errors.append(f"{url}: {type(exc).__name__}: {exc}")
            continue
        if digest != FILES[name]:
            errors.append(f"{url}: MD5 of content {digest}, expected {FILES[name]}")
            continue
        target = os.path.join(_user_cache_dir(), name + (".gz" if data[:2] == b"\x1f\x8b" else ""))
        try:
            _atomic_write(target, data)
        except OSError as exc:
            errors.append(f"writing {target}: {exc}")
            return None
        return target
    return None


def _not_found(missing, dirs, errors):
    lines = [
        "MNIST not found. Put these four files (raw or .gz) in one of the directories below:",
        "    " + ", ".join(n + "[.gz]" for n in FILES),
        f"  missing: {', '.join(missing)}",
        "  searched, in order:",
    ]
    lines += [f"    {d}" for d in dirs]
    lines.append("  or point $FASTNN_DATA at a directory holding them, or pass path=...")
    if errors:
        lines.append("  download attempts failed:")
        lines += [f"    {e}" for e in errors]
    else:
        lines.append("  (download=False, or nothing was tried)")
    return DatasetNotFoundError("\n".join(lines))


def _not_at_path(path, missing):
    """The error for an explicit ``path`` that does not hold MNIST (one line)."""
    expected = "the four files " + ", ".join(n + "[.gz]" for n in FILES)
    if not os.path.exists(path):
        what = f"{path} does not exist (expected a directory holding {expected})"
    elif not os.path.isdir(path):
        what = f"{path} is not a directory (expected one holding {expected})"
    else:
        if len(missing) == len(FILES):
            what = f"{path} holds none of {expected}"
        else:
            what = f"{path} lacks {', '.join(n + '[.gz]' for n in missing)} of {expected}"
        what += f" (looked in {path} and {os.path.join(path, 'mnist')})"
    return DatasetNotFoundError(f"MNIST not found: {what}; a path given explicitly is the only "
                                f"place searched")


def load_data(path=None, download=True):
    """Load MNIST as uint8 arrays: pixels 0..255, labels 0..9.

    Returns ``((x_train, y_train), (x_test, y_test))`` with shapes
    ``(60000, 28, 28)``, ``(60000,)``, ``(10000, 28, 28)``, ``(10000,)``,
    fresh writable copies on every call (see the module docstring for the
    search order, the checksum check and the download).

    ``path``: a directory holding the four files (or a ``mnist``
    subdirectory that does); when given, it is the only place searched and
    ``download`` is ignored.

    Raises ``DatasetNotFoundError`` listing the four files and where to put
    them when a file cannot be found nor downloaded (or is not in ``path``); ``DataFormatError`` when
    a file found is damaged (wrong MD5, bad IDX) or the labels are invalid.

    Example::

        >>> from fastnn.datasets import mnist
        >>> (x_train, y_train), (x_test, y_test) = mnist.load_data()
        >>> x_train.shape, y_train[:5]
        ((60000, 28, 28), array([5, 0, 4, 1, 9], dtype=uint8))
    """
    explicit = path is not None
    if explicit:
        path = os.fspath(path)
        download = False            # the user's directory, not a cache: never fill it
    dirs = search_dirs(path)
    found, missing, errors = {}, [], []
    for name in FILES:
        p = _find(name, dirs)
        if p is None and download:
            p = _download(name, errors)
        if p is None:
            missing.append(name)
        else:
            found[name] = p
    if missing:
        if explicit:
            raise _not_at_path(path, missing)
        raise _not_found(missing, dirs, errors)
    arrays, owned = {}, {}
    for name, p in found.items():
        try:
            arrays[name], owned[name] = _decode_checked(name, p)
        except DataFormatError:
            # A damaged copy in our own cache is replaced; anywhere else it is
            # the user's file, and silently ignoring it would hide the problem.
            in_cache = os.path.dirname(os.path.realpath(p)) == os.path.realpath(_user_cache_dir())
            if not (in_cache and download):
                raise
            fresh = _download(name, errors)
            if fresh is None:
                raise _not_found([name], dirs, errors) from None
            if os.path.realpath(fresh) != os.path.realpath(p):
                os.unlink(p)         # e.g. a raw damaged file beside the new .gz
            arrays[name], owned[name] = _decode_checked(name, fresh)
    out = []
    for split in ("train", "t10k"):
        x = arrays[f"{split}-images-idx3-ubyte"]
        y = arrays[f"{split}-labels-idx1-ubyte"]
        if x.shape[0] != y.shape[0]:
            raise DataFormatError(f"MNIST {split}: {x.shape[0]} images but {y.shape[0]} labels")
        if y.size and int(y.max()) > 9:
            raise DataFormatError(f"MNIST {split}: labels must be in 0..9, found {int(y.max())}")
        xn, yn = f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte"
        out.append((x if owned[xn] else x.copy(), y if owned[yn] else y.copy()))
    return tuple(out)
