"""The ``numba`` matmul variant: ``out = act(a @ b + bias)``, blocked, with a
``prange`` over output tiles.

    out[i, j] = relu?( sum_k a[i, k] * b[k, j] + bias[j] )

Shapes: a (M, K), b (K, N), out (M, N), bias (N,) or None; float32 or
float64; any strides (a transpose is a view).  Same signature as every
matmul variant (see reference.py).

How it is blocked: each parallel iteration owns one MB x NB tile of ``out``
and walks K in KB steps.  The KB x NB slice of ``b`` is copied into a
contiguous panel (so the innermost loop is a unit-stride, fixed-length loop
LLVM vectorises whatever b's strides are), and the tile is accumulated in an
MB x NB scratch that stays in L1.  K is summed in the same order for every
tile, so results do not depend on the thread count.

fastmath is limited to ``contract`` (fused multiply-add): reassociation
would make results depend on the vector width, and nnan/ninf would break
NaN/inf handling.

>>> import numpy as np
>>> from fastnn.kernels.matmul.numba_impl import matmul
>>> a = np.ones((2, 3), np.float32); b = np.ones((3, 4), np.float32)
>>> float(matmul(a, b, np.empty((2, 4), np.float32), None, False)[0, 0])
3.0
"""
from __future__ import annotations

from typing import Optional

import numba
import numpy as np
import numpy.typing as npt
from numba import njit, prange

from ... import _threads

MB = 16      # tile rows
NB = 256     # tile columns: the vectorised loop (long: its set-up costs as much as 64 FMAs)
KB = 128     # k block: the KB x NB panel of b (128 KiB f32) stays in L2

# fastmath: only "contract" (a*b+c -> FMA), which changes no NaN/inf
# behaviour; reassociation stays off so the summation order is fixed.
_FM = {"contract"}


@njit(fastmath=_FM, cache=True, nogil=True)
def _pack_panel(b, pan, k0, j0, kb, nb, nbw):
    # pan[k, j] = b[k0 + k, j0 + j], zero-padded to nbw columns (b: any
    # strides); read along b's contiguous axis (a transposed b: down columns)
    if abs(b.strides[0]) < abs(b.strides[1]):
        for j in range(nb):
            for k in range(kb):
                pan[k, j] = b[k0 + k, j0 + j]
    else:
        for k in range(kb):
            for j in range(nb):
                pan[k, j] = b[k0 + k, j0 + j]
    for k in range(kb):
        for j in range(nb, nbw):
            pan[k, j] = 0


@njit(fastmath=_FM, cache=True, nogil=True)
def _tile_update(a, pan, acc, i0, k0, mb, kb, nbw):
    # acc[i, :nbw] += a[i0 + i, k0 + k] * pan[k, :nbw]: a unit-stride loop
    # that LLVM vectorises (kept in its own function: inlined into the
    # parallel body it compiled to much slower code)
    for i in range(mb):
        for k in range(kb):
            aik = a[i0 + i, k0 + k]
            for j in range(nbw):
                acc[i, j] += aik * pan[k, j]


@njit(fastmath=_FM, cache=True, nogil=True)
def _one_tile(a, b, out, bias, has_bias, relu, t, n_tj, acc, pan):
    M, K = a.shape
    N = b.shape[1]
    i0 = (t // n_tj) * MB
    j0 = (t % n_tj) * NB
    mb = min(MB, M - i0)
    nb = min(NB, N - j0)
    nbw = min(NB, (nb + 15) // 16 * 16)     # narrow N: compute only what is needed
    for i in range(MB):
        for j in range(NB):
            acc[i, j] = 0
    for k0 in range(0, K, KB):
        kb = min(KB, K - k0)
        _pack_panel(b, pan, k0, j0, kb, nb, nbw)
        _tile_update(a, pan, acc, i0, k0, mb, kb, nbw)
    for i in range(mb):
        for j in range(nb):
            v = acc[i, j]
            if has_bias:
                v += bias[j0 + j]
            if relu and v < 0:
                v = 0
            out[i0 + i, j0 + j] = v


@njit(parallel=True, cache=True, nogil=True)
def _matmul_kernel(a, b, out, bias, has_bias, relu, nchunks):
    M = a.shape[0]
    N = b.shape[1]
    n_tiles = ((M + MB - 1) // MB) * ((N + NB - 1) // NB)
    n_tj = (N + NB - 1) // NB
    # one chunk per thread: its scratch (acc in L1, pan in L2) is allocated
    # once per call, not per tile (pan is 128 KiB: a per-tile malloc would be
    # an mmap + page faults each time); tiles go round-robin to chunks, and
    # each tile is computed the same way whichever chunk runs it
    for c in prange(nchunks):
        acc = np.empty((MB, NB), dtype=out.dtype)
        pan = np.empty((KB, NB), dtype=out.dtype)
        for t in range(c, n_tiles, nchunks):
            _one_tile(a, b, out, bias, has_bias, relu, t, n_tj, acc, pan)
    return out


@njit(cache=True, nogil=True)
def _matmul_serial(a, b, out, bias, has_bias, relu):
    # one thread: the same tiles on the calling thread, without waking
    # Numba's pool (its idle workers spin, which costs a busy 2-core machine
    # more than the kernel itself)
    n_tj = (b.shape[1] + NB - 1) // NB
    n_tiles = ((a.shape[0] + MB - 1) // MB) * n_tj
    acc = np.empty((MB, NB), dtype=out.dtype)
    pan = np.empty((KB, NB), dtype=out.dtype)
    for t in range(n_tiles):
        _one_tile(a, b, out, bias, has_bias, relu, t, n_tj, acc, pan)
    return out


def matmul(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating], out: npt.NDArray[np.floating],
           bias: Optional[npt.NDArray[np.floating]], relu: bool,
           nthreads: int = 1) -> npt.NDArray[np.floating]:
    """``out = act(a @ b + bias)`` with Numba (see the module docstring)."""
    _threads.sync_numba()
    # the caller's count wins (tests pass 1 and 2 explicitly); sync_numba
    # has already applied fastnn's count when they agree
    n = max(1, min(int(nthreads), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)
    has_bias = bias is not None
    if not has_bias:
        bias = np.zeros(1, dtype=out.dtype)   # typed placeholder, never read
    if n == 1:
        _matmul_serial(a, b, out, bias, has_bias, bool(relu))
    else:
        _matmul_kernel(a, b, out, bias, has_bias, bool(relu), n)
    return out
