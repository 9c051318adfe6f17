"""Reader for the IDX format (the format MNIST ships in), raw or gzipped.

An IDX file is a header followed by the payload, all big-endian::

    bytes 0-1   0x00 0x00                    magic
    byte  2     type code                    0x08 uint8, 0x09 int8, 0x0B int16,
                                             0x0C int32, 0x0D float32, 0x0E float64
    byte  3     ndim                         number of dimensions (1..8 here)
    then        ndim x uint32                the dimensions d0, ..., d{ndim-1}
    then        d0 * ... * d{ndim-1} items   row-major payload

The reader never trusts the header with memory: the declared payload size is
compared with what the file actually holds before anything that size is
allocated.  For gzip the stream is decompressed incrementally and reading
stops as soon as more than the declared size arrives or the stream ends
early, so a "gzip bomb" or a header claiming 2**31 images costs at most the
bytes really present (and never more than ``MAX_PAYLOAD_BYTES``).
"""
import gzip
import os
import zlib

import numpy as np

from ..errors import DataFormatError

__all__ = ["load_idx", "MAX_PAYLOAD_BYTES", "MAX_NDIM"]

#: Largest payload accepted (8 GiB): far above any real IDX file, far below
#: what a corrupt header could claim.
MAX_PAYLOAD_BYTES = 2 ** 33
#: Largest number of dimensions accepted.
MAX_NDIM = 8

# type code -> big-endian dtype as stored in the file
_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"
# Decompress in slices of this size, so memory follows the bytes actually
# present rather than what the header declares.
_CHUNK = 1 << 20


def _fail(path, what):
    raise DataFormatError(f"IDX file {os.fspath(path)!r}: {what}")


def _parse_header(path, head4, read_exact):
    """Validate the 4 magic bytes, read the dims; return (dtype, shape, payload bytes)."""
    if len(head4) < 4:
        _fail(path, f"truncated header: expected at least 4 bytes, got {len(head4)}")
    if head4[0] != 0 or head4[1] != 0:
        _fail(path, f"bad magic: expected the file to start with bytes 00 00, got "
                    f"{head4[0]:02x} {head4[1]:02x} (not an IDX file)")
    code, ndim = head4[2], head4[3]
    if code not in _TYPES:
        known = ", ".join(f"0x{c:02X}" for c in _TYPES)
        _fail(path, f"unknown data type code 0x{code:02X} (expected one of {known})")
    if not 1 <= ndim <= MAX_NDIM:
        _fail(path, f"number of dimensions is {ndim}, expected 1..{MAX_NDIM}")
    raw_dims = read_exact(4 * ndim)
    if len(raw_dims) != 4 * ndim:
        _fail(path, f"truncated header: expected {4 + 4 * ndim} header bytes, "
                    f"got {4 + len(raw_dims)}")
    shape = tuple(int(d) for d in np.frombuffer(raw_dims, dtype=">u4"))
    dtype = _TYPES[code]
    nbytes = dtype.itemsize
    for d in shape:
        nbytes *= d                 # Python ints: no overflow
    if nbytes > MAX_PAYLOAD_BYTES:
        _fail(path, f"header declares shape {shape} of {dtype.name} = {nbytes} bytes, "
                    f"more than the {MAX_PAYLOAD_BYTES}-byte limit (corrupt header?)")
    return dtype, shape, nbytes


def _read_raw(path, fh, hasher):
    size = os.fstat(fh.fileno()).st_size
    head = fh.read(4)
    dtype, shape, nbytes = _parse_header(path, head, fh.read)
    header_len = 4 + 4 * len(shape)
    # Compare with the real file size before allocating anything that large.
    if size - header_len != nbytes:
        kind = "truncated" if size - header_len < nbytes else "trailing bytes after the data"
        _fail(path, f"{kind}: header declares shape {shape} of {dtype.name}, i.e. "
                    f"{nbytes} payload bytes, but the file holds {size - header_len}")
    payload = np.empty(nbytes, dtype=np.uint8)
    got = fh.readinto(memoryview(payload))
    if got != nbytes:                                   # file shrank under us
        _fail(path, f"truncated: expected {nbytes} payload bytes, read {got}")
    if hasher is not None:
        fh.seek(0)
        hasher.update(fh.read(header_len))
        hasher.update(payload)
    return payload, dtype, shape


