"""Crash-safe file writes shared by checkpoints and the dataset cache."""
from __future__ import annotations

import os
import tempfile
from typing import IO, Callable, Union

__all__ = ["atomic_write", "fsync_dir"]


def fsync_dir(d: Union[str, os.PathLike[str]]) -> None:
    """Make a rename inside directory ``d`` durable (best effort: not every FS allows it)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Union[str, os.PathLike[str]], write: Callable[[IO[bytes]], object], *,
                 make_dirs: bool = False) -> None:
    """Write ``path`` so that it always holds either its old content or the complete new one.

    ``write(fh)`` fills a binary file object: a temporary file in the same directory,
    flushed and fsynced, then renamed over ``path`` with ``os.replace`` and the directory
    fsynced.  A process killed at any moment leaves no partial ``path``; an exception
    removes the temporary file and propagates."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    if make_dirs:
        os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(d)
