"""Generate docs/api.md, fastnn's API reference, from the docstrings.

    python tools/gen_api_docs.py            # rewrite docs/api.md
    python tools/gen_api_docs.py --check    # exit 1 if docs/api.md is stale

Which names: every section below takes a module's ``__all__`` (for ``fastnn.kernels``,
which has none, the public functions its ``__init__`` imports; for the top level, the
names ``import fastnn`` exposes).  Each function and class gets its signature and its
docstring; a class also gets its public methods and properties (defined in that class).
A name exported by several modules (``fastnn.softmax`` is ``fastnn.ops.softmax``) is
written out once, where it first appears, and linked from the others.  Constants
(``OPSET``, ``LAYER_CLASSES``, ...) get their value, or their keys for a dict.

The output depends only on the sources: no object addresses (`` at 0x...`` is removed
from default values), no absolute paths, nothing from the current directory.
``tests/test_api_docs.py`` regenerates it and fails if docs/api.md differs.
"""
from __future__ import annotations

import argparse
import enum
import importlib
import inspect
import os
import re
import sys
from typing import Any, Dict, Iterator, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT = os.path.join(ROOT, "docs", "api.md")
COMMAND = "python tools/gen_api_docs.py"

# (section title, module, shown prefix, names or None for the module's __all__)
Section = Tuple[str, str, str, Optional[List[str]]]


def _kernel_names() -> List[str]:
    kernels = importlib.import_module("fastnn.kernels")
    return [n for n, v in vars(kernels).items()
            if not n.startswith("_") and inspect.isfunction(v)]


def _top_level_names() -> List[str]:
    """What ``import fastnn`` offers besides its submodules: lazy names and eager imports."""
    fastnn = importlib.import_module("fastnn")
    names = list(getattr(fastnn, "_LAZY_ATTRS"))
    for n, v in vars(fastnn).items():
        if n.startswith("_") or n in names or inspect.ismodule(v):
            continue
        if (inspect.isfunction(v) or inspect.isclass(v)) and \
                getattr(v, "__module__", "").startswith("fastnn"):
            names.append(n)
    return names


def sections() -> List[Section]:
    return [
        ("Layers", "fastnn.layers", "fastnn.layers", None),
        ("Sequential and Parameter", "fastnn.sequential", "fastnn", None),
        ("Ready-made models", "fastnn.models", "fastnn.models", None),
        ("Losses", "fastnn.losses", "fastnn.losses", None),
        ("Optimizers and learning-rate schedules", "fastnn.optim", "fastnn.optim", None),
        ("Training", "fastnn.training", "fastnn.training", None),
        ("Callbacks", "fastnn.callbacks", "fastnn.callbacks", None),
        ("Ops", "fastnn.ops", "fastnn", None),
        ("Kernels", "fastnn.kernels", "fastnn.kernels", _kernel_names()),
        ("What runs fused", "fastnn.fusion", "fastnn.fusion", None),
        ("Saving and loading", "fastnn.serialize", "fastnn.serialize", None),
        ("ONNX export", "fastnn.onnx_export", "fastnn.onnx_export", None),
        ("Datasets", "fastnn.datasets", "fastnn.datasets", None),
        ("MNIST", "fastnn.datasets.mnist", "fastnn.datasets.mnist", None),
        ("IDX files", "fastnn.datasets.idx", "fastnn.datasets.idx", None),
        ("Threads", "fastnn._threads", "fastnn",
         [n for n in importlib.import_module("fastnn._threads").__all__
          if hasattr(importlib.import_module("fastnn"), n)]),
        ("Errors", "fastnn.errors", "fastnn",
         [n for n, v in vars(importlib.import_module("fastnn.errors")).items()
          if inspect.isclass(v) and v.__module__ == "fastnn.errors"]),
        ("Top level: `import fastnn`", "fastnn", "fastnn", _top_level_names()),
    ]


def public_names(module: str, names: Optional[List[str]]) -> List[str]:
    if names is not None:
        return list(names)
    mod = importlib.import_module(module)
    if not hasattr(mod, "__all__"):
        raise SystemExit(f"{module} has no __all__: name its public names in {__file__}")
    return list(mod.__all__)


# ---- text ----------------------------------------------------------------------------

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _clean(text: str) -> str:
    return _ADDRESS.sub("", text)


class _Raw(str):
    """Shown as written: an annotation string without quotes, a class by its dotted name."""

    def __repr__(self) -> str:
        return str(self)


def _shown_default(value: Any) -> Any:
    if value is inspect.Parameter.empty:
        return value
    if inspect.isclass(value) or inspect.isfunction(value) or inspect.isbuiltin(value):
        module = getattr(value, "__module__", None)
        if module in (None, "builtins"):
            return _Raw(value.__qualname__)
        return _Raw(f"{module}.{value.__qualname__}")
    return _Raw(_clean(repr(value)))


