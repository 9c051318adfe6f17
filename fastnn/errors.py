"""Exceptions raised by fastnn.

Every error names the argument at fault and what was expected.  The classes
subclass the built-in exception a user would catch anyway (``ValueError``,
``TypeError``, ``RuntimeError``), so ``except ValueError`` keeps working.
"""
from __future__ import annotations


class FastnnError(Exception):
    """Base class of every fastnn-specific exception."""


class ShapeError(FastnnError, ValueError):
    """An array has the wrong rank or shape, or two shapes do not match."""


class DTypeError(FastnnError, TypeError):
    """An array has a dtype the operation does not support, or dtypes are mixed."""


class DataFormatError(FastnnError, ValueError):
    """A data file (IDX, checkpoint, event log) is truncated, corrupt or foreign."""


class DatasetNotFoundError(FastnnError, FileNotFoundError):
    """A dataset could not be found locally nor downloaded; the message says where to put it."""


class DivergenceError(FastnnError, FloatingPointError):
    """Training produced NaN or inf (in the loss or the weights)."""

    # set by ``fit`` on the error it raises: the 0-based epoch and step in that epoch
    epoch: int
    step: int


class NotBuiltError(FastnnError, ImportError):
    """A native extension module is missing (the package was not compiled)."""
