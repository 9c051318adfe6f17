"""The specification of the matmul family, in float64 numpy.

    out = act(op(a) @ op(b) + bias)

Variant signature (shared by every variant of the family):
``fn(a, b, out, bias, relu, nthreads) -> out`` where ``a`` is op(a) with
shape (M, K), ``b`` is op(b) with shape (K, N) (any strides: a transpose is a
view, never a copy), ``out`` is a writable (M, N) array of the same dtype,
``bias`` is None or a contiguous (N,) array and ``relu`` a bool.

bf16 (``precision="bf16"``): both operands are rounded to bfloat16 by
:func:`bf16_round`, multiplied exactly and summed in float64 here (the
kernels sum in float32), then the same bias / ReLU epilogue:

    out = act(bf16(op(a)) @ bf16(op(b)) + bias)
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import numpy.typing as npt


def matmul(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating], out: npt.NDArray[np.floating],
           bias: Optional[npt.NDArray[np.floating]], relu: bool,
           nthreads: int = 1) -> npt.NDArray[np.floating]:
    acc = np.asarray(a, dtype=np.float64) @ np.asarray(b, dtype=np.float64)
    if bias is not None:
        acc += np.asarray(bias, dtype=np.float64)
    if relu:
        np.maximum(acc, 0.0, out=acc)
    out[...] = acc
    return out


def bf16_bits(x: npt.ArrayLike) -> npt.NDArray[np.uint16]:
    """The bfloat16 bit patterns of float32 ``x``, rounded to nearest even.

    As AVX512_BF16's ``vcvtneps2bf16`` (and fastnn's kernels) round:
    zero and denormals become a zero of the same sign, NaN stays NaN (quiet
    bit set), infinities stay infinite, finite values round to nearest even
    (those within half a bf16 ulp of the float32 maximum round to inf).

    >>> bf16_bits(np.float32([1.0, -2.0, 1.00390625, 1.01171875])).tolist()
    [16256, 49152, 16256, 16258]
    """
    u = np.asarray(x, dtype=np.float32).view(np.uint32)
    mag = u & np.uint32(0x7FFFFFFF)
    rne = (u.astype(np.uint64) + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = (u | np.uint32(0x00400000)) >> 16
    zero = u >> 16 & np.uint32(0x8000)
    out = np.where(mag > 0x7F800000, nan, np.where(mag < 0x00800000, zero, rne))
    return out.astype(np.uint16)


def bf16_round(x: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """``x`` rounded to bfloat16 (see :func:`bf16_bits`), widened back to float32.

    >>> bf16_round(np.float32([3.14159265, 1e-40, np.inf])).tolist()
    [3.140625, 0.0, inf]
    """
    bits = bf16_bits(x).astype(np.uint32) << 16
    return bits.view(np.float32)


def matmul_bf16(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating],
                out: npt.NDArray[np.floating], bias: Optional[npt.NDArray[np.floating]],
                relu: bool, nthreads: int = 1) -> npt.NDArray[np.floating]:
    """``out = act(bf16(a) @ bf16(b) + bias)``: inputs rounded, then float64 math."""
    return matmul(bf16_round(a), bf16_round(b), out, bias, relu, nthreads)
