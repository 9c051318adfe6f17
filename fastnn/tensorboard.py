"""TensorBoard event files, written and read without TensorFlow or tensorboardX.

An event file is a sequence of TFRecords, each::

    uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)

(little-endian; ``masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8 mod 2**32``),
where ``data`` is a serialized ``tensorflow.Event`` protobuf.  The first
record carries ``file_version = "brain.Event:2"``; the others a ``Summary``
with scalars (``simple_value``) or histograms (``HistogramProto``).  The
protobuf subset needed is encoded by hand below (field numbers from
tensorflow/core/util/event.proto and framework/summary.proto).

    SummaryWriter(logdir)            add_scalar, add_histogram, flush, close
    read_events(path)                every event of a file or directory, CRCs checked
    read_scalars(path)               {tag: [(step, value), ...]}

Example::

    >>> with SummaryWriter("runs/mnist") as w:
    ...     for step in range(3):
    ...         w.add_scalar("loss", 1.0 / (step + 1), step)
    >>> read_scalars("runs/mnist")["loss"]
    [(0, 1.0), (1, 0.5), (2, 0.3333333432674408)]

View with ``tensorboard --logdir runs`` (``pip install fastnn[tensorboard]``).
"""
from __future__ import annotations

import numbers
import os
import socket
import struct
import threading
import time
from typing import (IO, TYPE_CHECKING, Any, Dict, List, Mapping, Optional, SupportsFloat,
                    SupportsIndex, Tuple, Union)

import numpy as np
import numpy.typing as npt

from .errors import DataFormatError

if TYPE_CHECKING:
    from typing_extensions import Self

_Path = Union[str, os.PathLike[str]]

__all__ = ["SummaryWriter", "read_events", "read_scalars", "crc32c", "default_buckets"]

FILE_VERSION = "brain.Event:2"

# ----------------------------------------------------------------------------- CRC32C


def _make_crc_table() -> Tuple[int, ...]:
    poly = 0x82F63B78            # Castagnoli, reflected
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC_TABLE = _make_crc_table()


def crc32c(data: Union[bytes, bytearray, memoryview]) -> int:
    """CRC-32C (Castagnoli) of ``data`` (bytes-like): the checksum TFRecords use.

    >>> hex(crc32c(b"123456789"))
    '0xe3069283'
    """
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for b in bytes(data):
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _record(data: bytes) -> bytes:
    head = struct.pack("<Q", len(data))
    return head + struct.pack("<I", _masked_crc(head)) + data + struct.pack("<I", _masked_crc(data))


# ----------------------------------------------------------------------------- protobuf encoding

def _varint(v: int) -> bytes:
    if v < 0:
        v += 1 << 64             # int64 negatives: ten-byte two's complement
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


def _f_double(field: int, v: float) -> bytes:
    return _key(field, 1) + struct.pack("<d", v)


def _f_float(field: int, v: float) -> bytes:
    return _key(field, 5) + struct.pack("<f", v)


def _f_varint(field: int, v: int) -> bytes:
    return _key(field, 0) + _varint(v)


def _f_bytes(field: int, b: bytes) -> bytes:
    return _key(field, 2) + _varint(len(b)) + b


def _f_packed_doubles(field: int, values: npt.ArrayLike) -> bytes:
    return _f_bytes(field, np.asarray(values, dtype="<f8").tobytes())


def _event(wall_time: float, step: Optional[int] = None, file_version: Optional[str] = None,
           summary: Optional[bytes] = None) -> bytes:
    out = _f_double(1, wall_time)
    if step is not None:
        out += _f_varint(2, step)
    if file_version is not None:
        out += _f_bytes(3, file_version.encode())
    if summary is not None:
        out += _f_bytes(5, summary)
    return out


def _histogram_proto(h: Mapping[str, Any]) -> bytes:
    return (_f_double(1, h["min"]) + _f_double(2, h["max"]) + _f_double(3, h["num"])
            + _f_double(4, h["sum"]) + _f_double(5, h["sum_squares"])
            + _f_packed_doubles(6, h["bucket_limit"]) + _f_packed_doubles(7, h["bucket"]))


# ----------------------------------------------------------------------------- histograms

_DEFAULT_BUCKETS: Optional[npt.NDArray[np.float64]] = None


