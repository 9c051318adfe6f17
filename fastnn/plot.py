"""Training curves to PNG: loss and accuracy per epoch, train and validation.

    plot_curves(source, out_png)         source: history .csv / .json, or a TensorBoard log dir
    read_history(source)                 the same source as {"epoch": [...], "loss": [...], ...}

matplotlib is imported only when a plot is drawn, with its Agg canvas (no
pyplot, no GUI, no change to the user's global backend); without it
``plot_curves`` raises ImportError saying ``pip install fastnn[plot]``.
"""
import csv
import json
import math
import os

from .errors import DataFormatError

__all__ = ["plot_curves", "read_history"]

# Event-file run directories whose scalars are validation metrics.
_VAL_RUNS = ("validation", "val", "valid", "test", "eval")
# History files looked for, in order, when the source is a directory.
_HISTORY_FILES = ("log.csv", "history.csv", "log.json", "history.json")


def _float(v):
    if v is None or v == "":
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _clean(columns, where):
    """Keep numeric columns only; every column as a list of floats."""
    out = {}
    for k, vals in columns.items():
        conv = [_float(v) for v in vals]
        if conv and all(c is not None for c in conv):
            out[str(k)] = conv
    if not out:
        raise DataFormatError(f"{where}: no numeric columns found")
    return out


def _read_csv(path):
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError:
        raise DataFormatError(f"history file {path!r} is not a text CSV file (expected a "
                              f"header row like epoch,loss,accuracy,val_loss,val_accuracy)") \
            from None
    if not rows or not rows[0]:
        raise DataFormatError(f"history file {path!r} is empty (expected a header row "
                              f"like epoch,loss,accuracy,val_loss,val_accuracy)")
    header, body = rows[0], [r for r in rows[1:] if r]
    for i, r in enumerate(body):
        if len(r) != len(header):
            raise DataFormatError(f"history file {path!r}: row {i + 2} has {len(r)} fields, "
                                  f"the header has {len(header)}")
    return _clean({h: [r[j] for r in body] for j, h in enumerate(header)}, f"history {path!r}")


def _read_json(path):
    try:
        with open(path) as fh:
            d = json.load(fh)
    except ValueError as exc:
        raise DataFormatError(f"history file {path!r} is not valid JSON: {exc}") from None
    where = f"history {path!r}"
    if isinstance(d, dict) and isinstance(d.get("history"), dict):
        # fastnn's History.to_dict(): {"history": {key: [...]}, "epoch": [...], ...}
        cols = dict(d["history"])
        if isinstance(d.get("epoch"), list):
            cols["epoch"] = [e + 1 if isinstance(e, int) else e for e in d["epoch"]]
    elif isinstance(d, dict):
        cols = {k: v for k, v in d.items() if isinstance(v, list)}
    elif isinstance(d, list) and all(isinstance(r, dict) for r in d):
        keys = []
        for r in d:
            keys += [k for k in r if k not in keys]
        cols = {k: [r.get(k) for r in d] for k in keys}
    else:
        raise DataFormatError(f"{where}: expected {{key: [values]}}, a list of per-epoch "
                              f"dicts, or fastnn's History.to_dict()")
    lengths = {len(v) for v in cols.values()}
    if len(lengths) > 1:
        raise DataFormatError(f"{where}: columns have different lengths {sorted(lengths)}")
    return _clean(cols, where)


def _read_events_dir(path):
    from .tensorboard import read_scalars
    series = {}
    for root, _dirs, files in sorted(os.walk(path)):
        if not any("tfevents" in f for f in files):
            continue
        run = os.path.relpath(root, path).replace(os.sep, "/")
        is_val = run.split("/")[-1].lower() in _VAL_RUNS
        for tag, points in read_scalars(root, strict=False).items():
            key = tag
            if key.startswith("epoch_") and key != "epoch_time":
                key = key[len("epoch_"):]
            elif key.startswith("batch_"):
                continue                      # per-batch: a different x axis
            for prefix, new in (("train/", ""), ("val/", "val_"), ("validation/", "val_")):
                if key.startswith(prefix):
                    key = new + key[len(prefix):]
            if is_val and not key.startswith("val_"):
                key = "val_" + key
            series.setdefault(key, {}).update({s: v for s, v in points})
    if not series:
        raise DataFormatError(f"no scalar events under {path!r}")
    steps = sorted({s for pts in series.values() for s in pts})
    cols = {"epoch": [float(s) for s in steps]}
    for k, pts in series.items():
        cols[k] = [pts.get(s, math.nan) for s in steps]
    return cols


