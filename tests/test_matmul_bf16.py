"""bf16 GEMM (issue 12): ``matmul(..., precision="bf16")`` and ``gemm_ex(bf16=True)``
at every SIMD level the CPU has, against the numpy reference
(``reference.bf16_round`` / ``matmul_bf16``).

Tolerances.  The reference rounds the inputs exactly as the kernels do and
sums the exact products in float64; the kernels sum them in float32 (native
vdpbf16ps or emulated fp32 FMAs), so the error bound is a float32 summation
bound, ``1e-6 * 32 * sqrt(K)`` of the output's scale -- the same as fp32
GEMM's.  Native and emulated results differ by summation order only: a
tolerance of the same size, and exactly zero on integer-valued inputs.
"""
import numpy as np
import pytest

import fastnn
from fastnn import kernels as K
from fastnn.errors import DTypeError
from fastnn.kernels import _registry, matmul
from fastnn.kernels.matmul import reference

TOP = _registry.cpu_max_simd_level()
LEVELS = list(range(TOP + 1))


def _mc():
    return _registry.native_module("matmul_c")


def _check(out, expect, k):
    expect = np.asarray(expect, np.float64)
    if not expect.size:
        return
    scale = max(1.0, float(np.max(np.abs(expect))))
    err = float(np.max(np.abs(out.astype(np.float64) - expect)))
    assert err <= 1e-6 * 32 * max(k, 1) ** 0.5 * scale, f"max error {err:.3g}"


# ----------------------------------------------------------------------------- the reference

def _slow_bf16(x):
    """Per element, from the definition: nearest of the two bf16 neighbours, ties to even."""
    out = []
    for v in np.asarray(x, np.float32).ravel():
        u = int(np.float32(v).view(np.uint32))
        if np.isnan(v):
            out.append(((u | 0x00400000) >> 16))
            continue
        if (u & 0x7F800000) == 0:                        # zero or denormal
            out.append((u >> 16) & 0x8000)
            continue
        lo, hi = u & 0xFFFF0000, (u & 0xFFFF0000) + 0x10000
        d_lo, d_hi = u - lo, hi - u
        pick = lo if d_lo < d_hi or (d_lo == d_hi and not (lo >> 16) & 1) else hi
        out.append(pick >> 16)
    return np.array(out, np.uint16)


def test_reference_rounding_matches_definition():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32)
    special = np.array([0, 0x80000000, 1, 0x807FFFFF, 0x00800000, 0x3F808000, 0x3F818000,
                        0x3F80FFFF, 0x7F7FFFFF, 0x7F7F7FFF, 0x7F800000, 0xFF800000,
                        0x7F800001, 0xFFC00001, 0x7FBFFFFF], np.uint32)
    x = np.concatenate([bits, special]).view(np.float32)
    np.testing.assert_array_equal(reference.bf16_bits(x), _slow_bf16(x))
    r = reference.bf16_round(x)
    assert np.all(np.isnan(r) == np.isnan(x))                   # NaN preserved
    assert reference.bf16_round(np.float32([3.4e38]))[0] == np.inf   # rounds past max


# ----------------------------------------------------------------------------- every level

SHAPES = [(0, 5, 3), (4, 0, 3), (3, 5, 0), (1, 1, 1), (1, 2, 1), (2, 3, 5), (7, 13, 17),
          (12, 32, 32), (13, 331, 37), (37, 29, 101), (40, 350, 50), (145, 385, 33),
          (150, 97, 10), (128, 512, 10), (10, 64, 200), (97, 193, 257)]


def _operand(rng, shape, trans):
    if trans:
        return rng.standard_normal(shape[::-1]).astype(np.float32).T
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("shape", SHAPES)
def test_bf16_every_level_matches_reference(level, shape, restore_level):
    K.set_simd_level(level)
    rng = np.random.default_rng(abs(hash(shape)) % 2**32)
    m, k, n = shape
    for ta, tb in ((False, False), (True, False), (False, True), (True, True)):
        a, b = _operand(rng, (m, k), ta), _operand(rng, (k, n), tb)
        bias = rng.standard_normal(n).astype(np.float32)
        for bias_, act in ((None, None), (bias, "relu")):
            got = matmul(a, b, bias=bias_, activation=act, precision="bf16")
            ref = reference.matmul_bf16(a, b, np.empty((m, n)), bias_, act == "relu")
            _check(got, ref, k)


