"""Shared by the kernel-family tests: which (variant, SIMD level) pairs to run.

Every registered variant of the family except ``reference`` (which the tests
compare against), and the ``c`` variant on both SIMD paths (1 = AVX2+FMA,
0 = scalar).  Registered, not just loadable: a variant that does not load (an
unbuilt extension) fails its tests instead of silently leaving the list."""
import pytest

from fastnn import kernels as K


def variant_paths(family, *, with_reference=False):
    names = [v for v in K.variants(family, available_only=False)
             if with_reference or v != "reference"]
    return [(v, lvl) for v in names for lvl in ((1, 0) if v == "c" else (None,))]


def variant_fixture(family, **kw):
    """A pytest fixture yielding each variant name with its SIMD level set (restored after)."""
    paths = variant_paths(family, **kw)

    @pytest.fixture(params=paths, ids=[f"{v}-{'' if lvl is None else ('avx2', 'scalar')[1 - lvl]}"
                                       for v, lvl in paths])
    def variant(request):
        name, level = request.param
        if name not in K.variants(family):
            error = next(r["error"] for r in K.describe(family) if r["name"] == name)
            pytest.fail(f"{family} variant {name!r} does not load: {error}", pytrace=False)
        if level is not None:
            K.set_simd_level(level)
        try:
            yield name
        finally:
            if level is not None:
                K.set_simd_level(1)

    return variant
