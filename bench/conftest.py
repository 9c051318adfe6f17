"""Shared set-up of the pytest-benchmark suites in bench/ (never collected by the
normal test run: pytest's testpaths is tests/)."""
import os

import pytest


def pytest_report_header(config):
    import fastnn
    from fastnn.bench import _blas_info
    from fastnn.kernels import _registry
    try:
        feats = _registry.native_module("_common").cpu_features()
        feats = ",".join(k for k, v in feats.items() if v)
    except ImportError:
        feats = "native modules not built"
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    return [f"fastnn threads: {fastnn.get_num_threads()}  cpu features: {feats}",
            f"blas: {_blas_info()}  env: {env or 'clean'}"]


@pytest.fixture
def fastnn_threads(request):
    """Run the test body under fastnn.threads(n) (n from the test's parameter)."""
    import fastnn
    with fastnn.threads(request.param) as n:
        yield n