@pytest.mark.parametrize("level", LEVELS)
def test_bf16_epilogues_strided_operands(level, restore_level):
    K.set_simd_level(level)
    gemm_ex = _mc().gemm_ex
    rng = np.random.default_rng(31)
    for m, k, n in ((7, 13, 17), (29, 251, 45), (12, 64, 32), (100, 77, 61)):
        a = rng.standard_normal((2 * m, 3 * k)).astype(np.float32)[::2, ::3]
        b = rng.standard_normal((k, 3 * n)).astype(np.float32)[:, ::-3]
        bias = rng.standard_normal(n).astype(np.float32)
        old = rng.standard_normal((m, n)).astype(np.float32)
        mask = np.asfortranarray(rng.standard_normal((m, n)).astype(np.float32))
        big = np.zeros((m, 2 * n), np.float32)
        for out in (old.copy(), np.asfortranarray(old), big[:, ::2]):
            out[...] = old
            gemm_ex(a, b, out, bias, True, mask, True, 2, True)
            ref = reference.bf16_round(a).astype(np.float64) @ reference.bf16_round(b)
            _check(out, np.where(mask > 0, np.maximum(ref + old + bias, 0), 0), k)


@pytest.mark.parametrize("level", LEVELS)
def test_bf16_rounding_through_the_packers(level, restore_level):
    """K = 1 or 2 with B = [1] (or [1, 0]): C is the rounded A, exactly, whichever
    packer (hardware vcvtneps2bf16 or software) handled it."""
    K.set_simd_level(level)
    rng = np.random.default_rng(32)
    vals = np.concatenate([rng.standard_normal(200).astype(np.float32) * 1000,
                           np.float32([1.00390625, 1.01171875, -2.5, 3.3895314e38, 1e-30,
                                       np.inf, -np.inf, 65504.0, 1 + 2**-8, 1 + 3 * 2**-8])])
    want = reference.bf16_round(vals).astype(np.float64)
    for rows in (vals[:, None], np.asfortranarray(vals[:, None])):
        got = matmul(rows, np.ones((1, 1), np.float32), precision="bf16")[:, 0]
        np.testing.assert_array_equal(got, want)
    for n in (1, 40):                                  # K = 2: the pair (v, 0)
        a = np.stack([vals, rng.standard_normal(vals.size).astype(np.float32)], axis=1)
        b = np.zeros((2, n), np.float32)
        b[0] = 1
        got = matmul(a, b, precision="bf16")
        np.testing.assert_array_equal(got, np.repeat(want[:, None], n, axis=1))
        got = matmul(b.T.copy(), a.T.copy(), precision="bf16")      # the same, transposed
        np.testing.assert_array_equal(got, np.repeat(want[None, :], n, axis=0))


def test_bf16_nan_propagates(restore_level):
    for level in LEVELS:
        K.set_simd_level(level)
        a = np.ones((20, 40), np.float32)
        a[3, 7] = np.nan
        got = matmul(a, np.ones((40, 50), np.float32), precision="bf16")
        assert np.isnan(got[3]).all() and not np.isnan(np.delete(got, 3, axis=0)).any()


@pytest.mark.parametrize("level", LEVELS)
def test_bf16_bitwise_repeatable_across_threads(level, restore_level):
    K.set_simd_level(level)
    rng = np.random.default_rng(33)
    for m, k, n in ((128, 784, 512), (301, 333, 97), (9, 700, 900), (128, 512, 10)):
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        outs = []
        for nt in (1, 2, 2):
            with fastnn.threads(nt):
                outs.append(matmul(a, b, activation="relu", precision="bf16"))
        assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[1], outs[2])


def test_native_and_emulated_agree(restore_level):
    """Every level against the top one: within the float32 summation bound for
    random data, bit for bit for small integers (every partial sum exact)."""
    rng = np.random.default_rng(34)
    a = rng.standard_normal((70, 301)).astype(np.float32)
    b = rng.standard_normal((301, 90)).astype(np.float32)
    ai = rng.integers(-8, 9, (70, 301)).astype(np.float32)
    bi = rng.integers(-8, 9, (301, 90)).astype(np.float32)
    res = {}
    for level in LEVELS:
        K.set_simd_level(level)
        res[level] = (matmul(a, b, precision="bf16"), matmul(ai, bi, precision="bf16"))
    for level in LEVELS:
        _check(res[level][0], res[TOP][0], 301)
        np.testing.assert_array_equal(res[level][1], ai.astype(np.float64) @ bi)


def test_bf16_api_errors():
    a64 = np.ones((3, 4))
    with pytest.raises(DTypeError, match="precision='bf16' needs float32"):
        matmul(a64, a64.T, precision="bf16")
    a = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="precision must be 'fp32' or 'bf16'"):
        matmul(a, a.T, precision="fp16")
    with pytest.raises(ValueError, match="runs on variant 'c' or 'reference'"):
        matmul(a, a.T, precision="bf16", variant="blas")
    np.testing.assert_array_equal(matmul(a, a.T, precision="bf16", variant="reference"), 4.0)
    with pytest.raises(TypeError, match="bf16 GEMM: operands must be float32"):
        _mc().gemm_ex(a64, a64.T, np.empty((3, 3)), bf16=True)