def _shown_annotation(value: Any) -> Any:
    if value is inspect.Parameter.empty or value is inspect.Signature.empty:
        return value
    return _Raw(value if isinstance(value, str) else inspect.formatannotation(value))


def signature(obj: Any, name: str, *, method: bool = False, width: int = 88) -> str:
    """``name(params) -> return`` with annotations as written in the source; a method's
    ``self``/``cls`` and a class's ``-> None`` left out; one parameter per line when long."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return f"{name}(...)"
    params = list(sig.parameters.values())
    if method and params and params[0].name in ("self", "cls"):
        params = params[1:]
    params = [p.replace(annotation=_shown_annotation(p.annotation),
                        default=_shown_default(p.default)) for p in params]
    ret = (inspect.Signature.empty if inspect.isclass(obj)
           else _shown_annotation(sig.return_annotation))
    sig = sig.replace(parameters=params, return_annotation=ret)
    text = name + str(sig)
    if len(text) <= width or not params:
        return text
    # one parameter per line, markers (/ and *) kept where str(Signature) puts them
    inner = str(sig.replace(return_annotation=inspect.Signature.empty))[1:-1]
    parts = _split_top_level(inner)
    tail = "" if ret is inspect.Signature.empty else f" -> {ret}"
    return name + "(\n" + "".join(f"    {part},\n" for part in parts) + ")" + tail


def _split_top_level(text: str) -> List[str]:
    """Split ``a: X[1, 2] = (3, 4), b`` at the commas outside brackets and quotes."""
    parts, depth, quote, cur = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
            continue
        cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def _is_literal_start(par: List[str]) -> bool:
    return bool(par) and par[0][:1] == " "


def render_docstring(doc: str) -> List[str]:
    """reST-flavoured docstring -> Markdown: ``x`` -> `x`, :role:`x` -> `x`, doctest and
    literal blocks (after ``::`` or indented) fenced, section underlines made bold."""
    lines = inspect.cleandoc(doc).splitlines()
    out: List[str] = []
    i = 0
    literal_next = False
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            out.append("")
            i += 1
            continue
        if line.lstrip().startswith(">>>"):           # doctest: up to a blank line
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i])
                i += 1
            indent = min(len(b) - len(b.lstrip()) for b in block)
            out += ["```pycon"] + [b[indent:] for b in block] + ["```"]
            continue
        if line[:1] == " " and (literal_next or not out or out[-1] == ""):
            block = []                                  # indented: a literal block
            while i < len(lines) and (not lines[i].strip() or lines[i][:1] == " "):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            indent = min(len(b) - len(b.lstrip()) for b in block if b.strip())
            out += ["```text"] + [b[indent:].rstrip() for b in block] + ["```", ""]
            literal_next = False
            continue
        if i + 1 < len(lines) and re.fullmatch(r"-{3,}|={3,}", lines[i + 1].strip()) \
                and len(lines[i + 1].strip()) >= len(line.strip()):
            out.append(f"**{line.strip()}**")           # numpydoc section header
            i += 2
            continue
        text = line.rstrip()
        literal_next = text.endswith("::")
        if literal_next:
            text = text[:-2].rstrip()
            text = text + ":" if text and not text.endswith(":") else text
        out.append(text)
        i += 1
    while out and not out[-1]:
        out.pop()
    out = _inline_markup(out)
    cleaned: List[str] = []                             # no double blank lines
    for line in out:
        if line == "" and cleaned and cleaned[-1] == "":
            continue
        cleaned.append(line)
    return [_clean(line) for line in cleaned]


def _inline(text: str) -> str:
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    return re.sub(r"``([^`]+?)``", r"`\1`", text, flags=re.S)


def _inline_markup(lines: List[str]) -> List[str]:
    """``code`` -> `code` and :role:`x` -> `x` outside fences, across line breaks."""
    out: List[str] = []
    run: List[str] = []
    fenced = False
    for line in lines + ["```"]:
        if line.startswith("```"):
            if not fenced and run:
                out += _inline("\n".join(run)).split("\n")
            run = []
            fenced = not fenced
            out.append(line)
        elif fenced:
            out.append(line)
        else:
            run.append(line)
    return out[:-1]


def _summary(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    first = doc.strip().split("\n\n")[0].replace("\n", " ")
    return _inline(first)


def _constant(value: Any) -> str:
    if inspect.ismodule(value):
        return f"a submodule: [`{value.__name__}`](#{_anchor('section-' + value.__name__)})"
    if isinstance(value, dict):
        keys = ", ".join(f"`{k}`" for k in value)
        return f"a dict with {len(value)} entries: {keys}"
    if isinstance(value, (tuple, list, frozenset, set)) and len(repr(value)) > 100:
        return f"a {type(value).__name__} of {len(value)} items"
    if isinstance(value, enum.Enum):
        return f"`{value!r}`"
    text = _clean(repr(value))
    return f"`{text}`" if len(text) <= 100 else f"a {type(value).__name__}"


def _anchor(qualname: str) -> str:
    return qualname.replace(".", "-").lower()


def members(cls: type) -> Iterator[Tuple[str, Any]]:
    """Public methods and properties a class defines itself, in source order."""
    for name, raw in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(raw, property):
            yield name, raw
        elif isinstance(raw, (staticmethod, classmethod)):
            yield name, getattr(cls, name)
        elif inspect.isfunction(raw):
            yield name, raw


def is_documentable(obj: Any) -> bool:
    return inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj) or \
        (callable(obj) and hasattr(obj, "__wrapped__"))


def entries() -> Iterator[Tuple[str, str, str, Any]]:
    """(section title, module, shown qualified name, object) for every public name."""
    for title, module, prefix, names in sections():
        mod = importlib.import_module(module)
        for name in public_names(module, names):
            yield title, module, f"{prefix}.{name}", getattr(mod, name)


def generate() -> str:
    seen: Dict[int, str] = {}           # id(object) -> anchor of its full entry
    out: List[str] = [
        "# fastnn API reference",
        "",
        f"Generated from the docstrings by `{COMMAND}`; do not edit by hand "
        "(`tests/test_api_docs.py` fails when this file is stale).",
        "Each section lists a module's public names (its `__all__`); a name that several "
        "modules export is written out once and linked from the others.",
        "",
        "## Contents",
        "",
    ]
    for title, module, _, _ in sections():
        out.append(f"- [{title}](#{_anchor('section-' + module)}) (`{module}`)")
    current = None
    for title, module, qualname, obj in entries():
        if module != current:
            current = module
            mod = importlib.import_module(module)
            out += ["", f'<a id="{_anchor("section-" + module)}"></a>', "",
                    f"## {title}", ""]
            summary = _summary(mod)
            if summary and module != "fastnn":
                out += [f"`{module}`: {summary}", ""]
            elif module == "fastnn":
                out += ["What `import fastnn` gives without importing a submodule "
                        "(submodules load on first use).", ""]
        short = qualname.rsplit(".", 1)[1]
        if not is_documentable(obj):
            out += [f"- `{qualname}`: {_constant(obj)}", ""]
            continue
        key = id(obj)
        if key in seen:
            if seen[key] == qualname:       # the top-level name, written out in its section
                out += [f"- [`{qualname}`](#{_anchor(qualname)}): {_summary(obj)}", ""]
            else:
                out += [f"- `{qualname}`: the same object as [`{seen[key]}`]"
                        f"(#{_anchor(seen[key])}). {_summary(obj)}", ""]
            continue
        seen[key] = qualname
        kind = "class" if inspect.isclass(obj) else "def"
        out += [f'<a id="{_anchor(qualname)}"></a>', "", f"### `{qualname}`", "",
                "```python", f"{kind} {signature(obj, short)}", "```", ""]
        doc = inspect.getdoc(obj)
        out += render_docstring(doc) if doc else ["*(no docstring)*"]
        out.append("")
        if inspect.isclass(obj):
            for mname, member in members(obj):
                mq = f"{short}.{mname}"
                mdoc = inspect.getdoc(member)
                if isinstance(member, property):
                    out += [f"#### `{mq}` (property)", ""]
                else:
                    sig = signature(member, mq, method=True)
                    if "\n" in sig:            # long: the name as heading, then the code
                        out += [f"#### `{mq}`", "", "```python", sig, "```", ""]
                    else:
                        out += [f"#### `{sig}`", ""]
                out += render_docstring(mdoc) if mdoc else ["*(no docstring)*"]
                out.append("")
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"


def undocumented() -> List[str]:
    """Public functions, classes and their public methods without a docstring."""
    missing = []
    for _, _, qualname, obj in entries():
        if not is_documentable(obj):
            continue
        if not (inspect.getdoc(obj) or "").strip():
            missing.append(qualname)
        if inspect.isclass(obj):
            for mname, member in members(obj):
                if not (inspect.getdoc(member) or "").strip():
                    missing.append(f"{qualname}.{mname}")
    return sorted(set(missing))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if docs/api.md differs from what would be written")
    parser.add_argument("--output", default=OUTPUT, help="where to write (default docs/api.md)")
    args = parser.parse_args(argv)
    text = generate()
    if args.check:
        try:
            with open(args.output, encoding="utf-8") as fh:
                current = fh.read()
        except FileNotFoundError:
            current = ""
        if current != text:
            print(f"{args.output} is stale: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
    missing = undocumented()
    if missing:
        print(f"warning: {len(missing)} public names without a docstring: "
              + ", ".join(missing), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, ROOT)          # document this checkout's fastnn, from any directory
    sys.exit(main())