def read_history(source):
    """Per-epoch metrics from ``source`` as ``{name: [float, ...]}`` (NaN where missing).

    ``source``: a CSV file with a header row (``CSVLogger``), a JSON file
    (``{key: [...]}``, a list of per-epoch dicts, or ``History.to_dict()``),
    or a directory: its ``log.csv`` / ``history.csv`` / ``log.json`` /
    ``history.json`` if present, else the TensorBoard event files below it
    (``epoch_loss`` in a ``validation`` run becomes ``val_loss``; ``batch_*``
    tags are skipped).
    """
    source = os.fspath(source)
    if os.path.isdir(source):
        # A training log dir (fastnn train --logdir): the CSV/JSON history holds
        # exact float64 values, so prefer it over the float32 event scalars.
        for name in _HISTORY_FILES:
            if os.path.isfile(os.path.join(source, name)):
                return read_history(os.path.join(source, name))
        return _read_events_dir(source)
    if not os.path.exists(source):
        raise FileNotFoundError(f"history source {source!r} does not exist")
    if source.lower().endswith(".json"):
        return _read_json(source)
    if "tfevents" in os.path.basename(source):
        from .tensorboard import read_scalars
        sc = read_scalars(source, strict=False)
        steps = sorted({s for pts in sc.values() for s, _ in pts})
        cols = {"epoch": [float(s) for s in steps]}
        for k, pts in sc.items():
            d = dict(pts)
            cols[k] = [d.get(s, math.nan) for s in steps]
        return cols
    return _read_csv(source)


def _import_matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as exc:
        raise ImportError("plot_curves needs matplotlib: pip install fastnn[plot]") from exc
    return Figure, FigureCanvasAgg, MaxNLocator


def plot_curves(source, out_png, title=None, dpi=100):
    """Draw loss and accuracy against epoch from a training history; write a PNG.

    Left panel: every column ending in ``loss``; right panel: every column
    containing ``acc`` (omitted when there is none).  Train curves solid,
    ``val_*`` dashed.  ``source`` as in ``read_history``.  Returns ``out_png``.

    Example::

        >>> with open("log.csv", "w") as fh:          # what fastnn train --logdir writes
        ...     _ = fh.write("epoch,loss,accuracy,val_loss,val_accuracy\\n"
        ...                  "1,0.40,0.89,0.25,0.93\\n2,0.20,0.94,0.16,0.95\\n")
        >>> plot_curves("log.csv", "curves.png")
        'curves.png'
    """
    cols = read_history(source)
    n = max(len(v) for v in cols.values())
    x = cols.get("epoch") or [float(i + 1) for i in range(n)]
    loss_keys = [k for k in cols if k != "epoch" and k.lower().endswith("loss")]
    acc_keys = [k for k in cols if k != "epoch" and "acc" in k.lower()]
    if not loss_keys and not acc_keys:
        raise DataFormatError(f"{os.fspath(source)!r}: nothing to plot; columns are "
                              f"{sorted(cols)} (expected loss / accuracy columns)")
    Figure, FigureCanvasAgg, MaxNLocator = _import_matplotlib()
    panels = [(keys, label) for keys, label in ((loss_keys, "loss"), (acc_keys, "accuracy"))
              if keys]
    fig = Figure(figsize=(5.5 * len(panels), 4.0), dpi=dpi)
    FigureCanvasAgg(fig)
    for i, (keys, label) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for k in keys:
            style = "--" if k.lower().startswith("val") else "-"
            ax.plot(x[:len(cols[k])], cols[k], style, marker="o", markersize=3, label=k)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))   # epochs are whole numbers
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_png = os.fspath(out_png)
    d = os.path.dirname(out_png)
    if d:
        os.makedirs(d, exist_ok=True)
    fig.savefig(out_png, format="png")
    return out_png
