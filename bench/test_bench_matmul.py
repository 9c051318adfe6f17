"""pytest-benchmark suite of the matmul family: every registered variant on the
MLP shapes of ``fastnn bench kernels`` (fastnn.bench.MATMUL_SHAPES), at one
thread and at fastnn's thread count.

    env -u OPENBLAS_CORETYPE python -m pytest bench/test_bench_matmul.py --benchmark-only -q \
        --benchmark-columns=median,iqr,rounds --benchmark-group-by=group

Groups are "shape / threads", so each table compares the variants side by
side; extra_info names the variant's SIMD path, the thread count and the
GFLOP/s of the median.  The first call (Numba's compile, first touch) is a
warm-up and is not timed.  The float64 ``reference`` and the slow variants
are skipped on 1024^3 (one call takes seconds).
"""
import numpy as np
import pytest

import fastnn
from fastnn.bench import MATMUL_SHAPES, SIMD_VARIANTS, _default_simd_variants, _operands, \
    _simd_variant
from fastnn.kernels import describe, get, variants
from fastnn.kernels.matmul.reference import bf16_round

pytest.importorskip("pytest_benchmark")

# the registry's variants, and the c variant on each SIMD path side by side
# (c@avx512: the fp32 AVX-512 engine forced; c@bf16: precision="bf16")
VARIANTS = variants("matmul") + _default_simd_variants()
THREADS = sorted({1, fastnn.get_num_threads()})
SIMD = {r["name"]: r["simd"] for r in describe("matmul")}
SIMD.update({name: f"c, fp32 engine {eng}" if not bf else "c, bf16"
             for name, (eng, bf) in SIMD_VARIANTS.items()})


@pytest.mark.parametrize("fastnn_threads", THREADS, indirect=True, ids=lambda n: f"t{n}")
@pytest.mark.parametrize("shape", MATMUL_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}x{s[2]}{s[3]}")
@pytest.mark.parametrize("variant", VARIANTS)
def test_matmul(benchmark, variant, shape, fastnn_threads):
    m, k, n, layout = shape
    if m * k * n >= 1024**3 and variant in ("reference", "numba", "cython"):
        pytest.skip(f"{variant} on 1024^3 takes seconds per call")
    nt = fastnn_threads
    a, b = _operands(m, k, n, layout, np.float32, np.random.default_rng(0))
    out = np.empty((m, n), np.float32)
    fn = _simd_variant(variant) if variant in SIMD_VARIANTS else get("matmul", variant)
    fn(a, b, out, None, False, nt)                       # warm-up / compile, not timed
    benchmark.group = f"matmul {m}x{k}x{n} {layout} threads={nt}"
    benchmark.extra_info.update(variant=variant, simd=SIMD.get(variant), threads=nt,
                                shape=[m, k, n], layout=layout)
    benchmark.pedantic(fn, args=(a, b, out, None, False, nt), rounds=15, iterations=3,
                       warmup_rounds=1)
    benchmark.extra_info["gflops_median"] = 2.0 * m * n * k / benchmark.stats["median"] / 1e9
    if variant in SIMD_VARIANTS:                        # back to the dispatcher's engine
        fastnn.kernels._registry.native_module("matmul_c").set_fp32_engine("auto")
    if SIMD_VARIANTS.get(variant, (None, False))[1]:
        a, b = bf16_round(a), bf16_round(b)
    np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=1e-3, atol=1e-3 * k ** 0.5)