def default_buckets() -> npt.NDArray[np.float64]:
    """TensorFlow's default histogram bucket limits (a float64 array of 1551 edges).

    ``±1e-12 * 1.1**k`` up to 1e20, ``±DBL_MAX`` at the ends and 0 in the
    middle; bucket ``i`` counts values ``v`` with ``limit[i-1] <= v < limit[i]``.
    """
    global _DEFAULT_BUCKETS
    if _DEFAULT_BUCKETS is None:
        pos: Any = []           # the positive limits: a list, then an array
        v = 1e-12
        while v < 1e20:
            pos.append(v)
            v *= 1.1
        pos.append(np.finfo(np.float64).max)
        pos = np.array(pos)
        _DEFAULT_BUCKETS = np.concatenate([-pos[::-1], [0.0], pos])
        _DEFAULT_BUCKETS.setflags(write=False)
    return _DEFAULT_BUCKETS


def _histogram(values: npt.NDArray[np.float64],
               bins: Union[str, SupportsIndex]) -> Dict[str, Any]:
    """HistogramProto fields for ``values`` (finite, non-empty, float64)."""
    h: Dict[str, Any]
    h = {"min": float(values.min()), "max": float(values.max()), "num": float(values.size),
         "sum": float(values.sum()), "sum_squares": float(np.einsum("i,i->", values, values))}
    if isinstance(bins, str) and bins in ("tensorflow", "default"):
        limits = default_buckets()
        counts = np.bincount(np.searchsorted(limits, values, side="right"),
                             minlength=limits.size)[:limits.size].astype(np.float64)
        # As TensorFlow encodes it: each run of empty buckets collapses into one.
        nxt = np.append(counts[1:], 1.0)
        keep = (counts > 0) | (nxt > 0)
        keep[-1] = True
        h["bucket_limit"], h["bucket"] = limits[keep], counts[keep]
    else:
        counts, edges = np.histogram(values, bins=bins)
        h["bucket_limit"], h["bucket"] = edges[1:], counts.astype(np.float64)
    return h


# ----------------------------------------------------------------------------- writer

