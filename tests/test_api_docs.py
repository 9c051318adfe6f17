"""docs/api.md is generated from the docstrings (tools/gen_api_docs.py) and must be current;
every public name has a docstring (issue 14: an API reference page generated from them)."""
import difflib
import importlib.util
import inspect
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
API_MD = os.path.join(ROOT, "docs", "api.md")
FIX = "python tools/gen_api_docs.py"


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location(
        "gen_api_docs", os.path.join(ROOT, "tools", "gen_api_docs.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def generated(gen):
    return gen.generate()


def test_api_md_is_current(generated):
    with open(API_MD, encoding="utf-8") as fh:
        current = fh.read()
    if current != generated:
        diff = "".join(list(difflib.unified_diff(
            current.splitlines(True), generated.splitlines(True),
            "docs/api.md (committed)", "docs/api.md (from the docstrings)", n=1))[:60])
        pytest.fail(f"docs/api.md is stale: a docstring or a public name changed.  Run\n"
                    f"    {FIX}\nfrom the repository root and commit docs/api.md.\n{diff}")


def test_every_public_name_has_a_docstring(gen):
    missing = gen.undocumented()
    assert not missing, (f"{len(missing)} public functions/classes/methods have no docstring "
                         f"(write one: the math, then the shapes, then a short example): "
                         + ", ".join(missing))


def test_every_top_level_name_is_documented(gen, generated):
    """What ``import fastnn`` offers (functions, classes) all appear, with a signature."""
    import fastnn
    names = [n for n in dir(fastnn) if not n.startswith("_")
             and (inspect.isfunction(getattr(fastnn, n)) or inspect.isclass(getattr(fastnn, n)))
             and getattr(fastnn, n).__module__.startswith("fastnn")]
    assert {"Sequential", "export_onnx", "softmax", "load", "threads", "ShapeError"} <= set(names)
    for n in names:
        assert f"`fastnn.{n}`" in generated, f"fastnn.{n} is missing from docs/api.md"
    for cls in ("Dense", "Conv2D", "Dropout"):
        assert f"### `fastnn.layers.{cls}`" in generated
    for name in ("fastnn.optim.Adam", "fastnn.losses.SoftmaxCrossEntropy",
                 "fastnn.training.fit", "fastnn.callbacks.EarlyStopping",
                 "fastnn.onnx_export.export_onnx", "fastnn.datasets.mnist.load_data"):
        assert f"### `{name}`" in generated, name


def test_output_is_deterministic_across_processes_and_directories(generated, tmp_path):
    """Another process, another working directory, another hash seed: the same bytes
    (no object addresses, no set order, no paths)."""
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('g', {os.path.join(ROOT, 'tools', 'gen_api_docs.py')!r})\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "sys.stdout.write(m.generate())\n")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out == generated
    assert " at 0x" not in generated and ROOT not in generated and str(tmp_path) not in generated


def test_docstring_rendering(gen):
    doc = '''Scale: ``y = a * x``, see :func:`fit`.

    Shapes: x (N,) -> y (N,); ``a`` spans
    two ``lines
    here``.  The rule::

        y_i = a x_i

    Parameters
    ----------
    a : float

    >>> import numpy as np
    >>> np.ones(2) * 2
    array([2., 2.])
    '''
    out = "\n".join(gen.render_docstring(doc))
    assert "Scale: `y = a * x`, see `fit`." in out
    assert "`lines\nhere`" in out                     # inline code across a line break
    assert "The rule:\n\n```text\ny_i = a x_i\n```" in out
    assert "**Parameters**" in out and "-----" not in out
    assert "```pycon\n>>> import numpy as np\n>>> np.ones(2) * 2\narray([2., 2.])\n```" in out


def test_signature_rendering(gen):
    def f(x: "npt.NDArray[Any]", *, dtype: "type" = float, fn=print, obj=object()) -> "int":
        """doc"""
    sig = gen.signature(f, "f")
    assert "x: npt.NDArray[Any]" in sig and "dtype: type = float" in sig
    assert "fn=print" in sig
    assert "-> int" in sig and " at 0x" not in sig and "'" not in sig.split("obj")[0]

    class C:
        def m(self, a: int = 1) -> None:
            """doc"""
    assert gen.signature(C.m, "C.m", method=True) == "C.m(a: int = 1) -> None"
