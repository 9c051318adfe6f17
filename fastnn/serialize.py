"""Checkpoints: a model's architecture and weights, optionally the optimizer state and extras.

File layout: a plain ``.npz`` (a zip of ``.npy`` members, readable with
``np.load(path, allow_pickle=False)``), never pickle::

    format.npy     uint8   b"fastnn-checkpoint"               the marker
    version.npy    int64   1, or 2 when the model has buffers  format version
    meta.npy       uint8   UTF-8 JSON: {"model": get_config(), "params": [{key, name, shape,
                           dtype}], "optimizer": {class, hyper, step, buffers: [...]} | null,
                           "extra": ... | null, "buffers": [{key, name, shape, dtype}]
                           (version 2 only)}
    param.000.npy  ...     one member per parameter, in model.parameters() order
    buffer.000.npy ...     one member per model buffer (version 2: BatchNorm2D's running
                           statistics, in model.named_buffers() order)
    optim.000.npy  ...     one member per optimizer buffer (when saved)

Version 2 (fastnn with convolutional layers) adds the model's buffers; a model
without any is still written as version 1, byte for byte what earlier releases
wrote (so they can read it), and version 1 files load as before.
    sha256.npy     uint8   SHA-256 over every other member (key, dtype, shape, bytes)

The hash detects damage and edits made without recomputing it (it is an
integrity check, not a signature).  Files are written atomically (temporary
file in the same directory, flush, fsync, ``os.replace``, fsync of the
directory), so a crash mid-save leaves the previous checkpoint intact.

Loading checks everything before building anything: zip structure (stored
members only, sizes within the file), marker, version, JSON, the exact set
of members, each member's shape and dtype (read from the ``.npy`` header
before any data, so a forged header cannot cause a large allocation), the
hash, then that the rebuilt model has exactly these parameters.  Any
failure raises ``DataFormatError`` saying what is wrong.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import struct
import zipfile
import zlib
from typing import (IO, TYPE_CHECKING, Any, Dict, List, Literal, Mapping, Optional, Tuple, Type,
                    Union, overload)

import numpy as np
import numpy.typing as npt

from ._fileio import atomic_write
from .errors import DataFormatError

if TYPE_CHECKING:
    from .optim import Optimizer
    from .sequential import Sequential

#: a file path as ``save`` and ``load`` take it
_Path = Union[str, os.PathLike[str]]

__all__ = ["save", "load", "Checkpoint", "FORMAT", "VERSION"]

FORMAT = "fastnn-checkpoint"
VERSION = 2                  # the newest format written; see the module docstring
SUPPORTED_VERSIONS = (1, 2)

#: What ``load(path, with_optimizer=True)`` returns.
#: ``model``: the rebuilt model with the saved weights; ``optimizer_state``:
#: the dict ``optimizer.state_dict()`` gave (``{"class", "hyper", "step",
#: "buffers": {name: ndarray}}``; pass it to ``optimizer.load_state_dict``),
#: or None if no optimizer was saved; ``extra``: the JSON value passed as
#: ``extra`` to ``save`` (None if none).
Checkpoint = collections.namedtuple("Checkpoint", ["model", "optimizer_state", "extra"])

_FIXED_KEYS = ("format", "version", "meta", "sha256")
# Numeric dtypes only: anything else could need pickle.
_OK_KINDS = "biuf"
# A fixed timestamp makes two saves of the same state byte-identical.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"value of type {type(obj).__name__} is not JSON-serialisable")


def _dumps(value: Any, what: str) -> str:
    try:
        return json.dumps(value, default=_json_default, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"save: {what} must be JSON-serialisable (dicts, lists, str, numbers, "
                        f"bool, None): {exc}") from None


def _contig(a: npt.ArrayLike) -> npt.NDArray[Any]:
    # Not np.ascontiguousarray: it turns 0-d arrays into 1-d ones.
    a = np.asarray(a)
    return a if a.flags.c_contiguous else np.array(a, order="C")


def _digest(arrays: Mapping[str, npt.NDArray[Any]]) -> bytes:
    """SHA-256 over every member except sha256 itself, in key order."""
    h = hashlib.sha256(FORMAT.encode() + b"\0")
    for key in sorted(arrays):
        if key == "sha256":
            continue
        a = _contig(arrays[key])
        h.update(f"{key}\0{a.dtype.str}\0{a.shape}\0{a.nbytes}\0".encode())
        h.update(a.tobytes())
    return h.digest()


def _array_entry(key: str, name: str, arr: npt.ArrayLike,
                 what: str) -> Tuple[npt.NDArray[Any], Dict[str, Any]]:
    arr = np.asarray(arr)
    if arr.dtype.kind not in _OK_KINDS:
        raise TypeError(f"save: {what} {name!r} has dtype {arr.dtype}; only numeric arrays "
                        f"can be saved")
    return arr, {"key": key, "name": name, "shape": list(arr.shape), "dtype": arr.dtype.str}


def _model_arrays(model: Any) -> Tuple[Dict[str, npt.NDArray[Any]], List[Dict[str, Any]]]:
    if hasattr(model, "named_parameters"):
        named = list(model.named_parameters())
    else:
        named = [(p.name, p) for p in model.parameters()]
    arrays: Dict[str, npt.NDArray[Any]]
    entries: List[Dict[str, Any]]
    arrays, entries = {}, []
    for i, (name, p) in enumerate(named):
        arr, entry = _array_entry(f"param.{i:03d}", name, p.data, "parameter")
        arrays[entry["key"]] = arr
        entries.append(entry)
    return arrays, entries


def _buffer_arrays(model: Any) -> Tuple[Dict[str, npt.NDArray[Any]], List[Dict[str, Any]]]:
    """The model's non-trainable buffers (``named_buffers()``; none for other models)."""
    named = list(model.named_buffers()) if hasattr(model, "named_buffers") else []
    arrays: Dict[str, npt.NDArray[Any]]
    entries: List[Dict[str, Any]]
    arrays, entries = {}, []
    for i, (name, buf) in enumerate(named):
        arr, entry = _array_entry(f"buffer.{i:03d}", name, buf, "model buffer")
        arrays[entry["key"]] = arr
        entries.append(entry)
    return arrays, entries