def _read_gzip(path, fh, hasher):
    gz = gzip.GzipFile(fileobj=fh, mode="rb")
    head = gz.read(4)
    dtype, shape, nbytes = _parse_header(path, head, gz.read)
    # Grow the buffer with the data actually decompressed: a header that lies
    # about the size costs only the bytes really in the stream.
    buf = bytearray()
    while len(buf) <= nbytes:
        piece = gz.read(min(_CHUNK, nbytes + 1 - len(buf)))
        if not piece:
            break
        buf += piece
    if len(buf) != nbytes:
        if len(buf) > nbytes:
            # Stop here: decompressing the rest of a bomb just to count it is the attack.
            _fail(path, f"trailing bytes after the data: header declares shape {shape} of "
                        f"{dtype.name}, i.e. {nbytes} payload bytes, but the decompressed "
                        f"stream holds more than {nbytes} (reading stopped there)")
        _fail(path, f"truncated: header declares shape {shape} of {dtype.name}, i.e. "
                    f"{nbytes} payload bytes, but the decompressed stream holds {len(buf)}")
    # Reading one more byte makes gzip check the CRC and length trailer and
    # reject garbage after the stream (a damaged final member).
    if gz.read(1):
        _fail(path, "trailing bytes after the data in the decompressed stream")
    if hasher is not None:
        hasher.update(head)
        hasher.update(np.asarray(shape, dtype=">u4").tobytes())
        hasher.update(buf)
    return np.frombuffer(buf, dtype=np.uint8), dtype, shape


def _load(path, hasher=None):
    """Read ``path``; feed the decompressed bytes to ``hasher`` (hashlib object) if given."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(2)
            fh.seek(0)
            if magic == _GZIP_MAGIC:
                payload, dtype, shape = _read_gzip(path, fh, hasher)
            else:
                payload, dtype, shape = _read_raw(path, fh, hasher)
    except DataFormatError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        # gzip.BadGzipFile is an OSError; a missing file stays FileNotFoundError.
        if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise
        raise DataFormatError(f"IDX file {path!r}: corrupt gzip stream "
                              f"({type(exc).__name__}: {exc})") from exc
    arr = payload.view(dtype).reshape(shape)
    # Big-endian in the file; hand back native byte order (a no-op for uint8/int8).
    return arr.astype(dtype.newbyteorder("="), copy=False)


def load_idx(path):
    """Read an IDX file (raw or gzip, detected from the magic bytes ``1f 8b``).

    The payload of ``d0 x ... x d{n-1}`` items of the declared type is
    returned as an array of that shape in native byte order.

    Shapes: ``(d0, ..., d{n-1})`` as declared in the header, 1 <= n <= 8.

    Raises ``DataFormatError`` (naming the file, the expected and the actual
    byte counts) when the magic, type code or dimension count is invalid,
    when the payload is truncated or followed by extra bytes, when the gzip
    stream is corrupt, or when the header declares more than
    ``MAX_PAYLOAD_BYTES``; ``FileNotFoundError`` when ``path`` does not exist.

    Example::

        >>> import gzip
        >>> from fastnn.datasets import load_idx
        >>> header = bytes([0, 0, 0x08, 3]) + b"".join(d.to_bytes(4, "big") for d in (2, 28, 28))
        >>> with gzip.open("digits-idx3-ubyte.gz", "wb") as fh:    # uint8, 2 x 28 x 28
        ...     _ = fh.write(header + bytes(2 * 28 * 28))
        >>> x = load_idx("digits-idx3-ubyte.gz")
        >>> x.shape, x.dtype
        ((2, 28, 28), dtype('uint8'))
    """
    return _load(path)
