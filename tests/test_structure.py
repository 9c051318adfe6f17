"""The package's structure (issue 10): no import cycle, one fusion contract that
decides and explains what runs on the fused trainer, consistent public names."""
import ast
import inspect
import pathlib
import warnings

import numpy as np
import pytest

import fastnn
from fastnn import fusion, training
from fastnn.layers import Dense, Dropout, Flatten, Layer, ReLU, Sigmoid
from fastnn.losses import MeanSquaredError, SoftmaxCrossEntropy
from fastnn.models import MLP, SoftmaxRegression
from fastnn.optim import SGD, Adam, AdamW
from fastnn.sequential import Sequential

PKG = pathlib.Path(fastnn.__file__).parent


# ------------------------------------------------------------------ import graph

def _module_name(path):
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test):
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _top_level_imports(path, modname, known):
    """fastnn modules imported at module level (not inside functions) by one file."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    package = modname if is_pkg else modname.rpartition(".")[0]
    found = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name in known)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                if mod in known:
                    found.add(mod)
                for a in node.names:          # `from . import x` imports module x
                    sub = f"{mod}.{a.name}"
                    if sub in known:
                        found.add(sub)
            elif isinstance(node, ast.ClassDef):
                visit(node.body)
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                visit(node.orelse)            # `if TYPE_CHECKING:` imports never run
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, field, []) or []:
                        visit(getattr(child, "body", [child]) if isinstance(
                            child, ast.ExceptHandler) else [child])
    visit(tree.body)
    found.discard(modname)
    return found


def _import_graph():
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    known = set(files)
    return {m: _top_level_imports(p, m, known) for m, p in files.items()}


def _find_cycle(graph):
    """One cycle as a list of modules, or None (iterative DFS, white/grey/black)."""
    colour = dict.fromkeys(graph, 0)
    for root in sorted(graph):
        if colour[root]:
            continue
        stack = [(root, iter(sorted(graph[root])))]
        path = [root]
        colour[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                colour[node] = 2
                stack.pop()
                path.pop()
                continue
            # importing a submodule imports its package __init__ first: not an edge back
            if colour.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if colour.get(nxt, 2) == 0:
                colour[nxt] = 1
                stack.append((nxt, iter(sorted(graph[nxt]))))
                path.append(nxt)
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_import_graph_sees_module_level_imports():
    graph = _import_graph()
    assert "fastnn.parameter" in graph["fastnn.layers"]
    assert "fastnn.layers" in graph["fastnn.sequential"]
    assert "fastnn.fusion" in graph["fastnn.training"]
    assert "fastnn.sequential" not in graph["fastnn"]     # only under `if TYPE_CHECKING:`


def test_package_has_no_import_cycle():
    cycle = _find_cycle(_import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_parameter_sits_below_everything():
    assert _import_graph()["fastnn.parameter"] <= {"fastnn.errors"}


# ------------------------------------------------------------------ the fusion contract

def _mlp(*layers, dtype=np.float32):
    return Sequential(list(layers) or [Dense(6, 8, activation="relu", dtype=dtype),
                                       Dense(8, 3, dtype=dtype)], seed=0)


def test_check_accepts_what_the_native_trainer_runs():
    m = _mlp(Flatten(), Dense(6, 8), ReLU(), Dense(8, 4, activation="relu"), Dense(4, 3))
    verdict = fusion.check(m, SoftmaxCrossEntropy(), AdamW(m), batch_size=16)
    assert verdict.ok and verdict.reason == ""
    assert [(s.in_features, s.out_features, relu) for s, relu in verdict.dense] == [
        (6, 8, True), (8, 4, True), (4, 3, False)]


@pytest.mark.parametrize("make, loss, reason", [
    (lambda: _mlp(Dense(6, 8), Dropout(0.5), Dense(8, 3)), SoftmaxCrossEntropy(),
     "layer 1 (Dropout)"),
    (lambda: _mlp(Dense(6, 8, activation="sigmoid"), Dense(8, 3)), SoftmaxCrossEntropy(),
     "activation='sigmoid'"),
    (lambda: _mlp(Dense(6, 8), Sigmoid(), Dense(8, 3)), SoftmaxCrossEntropy(), "sigmoid"),
    (lambda: _mlp(Dense(6, 3, activation="relu")), SoftmaxCrossEntropy(), "logits"),
    (lambda: _mlp(dtype=np.float64), SoftmaxCrossEntropy(), "float64"),
    (_mlp, MeanSquaredError(), "MeanSquaredError"),
    (_mlp, SoftmaxCrossEntropy(label_smoothing=0.1), "label smoothing"),
])
def test_check_declines_with_the_reason(make, loss, reason):
    m = make()
    verdict = fusion.check(m, loss, SGD(m, lr=0.1), batch_size=8)
    assert not verdict.ok and not verdict
    assert reason in verdict.reason


def test_optimizer_on_part_of_the_model_is_declined():
    m = _mlp()
    verdict = fusion.check(m, SoftmaxCrossEntropy(), SGD(m.parameters()[:2], lr=0.1), 8)
    assert not verdict.ok and "not on the whole model" in verdict.reason


def test_optimizer_of_another_model_is_declined():
    m, other = _mlp(), _mlp()
    verdict = fusion.check(m, SoftmaxCrossEntropy(), Adam(other), 8)
    assert not verdict.ok and "whole model" in verdict.reason


class ClippedSGD(SGD):
    """Changes the update: the fused trainer must not run it as plain SGD."""

    def step(self):
        np.clip(self.model.flat_grads, -1e-3, 1e-3, out=self.model.flat_grads)
        super().step()


class NamedSGD(SGD):
    """Changes nothing in the math: fused and layer-by-layer give the same weights."""


def test_subclass_that_changes_the_update_is_declined():
    m = _mlp()
    verdict = fusion.check(m, SoftmaxCrossEntropy(), ClippedSGD(m, lr=0.1), 8)
    assert not verdict.ok and "ClippedSGD overrides SGD.step" in verdict.reason


def _data(n=96, d=6, k=3, seed=1):
    rng = np.random.default_rng(seed)
    return rng.random((n, d), dtype=np.float32), rng.integers(0, k, n)


@pytest.mark.parametrize("opt_cls", [NamedSGD, ClippedSGD])
def test_subclass_behaves_the_same_on_both_paths(opt_cls):
    x, y = _data()
    weights = []
    for fused in (None, False):
        m = _mlp()
        opt = opt_cls(m, lr=0.5, momentum=0.9)
        h = m.fit(x, y, epochs=2, batch_size=16, loss=SoftmaxCrossEntropy(), optimizer=opt,
                  seed=0, verbose=0, fused=fused)
        weights.append(m.flat_params.copy())
        if fused is None:
            assert h.params["engine"] == ("fused" if opt_cls is NamedSGD else "general")
    np.testing.assert_allclose(weights[0], weights[1], rtol=1e-4, atol=1e-5)


class TwiceDense(Dense):
    def forward(self, x, out=None):
        return 2 * super().forward(x)


def test_layer_subclass_that_changes_forward_is_declined():
    m = _mlp(TwiceDense(6, 8, activation="relu"), Dense(8, 3))
    verdict = fusion.check(m, SoftmaxCrossEntropy(), SGD(m, lr=0.1), 8)
    assert not verdict.ok and "TwiceDense overrides Dense.forward" in verdict.reason


def test_fit_reports_why_not_fused(capsys):
    x, y = _data()
    m = _mlp(Dense(6, 8), Dropout(0.2), Dense(8, 3))
    h = m.fit(x, y, epochs=1, batch_size=32, loss=SoftmaxCrossEntropy(),
              optimizer=SGD(m, lr=0.1), verbose=2)
    assert h.params["engine"] == "general"
    assert "Dropout" in h.params["why_not_fused"]
    assert "engine: general (layer 1 (Dropout)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="fused=True.*Dropout"):
        m.fit(x, y, epochs=1, batch_size=32, loss=SoftmaxCrossEntropy(),
              optimizer=SGD(m, lr=0.1), verbose=0, fused=True)


def test_fused_fit_with_fusable_model_uses_the_plan():
    x, y = _data()
    m = MLP([6, 8, 3], seed=0)
    h = m.fit(x, y, epochs=1, batch_size=32, loss=SoftmaxCrossEntropy(),
              optimizer=Adam(m), verbose=0)
    assert h.params["engine"] == "fused" and h.params["why_not_fused"] == ""


def test_optimizer_exposes_hyper_parameters_and_state():
    m = _mlp()
    opt = Adam(m, lr=0.01, betas=(0.8, 0.99))
    spec = opt.fusion_spec()
    assert (spec.kind, spec.lr, spec.step) == ("adam", 0.01, 0)
    assert spec.hyper == {"weight_decay": 0.0, "beta1": 0.8, "beta2": 0.99, "eps": 1e-8}
    bufs = opt.state_buffers()
    assert set(bufs) == {"m", "v"} and spec.slots[0] is bufs["m"] and spec.slots[1] is bufs["v"]
    assert opt.model is m


# ------------------------------------------------------------------ Sequential's ReLU fusion

def test_relu_layer_backward_fused_into_next_dense_matches_unfused():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((7, 6)).astype(np.float64)
    m = Sequential([Dense(6, 5, dtype=np.float64), ReLU(), Dense(5, 4, dtype=np.float64)],
                   seed=0)
    dy = rng.standard_normal((7, 4))
    m.zero_grad()
    m(x)
    dx = m.backward(dy)
    # the same network by hand
    W1, b1, W2, b2 = (p.data for p in m.parameters())
    z = x @ W1 + b1
    a = np.maximum(z, 0)
    dz = (dy @ W2.T) * (a > 0)
    np.testing.assert_allclose(m.parameters()[2].grad, a.T @ dy, rtol=1e-12)
    np.testing.assert_allclose(m.parameters()[0].grad, x.T @ dz, rtol=1e-12)
    np.testing.assert_allclose(dx, dz @ W1.T, rtol=1e-12)


# ------------------------------------------------------------------ names

def test_parameters_is_a_method_on_layers_and_models():
    d = Dense(3, 2)
    assert [p.local_name for p in d.parameters()] == ["weight", "bias"]
    with pytest.warns(DeprecationWarning, match="parameters"):
        assert d.params == d.parameters()
    m = Sequential([d])
    assert m.parameters()[0] is d.parameters()[0]


def test_ready_made_models_are_classes():
    for cls in (MLP, SoftmaxRegression):
        assert inspect.isclass(cls) and issubclass(cls, Sequential)
    m = MLP([5, 4, 3], seed=0)
    assert isinstance(m, Sequential) and isinstance(SoftmaxRegression(5, 3), SoftmaxRegression)
    assert Sequential.from_config(m.get_config()).get_config() == m.get_config()


def test_deprecated_model_module_still_works():
    import importlib
    import sys
    sys.modules.pop("fastnn.model", None)
    with pytest.warns(DeprecationWarning, match="fastnn.model is deprecated"):
        mod = importlib.import_module("fastnn.model")
    assert mod.Sequential is Sequential


@pytest.mark.parametrize("name", ["fit", "evaluate", "predict"])
def test_sequential_methods_show_the_real_signature(name):
    method = getattr(Sequential, name)
    func = getattr(training, name)
    got = list(inspect.signature(method).parameters.values())[1:]          # minus self
    want = [p for p in list(inspect.signature(func).parameters.values())[1:]   # minus model
            if not p.name.startswith("_")]
    assert [(p.name, p.kind, p.default) for p in got] == \
        [(p.name, p.kind, p.default) for p in want]
    assert method.__doc__ == func.__doc__ and "(" in method.__doc__


# ------------------------------------------------------------------ fit's input checks

@pytest.mark.parametrize("fused", [None, False])
def test_nan_in_training_data_is_a_value_error_before_training(fused):
    x, y = _data()
    x[41, 2] = np.nan
    x[60, 0] = np.inf
    m = _mlp()
    before = m.flat_params.copy()
    opt = SGD(m, lr=0.1)
    with pytest.raises(ValueError, match=r"x holds NaN in row 41"):
        m.fit(x, y, epochs=1, batch_size=16, loss=SoftmaxCrossEntropy(), optimizer=opt,
              verbose=0, fused=fused)
    assert opt.step_count == 0 and np.array_equal(m.flat_params, before)


def test_inf_in_validation_data_is_named():
    x, y = _data()
    xv = x.copy()
    xv[5, 1] = -np.inf
    m = _mlp()
    with pytest.raises(ValueError, match=r"validation x holds inf in row 5"):
        m.fit(x, y, epochs=1, batch_size=16, loss=SoftmaxCrossEntropy(),
              optimizer=SGD(m, lr=0.1), validation_data=(xv, y), verbose=0)


def test_first_nonfinite_row_scans_blocks():
    from fastnn import _validation
    x = np.zeros((5000, 7), np.float32)
    assert _validation.first_nonfinite_row(x) is None
    assert _validation.first_nonfinite_row(np.full((3, 2), 255, np.uint8)) is None
    x[4321, 6] = np.inf
    x[4999, 0] = np.nan
    assert _validation.first_nonfinite_row(x) == 4321
    big = np.full((4, 3), 3e38, np.float32)       # finite, but a sum would overflow
    assert _validation.first_nonfinite_row(big) is None
    for bad in (-np.inf, np.nan):                  # each kind alone, in a later block
        y = np.zeros((300_000, 7), np.float32)
        y[250_001, 3] = bad
        assert _validation.first_nonfinite_row(y) == 250_001
        assert _validation.first_nonfinite_row(y[:250_001]) is None


def test_wrong_width_names_the_whole_array():
    m = MLP([784, 16, 10], seed=0)
    x = np.zeros((100, 5), np.float32)
    with pytest.raises(fastnn.ShapeError, match=r"x has shape \(100, 5\).*expects 784"):
        m.fit(x, np.zeros(100, np.int64), epochs=1, batch_size=10,
              loss=SoftmaxCrossEntropy(), optimizer=SGD(m, lr=0.1), verbose=0)


def test_divergence_message_is_the_same_on_both_engines():
    x, y = _data()
    messages = {}
    for fused in (None, False):
        m = _mlp()
        with pytest.raises(fastnn.DivergenceError) as err:
            h = m.fit(x * 1e4, y, epochs=3, batch_size=16, loss=SoftmaxCrossEntropy(),
                      optimizer=SGD(m, lr=1e30), seed=0, verbose=0, fused=fused)
        messages[fused] = str(err.value)
    assert messages[None] == messages[False]
    assert "training diverged in epoch 1 at step 2 of 6" in messages[None]
    assert "the loss became non-finite" in messages[None]


# ------------------------------------------------------------------ the progress bar

def test_plain_progress_bar_without_tqdm(monkeypatch, capsys):
    import builtins
    real_import = builtins.__import__

    def no_tqdm(name, *a, **k):
        if name == "tqdm":
            raise ImportError("no tqdm")
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    bar = training._Bar(True)
    assert bar.active and bar.tqdm is None
    bar.start(0, 2, 10)
    bar.update(5, 0.5)
    bar.close()
    out = capsys.readouterr().out
    assert "\rEpoch 1/2 [" in out and "] 5/10 - loss: 0.5000" in out


def test_no_bar_when_not_a_terminal(capsys):
    bar = training._Bar(True)       # pytest's captured stdout is not a terminal
    bar.start(0, 1, 3)
    bar.update(3, 0.1)
    bar.close()
    assert not bar.active and capsys.readouterr().out == ""


def test_fit_with_no_epoch_to_run_warns():
    x, y = _data()
    m = _mlp()
    with pytest.warns(UserWarning, match="nothing to train: epochs=0"):
        h = m.fit(x, y, epochs=0, batch_size=16, loss=SoftmaxCrossEntropy(),
                  optimizer=SGD(m, lr=0.1), verbose=0)
    assert h.epoch == []
