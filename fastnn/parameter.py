"""``Parameter``: a named trainable array and its gradient.

This module sits below every other one (layers create parameters, models
gather them into flat buffers, optimizers update them), so it imports
nothing from fastnn but the error types.

>>> import numpy as np
>>> p = Parameter("weight", np.ones((2, 3), np.float32))
>>> p.shape, p.grad.dtype, p.owner is None
((2, 3), dtype('float32'), True)
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np
import numpy.typing as npt

from .errors import ShapeError

__all__ = ["Parameter"]


class Parameter:
    """A named trainable array and its gradient.

    ``data`` and ``grad`` have the same shape and dtype.  Inside a
    ``Sequential`` both are views into the model's flat buffers; assigning
    ``p.data = values`` (or ``p.grad = ...``) copies into the view, so the
    aliasing is never broken.

    Attributes: ``name`` (``"0.weight"`` inside a model, ``"weight"`` on a
    bare layer), ``local_name`` (``"weight"``), ``data``, ``grad``, ``shape``,
    ``size``, ``dtype``, ``offset`` (start in the owner's flat buffers, or
    None) and ``owner`` (the model whose flat buffers hold it, or None)."""

    __slots__ = ("name", "_data", "_grad", "_owner", "offset", "local_name")

    def __init__(self, name: str, data: npt.ArrayLike,
                 grad: Optional[npt.NDArray[Any]] = None) -> None:
        data = np.asarray(data)
        self.name = name
        self.local_name = name
        self._data = data
        self._grad = np.zeros_like(data) if grad is None else grad
        self._owner: Any = None
        self.offset: Optional[int] = None

    @property
    def data(self) -> npt.NDArray[Any]:
        """The values (an array of ``shape``/``dtype``; a view of the model's
        ``flat_params`` inside a model).  ``p.data = values`` copies ``values`` in
        (same shape, else ``ShapeError``); the array object itself never changes."""
        return self._data

    @data.setter
    def data(self, value: npt.ArrayLike) -> None:
        self._assign("data", self._data, value)

    @property
    def grad(self) -> npt.NDArray[Any]:
        """The gradient of the loss with respect to ``data``, same shape and dtype,
        accumulated by ``backward`` (a view of the model's ``flat_grads`` inside a
        model).  ``p.grad = values`` copies in, as for ``data``."""
        return self._grad

    @grad.setter
    def grad(self, value: npt.ArrayLike) -> None:
        self._assign("grad", self._grad, value)

    @property
    def owner(self) -> Any:
        """The model whose flat buffers hold this parameter (None for a bare layer's)."""
        return self._owner

    def _assign(self, what: str, target: npt.NDArray[Any], value: npt.ArrayLike) -> None:
        value = np.asarray(value)
        if value.shape != target.shape:
            raise ShapeError(f"Parameter {self.name!r}: {what} must have shape {target.shape}, "
                             f"got {value.shape}")
        target[...] = value

    @property
    def shape(self) -> Tuple[int, ...]:
        """``data.shape``."""
        return self._data.shape

    @property
    def size(self) -> int:
        """The number of values, ``data.size``."""
        return int(self._data.size)

    @property
    def dtype(self) -> np.dtype[Any]:
        """``data.dtype`` (float32 or float64)."""
        return self._data.dtype

    def bind(self, data_view: npt.NDArray[Any], grad_view: npt.NDArray[Any], owner: Any,
             offset: int, name: str) -> None:
        """Move the values into ``owner``'s flat buffers: ``data_view``/``grad_view`` are
        views of them starting at ``offset``.  Called by the model that gathers the
        parameters (``Sequential``), never by users."""
        self._data, self._grad, self._owner, self.offset, self.name = (
            data_view, grad_view, owner, offset, name)

    def __repr__(self) -> str:
        return f"Parameter(name={self.name!r}, shape={self.shape}, dtype={self.dtype})"