def _optimizer_arrays(optimizer: Any) -> Tuple[Dict[str, npt.NDArray[Any]], Dict[str, Any]]:
    if not hasattr(optimizer, "state_dict"):
        raise TypeError(f"save: optimizer must have state_dict(), got {type(optimizer).__name__}")
    state = optimizer.state_dict()
    buffers = state.get("buffers", {}) or {}
    arrays: Dict[str, npt.NDArray[Any]]
    entries: List[Dict[str, Any]]
    arrays, entries = {}, []
    for i, name in enumerate(buffers):
        arr, entry = _array_entry(f"optim.{i:03d}", name, buffers[name], "optimizer buffer")
        arrays[entry["key"]] = arr
        entries.append(entry)
    meta = {"class": state.get("class"), "hyper": state.get("hyper"),
            "step": state.get("step"), "buffers": entries}
    return arrays, meta


def _write_npz(path: _Path, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
    def write(fh: IO[bytes]) -> None:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
            for key, arr in arrays.items():
                info = zipfile.ZipInfo(key + ".npy", date_time=_ZIP_DATE)
                info.compress_type = zipfile.ZIP_STORED
                # force_zip64 so members over 2 GiB work without a second pass.
                with zf.open(info, "w", force_zip64=arr.nbytes > (1 << 30)) as member:
                    np.lib.format.write_array(member, _contig(arr), allow_pickle=False)

    atomic_write(path, write)


def save(model: Any, path: _Path, optimizer: Optional[Optimizer] = None,
         extra: Any = None) -> _Path:
    """Write ``model`` (architecture + weights) to ``path`` as a fastnn checkpoint.

    ``checkpoint = {config: model.get_config(), params: [p.data for p in
    model.parameters()], optimizer: optimizer.state_dict(), extra}`` plus a
    SHA-256 over all of it, as a pickle-free ``.npz`` written atomically.

    * ``model``: has ``get_config()`` (JSON-able) and ``named_parameters()``
      (or ``parameters()``, items with ``.name`` and ``.data``).
    * ``optimizer``: optional; its ``state_dict()`` ``{"class", "hyper",
      "step", "buffers": {name: ndarray}}`` is stored.
    * ``extra``: optional JSON-able value (epoch, history, RNG state...).
      Numpy scalars are converted to Python numbers; tuples come back as lists.

    The exact ``path`` is used (no suffix is added).  Returns ``path``.

    Example::

        >>> import fastnn
        >>> from fastnn.models import MLP
        >>> from fastnn.optim import Adam
        >>> model = MLP([784, 32, 10], seed=0); opt = Adam(model)
        >>> fastnn.save(model, "mnist.npz", optimizer=opt, extra={"epoch": 3})
        'mnist.npz'
        >>> model2 = fastnn.load("mnist.npz")
        >>> bool((model2.flat_params == model.flat_params).all())
        True
    """
    if not hasattr(model, "get_config"):
        raise TypeError(f"save: model must have get_config(), got {type(model).__name__}")
    arrays, param_entries = _model_arrays(model)
    buf_arrays, buf_entries = _buffer_arrays(model)
    arrays.update(buf_arrays)
    opt_meta = None
    if optimizer is not None:
        opt_arrays, opt_meta = _optimizer_arrays(optimizer)
        arrays.update(opt_arrays)
    meta = {"model": model.get_config(), "params": param_entries,
            "optimizer": opt_meta, "extra": extra}
    if buf_entries:
        meta["buffers"] = buf_entries
    meta_json = _dumps(meta, "the model config, the optimizer state and extra")
    _dumps(extra, "extra")
    out: Dict[str, npt.NDArray[Any]] = {"format": np.frombuffer(FORMAT.encode(), np.uint8),
           "version": np.array(2 if buf_entries else 1, np.int64),
           "meta": np.frombuffer(meta_json.encode("utf-8"), np.uint8)}
    out.update(arrays)
    out["sha256"] = np.frombuffer(_digest(out), np.uint8)
    _write_npz(path, out)
    return path


# ----------------------------------------------------------------------------- load

def _bad(path: _Path, what: str) -> DataFormatError:
    return DataFormatError(f"checkpoint {os.fspath(path)!r}: {what}")


def _check_zip(path: _Path) -> Dict[str, Tuple[Tuple[int, ...], np.dtype[Any]]]:
    """Structural checks on the archive; returns {key: (shape, dtype)} from the .npy headers."""
    size = os.path.getsize(path)
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise _bad(path, "not a fastnn checkpoint (not an .npz/zip archive; truncated or "
                         "foreign file)") from None
    headers = {}
    with zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        if len(set(names)) != len(names):
            raise _bad(path, "duplicate members in the archive")
        total = 0
        for info in infos:
            if not info.filename.endswith(".npy"):
                raise _bad(path, f"unexpected member {info.filename!r} (not an .npy array)")
            if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
                raise _bad(path, f"member {info.filename!r} is compressed; fastnn checkpoints "
                                 f"store members uncompressed")
            total += info.file_size
            if total > size:
                raise _bad(path, f"members declare {total} bytes but the file has {size} "
                                 f"(truncated or corrupt)")
        for info in infos:
            with zf.open(info) as member:
                try:
                    version = np.lib.format.read_magic(member)
                    if version == (1, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
                    elif version == (2, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
                    else:
                        raise ValueError(f"unsupported .npy version {version}")
                    header_len = member.tell()
                except ValueError as exc:
                    raise _bad(path, f"member {info.filename!r}: bad .npy header: {exc}") from None
            if dtype.hasobject or dtype.kind not in _OK_KINDS:
                raise _bad(path, f"member {info.filename!r} has dtype {dtype}; only numeric "
                                 f"arrays are allowed (no pickled objects)")
            n = dtype.itemsize
            for s in shape:
                n *= s
            if header_len + n != info.file_size:
                raise _bad(path, f"member {info.filename!r}: header declares {shape} {dtype} "
                                 f"({n} bytes) but the member holds {info.file_size - header_len}")
            headers[info.filename[:-4]] = (tuple(shape), dtype)
    return headers


def _read_all(path: _Path) -> Tuple[Dict[str, Tuple[Tuple[int, ...], np.dtype[Any]]],
                                   Dict[str, npt.NDArray[Any]]]:
    headers = _check_zip(path)
    for key in ("format", "version", "meta", "sha256"):
        if key not in headers:
            raise _bad(path, f"not a fastnn checkpoint (no {key!r} member)")
    with np.load(path, allow_pickle=False) as npz:
        if not hasattr(npz, "files"):
            raise _bad(path, "not a fastnn checkpoint (a single .npy, not an .npz)")
        arrays = {key: npz[key] for key in npz.files}
    return headers, arrays


def _text(path: _Path, arr: npt.NDArray[Any], key: str) -> bytes:
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise _bad(path, f"member {key!r} must be 1-D uint8, got {arr.dtype} {arr.shape}")
    return arr.tobytes()


def _check_entries(path: _Path, entries: Any,
                   headers: Mapping[str, Tuple[Tuple[int, ...], np.dtype[Any]]], prefix: str,
                   what: str) -> List[Dict[str, Any]]:
    if not isinstance(entries, list):
        raise _bad(path, f"metadata: {what} must be a list")
    out = []
    for i, e in enumerate(entries):
        if not (isinstance(e, dict) and isinstance(e.get("name"), str)
                and isinstance(e.get("shape"), list) and isinstance(e.get("dtype"), str)
                and e.get("key") == f"{prefix}.{i:03d}"):
            raise _bad(path, f"metadata: {what}[{i}] is malformed: {e!r:.200}")
        key = e["key"]
        if key not in headers:
            raise _bad(path, f"{what} {e['name']!r}: member {key!r} is missing")
        shape, dtype = headers[key]
        try:
            want_dtype = np.dtype(e["dtype"])
        except TypeError:
            raise _bad(path, f"metadata: {what}[{i}] has invalid dtype {e['dtype']!r}") from None
        if shape != tuple(e["shape"]) or dtype != want_dtype:
            raise _bad(path, f"{what} {e['name']!r}: stored as {dtype} {shape}, metadata says "
                             f"{want_dtype} {tuple(e['shape'])}")
        out.append(e)
    return out


def _parse(path: _Path) -> Tuple[Dict[str, Any], Dict[str, npt.NDArray[Any]]]:
    """Everything validated: (meta dict, arrays dict)."""
    headers, arrays = _read_all(path)
    if _text(path, arrays["format"], "format") != FORMAT.encode():
        raise _bad(path, f"not a fastnn checkpoint (marker is not {FORMAT!r})")
    version = arrays["version"]
    if version.shape != () or version.dtype.kind not in "iu":
        raise _bad(path, f"member 'version' must be an integer scalar, got {version.dtype} "
                         f"{version.shape}")
    if int(version) not in SUPPORTED_VERSIONS:
        raise _bad(path, f"format version {int(version)} is not supported (this fastnn reads "
                         f"versions {', '.join(map(str, SUPPORTED_VERSIONS))}); upgrade fastnn")
    try:
        meta = json.loads(_text(path, arrays["meta"], "meta").decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad(path, f"metadata is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or not {"model", "params", "optimizer", "extra"} <= set(meta):
        raise _bad(path, "metadata lacks model/params/optimizer/extra")
    params = _check_entries(path, meta["params"], headers, "param", "parameter")
    if int(version) == 1 and "buffers" in meta:
        raise _bad(path, "metadata: a version 1 checkpoint cannot hold model buffers")
    model_bufs = _check_entries(path, meta.get("buffers", []), headers, "buffer",
                                "model buffer")
    meta["buffers"] = model_bufs
    opt = meta["optimizer"]
    bufs = []
    if opt is not None:
        if not isinstance(opt, dict) or "buffers" not in opt:
            raise _bad(path, "metadata: optimizer must be null or a dict with buffers")
        bufs = _check_entries(path, opt["buffers"], headers, "optim", "optimizer buffer")
    expected = (set(_FIXED_KEYS) | {e["key"] for e in params} | {e["key"] for e in bufs}
                | {e["key"] for e in model_bufs})
    unexpected = sorted(set(arrays) - expected)
    if unexpected:
        raise _bad(path, f"unexpected members {unexpected}")
    sha = _text(path, arrays["sha256"], "sha256")
    if sha != _digest(arrays):
        raise _bad(path, "SHA-256 mismatch: the file was damaged or edited after it was saved")
    return meta, arrays


def _model_class(name: Any) -> Optional[Type[Sequential]]:
    # Only fastnn's own model classes: the file chooses among them, never imports code.
    # (The ready-made models of fastnn.models save as the Sequential they are.)
    from .sequential import Sequential
    return {"Sequential": Sequential}.get(name) if isinstance(name, str) else None


def _build_model(path: _Path, meta: Mapping[str, Any],
                 arrays: Mapping[str, npt.NDArray[Any]]) -> Sequential:
    cfg = meta["model"]
    cls = _model_class(cfg.get("class") if isinstance(cfg, dict) else None)
    if cls is None:
        raise _bad(path, f"unknown model class in the architecture: {cfg!r:.200}")
    try:
        model = cls.from_config(cfg)
    except (ValueError, TypeError, KeyError) as exc:
        raise _bad(path, f"the saved architecture cannot be rebuilt: {exc}") from None
    named = list(model.named_parameters())
    saved = [(e["name"], arrays[e["key"]]) for e in meta["params"]]
    if [n for n, _ in named] != [n for n, _ in saved]:
        raise _bad(path, f"parameters {[n for n, _ in saved]} do not match the rebuilt model's "
                         f"{[n for n, _ in named]}")
    for (name, p), (_, arr) in zip(named, saved):
        if p.data.shape != arr.shape or p.data.dtype != arr.dtype:
            raise _bad(path, f"parameter {name!r}: saved {arr.dtype} {arr.shape}, the model "
                             f"expects {p.data.dtype} {p.data.shape}")
        # In place: parameters are views into the model's flat buffer.
        p.data[...] = arr
    named_bufs = list(model.named_buffers())
    saved_bufs = [(e["name"], arrays[e["key"]]) for e in meta["buffers"]]
    if [n for n, _ in named_bufs] != [n for n, _ in saved_bufs]:
        raise _bad(path, f"buffers {[n for n, _ in saved_bufs]} do not match the rebuilt "
                         f"model's {[n for n, _ in named_bufs]}")
    for (name, buf), (_, arr) in zip(named_bufs, saved_bufs):
        if buf.shape != arr.shape or buf.dtype != arr.dtype:
            raise _bad(path, f"buffer {name!r}: saved {arr.dtype} {arr.shape}, the model "
                             f"expects {buf.dtype} {buf.shape}")
        buf[...] = arr
    return model


@overload
def load(path: _Path, with_optimizer: Literal[False] = ...) -> Sequential: ...
@overload
def load(path: _Path, with_optimizer: Literal[True]) -> Checkpoint: ...
@overload
def load(path: _Path, with_optimizer: bool) -> Union[Sequential, Checkpoint]: ...


def load(path: _Path, with_optimizer: bool = False) -> Union[Sequential, Checkpoint]:
    """Read a checkpoint written by ``save``; rebuild the model with its weights.

    ``model = Class.from_config(config); p.data[...] = saved[p.name] for p``.

    Returns the model, or with ``with_optimizer=True`` a ``Checkpoint(model,
    optimizer_state, extra)`` namedtuple (``optimizer_state`` is None when no
    optimizer was saved).  Raises ``DataFormatError`` for a truncated,
    damaged, edited or foreign file; ``FileNotFoundError`` if it is missing.

    Example::

        >>> import fastnn
        >>> from fastnn.models import MLP
        >>> from fastnn.optim import Adam
        >>> fastnn.save(MLP([784, 32, 10], seed=0), "mnist.npz", extra={"epoch": 3})
        'mnist.npz'
        >>> model, opt_state, extra = fastnn.load("mnist.npz", with_optimizer=True)
        >>> opt_state is None, extra
        (True, {'epoch': 3})
        >>> optimizer = Adam(model)          # with a saved state: optimizer.load_state_dict(opt_state)
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        meta, arrays = _parse(path)
    except DataFormatError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError,
            struct.error, RuntimeError, NotImplementedError, OverflowError) as exc:
        # RuntimeError: zipfile's "encrypted member" (a flipped flag bit) and a
        # RecursionError from absurdly nested JSON; NotImplementedError: an
        # unknown compression method.
        # Anything numpy or zipfile raises on a damaged archive (a bad CRC, a
        # short read) is a format error, never a raw traceback.
        if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise
        raise _bad(path, f"corrupt archive ({type(exc).__name__}: {exc})") from None
    model = _build_model(path, meta, arrays)
    if not with_optimizer:
        return model
    opt_state = None
    if meta["optimizer"] is not None:
        o = meta["optimizer"]
        opt_state = {"class": o.get("class"), "hyper": o.get("hyper"), "step": o.get("step"),
                     "buffers": {e["name"]: arrays[e["key"]] for e in o["buffers"]}}
    return Checkpoint(model, opt_state, meta["extra"])