class SummaryWriter:
    """Append scalars and histograms to ``logdir/events.out.tfevents.<time>.<host>``.

    ``SummaryWriter(logdir, filename_suffix="")``; the directory is created.
    Records are buffered: ``flush()`` pushes them to the OS (TensorBoard and
    ``read_events`` then see them), ``close()`` flushes and closes; the
    writer is a context manager.  Thread-safe (one lock per writer).

    Example::

        >>> import numpy as np
        >>> with SummaryWriter("runs/exp1") as w:
        ...     w.add_scalar("train/loss", 0.31, step=100)
        ...     w.add_histogram("dense0/weight", np.linspace(-1, 1, 50), step=100)
        >>> sorted(read_scalars("runs/exp1"))
        ['train/loss']
    """

    def __init__(self, logdir: _Path, filename_suffix: str = "") -> None:
        self.logdir = os.fspath(logdir)
        os.makedirs(self.logdir, exist_ok=True)
        base = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
        path = os.path.join(self.logdir, base + filename_suffix)
        n = 0
        while os.path.exists(path):       # two writers in the same second
            n += 1
            path = os.path.join(self.logdir, f"{base}.{os.getpid()}.{n}{filename_suffix}")
        self.path = path
        self._lock = threading.Lock()
        self._fh: Optional[IO[bytes]] = open(path, "xb")
        self._write(_event(time.time(), step=0, file_version=FILE_VERSION))
        self.flush()

    # -- helpers
    def _write(self, event_bytes: bytes) -> None:
        with self._lock:
            if self._fh is None:
                raise ValueError(f"SummaryWriter({self.logdir!r}) is closed")
            self._fh.write(_record(event_bytes))

    @staticmethod
    def _check_tag(tag: Any) -> bytes:
        if not isinstance(tag, str) or not tag:
            raise TypeError(f"tag must be a non-empty str, got {tag!r}")
        return tag.encode("utf-8")

    @staticmethod
    def _check_step(step: Any) -> int:
        if isinstance(step, bool) or not isinstance(step, numbers.Integral):
            raise TypeError(f"step must be an int, got {type(step).__name__} {step!r}")
        step = int(step)
        if not -(1 << 63) <= step < (1 << 63):
            raise ValueError(f"step must fit in int64, got {step}")
        return step

    @staticmethod
    def _walltime(walltime: Optional[float]) -> float:
        return time.time() if walltime is None else float(walltime)

    # -- public
    def add_scalar(self, tag: str, value: SupportsFloat, step: int,
                   walltime: Optional[float] = None) -> None:
        """Log ``value`` (a real number, stored as float32) under ``tag`` at ``step``."""
        t = self._check_tag(tag)
        step = self._check_step(step)
        if isinstance(value, np.ndarray) and value.size == 1:
            value = value.reshape(()).item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"add_scalar({tag!r}): value must be a real number, got "
                            f"{type(value).__name__}")
        value_msg = _f_bytes(1, t) + _f_float(2, float(value))
        self._write(_event(self._walltime(walltime), step, summary=_f_bytes(1, value_msg)))

    def add_histogram(self, tag: str, values: npt.ArrayLike, step: int,
                      bins: Union[str, SupportsIndex] = "tensorflow",
                      walltime: Optional[float] = None) -> None:
        """Log the distribution of ``values`` (any shape, finite) under ``tag`` at ``step``.

        ``bins``: ``"tensorflow"`` (default: TensorFlow's exponential bucket
        layout, what TensorBoard expects), an int (equal-width buckets between
        min and max) or any ``bins`` string ``np.histogram`` accepts ("auto", "fd", ...).
        """
        t = self._check_tag(tag)
        step = self._check_step(step)
        v = np.asarray(values)
        if v.dtype.kind not in "biuf":
            raise TypeError(f"add_histogram({tag!r}): values must be numeric, got {v.dtype}")
        v = v.astype(np.float64, copy=False).ravel()
        if v.size == 0:
            raise ValueError(f"add_histogram({tag!r}): values is empty")
        if not np.isfinite(v).all():
            raise ValueError(f"add_histogram({tag!r}): values contain NaN or inf")
        # bool is an Integral at run time; typeshed's numbers module does not say so
        if isinstance(bins, numbers.Integral) and not isinstance(bins, bool) and bins < 1:  # type: ignore[unreachable]
            raise ValueError(f"add_histogram({tag!r}): bins must be >= 1, got {bins}")
        histo = _histogram_proto(_histogram(v, bins))
        value_msg = _f_bytes(1, t) + _f_bytes(5, histo)
        self._write(_event(self._walltime(walltime), step, summary=_f_bytes(1, value_msg)))

    def flush(self) -> None:
        """Hand buffered records to the OS so readers see them."""
        with self._lock:
            if self._fh is not None:
                self._fh.flush()

    def close(self) -> None:
        """Flush and close the file (idempotent)."""
        with self._lock:
            if self._fh is not None:
                self._fh.flush()
                try:
                    os.fsync(self._fh.fileno())
                except OSError:
                    pass
                self._fh.close()
                self._fh = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:          # interpreter shutdown: nothing sensible to do
            pass


# ----------------------------------------------------------------------------- reader

def _fields(buf: bytes, where: str) -> List[Tuple[int, int, Any]]:
    """Decode one protobuf message: a list of (field number, wire type, value)."""
    out: List[Tuple[int, int, Any]] = []     # value: an int (varint) or bytes
    i, n = 0, len(buf)

    def varint() -> int:
        nonlocal i
        shift = result = 0
        while True:
            if i >= n or shift > 63:
                raise DataFormatError(f"{where}: malformed varint")
            b = buf[i]
            i += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    val: Union[int, bytes]
    while i < n:
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            val = varint()
        elif wire == 1 or wire == 5:
            size = 8 if wire == 1 else 4
            if i + size > n:
                raise DataFormatError(f"{where}: truncated fixed-width field {field}")
            val = bytes(buf[i:i + size])
            i += size
        elif wire == 2:
            size = varint()
            if i + size > n:
                raise DataFormatError(f"{where}: length-delimited field {field} overruns "
                                      f"its message ({size} bytes, {n - i} left)")
            val = bytes(buf[i:i + size])
            i += size
        else:
            raise DataFormatError(f"{where}: unsupported wire type {wire} (field {field})")
        out.append((field, wire, val))
    return out


def _doubles(wire: int, val: bytes, where: str) -> List[float]:
    if wire == 1:
        return [struct.unpack("<d", val)[0]]
    if wire == 2 and len(val) % 8 == 0:
        return np.frombuffer(val, "<f8").tolist()
    raise DataFormatError(f"{where}: expected doubles")


