"""Deprecated module name: ``Sequential`` lives in ``fastnn.sequential`` and
``Parameter`` in ``fastnn.parameter`` (``model`` and ``models`` differed by one
letter).  ``fastnn.Sequential`` is the name to use."""
import warnings

from .parameter import Parameter
from .sequential import Sequential

__all__ = ["Parameter", "Sequential"]

warnings.warn("fastnn.model is deprecated: import Sequential from fastnn (or "
              "fastnn.sequential) and Parameter from fastnn.parameter",
              DeprecationWarning, stacklevel=2)
