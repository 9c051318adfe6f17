"""numpy's BLAS (OpenBLAS/MKL) as a matmul variant: the yardstick.

The bias and ReLU are separate passes here; that is part of what the fused
native kernel saves."""
from __future__ import annotations

from typing import Optional

import numpy as np
import numpy.typing as npt

from ... import _threads


def matmul(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating], out: npt.NDArray[np.floating],
           bias: Optional[npt.NDArray[np.floating]], relu: bool,
           nthreads: int = 1) -> npt.NDArray[np.floating]:
    _threads.sync_blas()
    np.matmul(a, b, out=out)
    if bias is not None:
        out += bias
    if relu:
        np.maximum(out, 0, out=out)
    return out


def simd() -> str:
    try:
        from threadpoolctl import threadpool_info
        for p in threadpool_info():
            if p.get("user_api") == "blas":
                return f"{p.get('internal_api')} ({p.get('architecture')})"
    except ImportError:
        pass
    return "numpy BLAS"