def _decode_histogram(buf: bytes, where: str) -> Dict[str, Any]:
    names = {1: "min", 2: "max", 3: "num", 4: "sum", 5: "sum_squares"}
    h: Dict[str, Any] = {"min": 0.0, "max": 0.0, "num": 0.0, "sum": 0.0, "sum_squares": 0.0,
         "bucket_limit": [], "bucket": []}
    for field, wire, val in _fields(buf, where):
        if field in names and wire == 1:
            h[names[field]] = struct.unpack("<d", val)[0]
        elif field == 6:
            h["bucket_limit"] += _doubles(wire, val, where)
        elif field == 7:
            h["bucket"] += _doubles(wire, val, where)
    return h


def _decode_event(buf: bytes, where: str) -> Dict[str, Any]:
    ev: Dict[str, Any] = {"wall_time": 0.0, "step": 0, "file_version": None, "summary": []}
    for field, wire, val in _fields(buf, where):
        if field == 1 and wire == 1:
            ev["wall_time"] = struct.unpack("<d", val)[0]
        elif field == 2 and wire == 0:
            ev["step"] = val - (1 << 64) if val >= (1 << 63) else val
        elif field == 3 and wire == 2:
            ev["file_version"] = val.decode("utf-8", "replace")
        elif field == 5 and wire == 2:
            for f, w, v in _fields(val, where):
                if f != 1 or w != 2:
                    continue
                item: Dict[str, Any] = {}
                for f2, w2, v2 in _fields(v, where):
                    if f2 == 1 and w2 == 2:
                        item["tag"] = v2.decode("utf-8", "replace")
                    elif f2 == 2 and w2 == 5:
                        item["simple_value"] = struct.unpack("<f", v2)[0]
                    elif f2 == 5 and w2 == 2:
                        item["histo"] = _decode_histogram(v2, where)
                ev["summary"].append(item)
    return ev


def _event_files(path: _Path) -> List[str]:
    path = os.fspath(path)
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if "tfevents" in f)
        if not files:
            raise FileNotFoundError(f"no event files (*tfevents*) in directory {path!r}")
        return files
    return [path]


def _read_file(path: str, strict: bool) -> List[Dict[str, Any]]:
    with open(path, "rb") as fh:
        data = fh.read()
    events: List[Dict[str, Any]]
    events, pos, n = [], 0, len(data)
    while pos < n:
        where = f"event file {path!r}, record at byte {pos}"
        if n - pos < 12:
            if strict:
                raise DataFormatError(f"{where}: truncated record header "
                                      f"({n - pos} of 12 bytes)")
            break
        head = data[pos:pos + 8]
        length, = struct.unpack("<Q", head)
        crc, = struct.unpack("<I", data[pos + 8:pos + 12])
        if crc != _masked_crc(head):
            raise DataFormatError(f"{where}: length CRC mismatch (corrupt file)")
        end = pos + 12 + length + 4
        if end > n:
            if strict:
                raise DataFormatError(f"{where}: truncated record (needs {length + 16} bytes, "
                                      f"{n - pos} left)")
            break
        body = data[pos + 12:pos + 12 + length]
        crc, = struct.unpack("<I", data[end - 4:end])
        if crc != _masked_crc(body):
            raise DataFormatError(f"{where}: data CRC mismatch (corrupt file)")
        events.append(_decode_event(body, where))
        pos = end
    return events


def read_events(path: _Path, strict: bool = True) -> List[Dict[str, Any]]:
    """Every event in an event file, or in all ``*tfevents*`` files of a directory (name order).

    Each event is a dict ``{"wall_time": float, "step": int, "file_version":
    str | None, "summary": [{"tag": str, "simple_value": float} | {"tag": str,
    "histo": {"min", "max", "num", "sum", "sum_squares", "bucket_limit": [...],
    "bucket": [...]}}]}``.  CRCs are checked (``DataFormatError`` on
    mismatch).  ``strict=False`` ignores a truncated last record, as left by a
    writer that is still running.
    """
    events: List[Dict[str, Any]] = []
    for f in _event_files(path):
        events += _read_file(f, strict)
    return events


def read_scalars(path: _Path, strict: bool = True) -> Dict[str, List[Tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` for every scalar in ``path`` (file or directory)."""
    out: Dict[str, List[Tuple[int, float]]] = {}
    for ev in read_events(path, strict):
        for v in ev["summary"]:
            if "simple_value" in v and "tag" in v:
                out.setdefault(v["tag"], []).append((ev["step"], v["simple_value"]))
    return out
