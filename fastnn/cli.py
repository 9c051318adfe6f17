"""The ``fastnn`` command line.

    fastnn train --preset mlp [--epochs 3] [--precision bf16] [--save ckpt.npz]
                 [--resume ckpt.npz] [--json]
    fastnn evaluate MODEL.npz [--json]
    fastnn predict MODEL.npz digit.png ... | --index 0 7 42
    fastnn info [--json]
    fastnn bench kernels [--threads N] [--json]
    fastnn bench train --preset mlp --epochs 3 --threads 2 [--precision bf16] --json
    fastnn plot LOGDIR -o curves.png
    fastnn export MODEL.npz MODEL.onnx [--softmax] [--batch N]

Exit codes: 0 success, 1 an error the message explains (data missing,
training diverged, unreadable model file, matplotlib missing), 2 a bad
command line (including a run that would do nothing, such as ``--resume``
with ``--epochs`` not above the checkpoint's epochs), 130 interrupted by
Ctrl-C, 141 (128 + SIGPIPE, what a shell reports for a Unix tool killed by
a closed pipe) when whoever read our output stopped early (``fastnn train
| head -1``): the rest of the output is dropped quietly, no traceback.
Errors are one line on stderr, ``fastnn: ...`` (usage errors after the
usage line); warnings one line, ``fastnn: warning: ...``.

Threads (``--threads N``, else ``$FASTNN_NUM_THREADS``, else
``$OMP_NUM_THREADS``, else the CPUs this process may use): see
``fastnn._threads``.

Wall time "since process start" (the speedrun figure) is measured from the
kernel's record of when this process started (``/proc/self/stat`` field 22,
on the boot-time clock), so it includes the interpreter start-up and every
import; where /proc is missing it falls back to the moment this module was
imported.
"""
import time

_IMPORTED_AT = time.time()          # first thing: the fallback origin of "process start"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402

__all__ = ["main", "process_start_time"]


def process_start_time():
    """Unix time at which this process started (see the module docstring)."""
    try:
        with open("/proc/self/stat", "rb") as fh:
            stat = fh.read().decode()
        # the command name (field 2) may hold spaces: parse after its closing ')'
        fields = stat[stat.rindex(")") + 2:].split()
        start_ticks = int(fields[19])            # field 22 overall
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
        if 0.0 <= age < 1e7:
            return time.time() - age
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    return _IMPORTED_AT


# ------------------------------------------------------------------ argument types

def _int_at_least(text, lo, expected):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if v < lo:
        raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
    return v


def _epochs(text):
    try:
        return _int_at_least(text, 1, "a positive integer")
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(
            f"{exc} (the total number of epochs to reach, resumed ones included)") from None


def _positive_int(text):
    return _int_at_least(text, 1, "a positive integer")


def _nonneg_int(text):
    return _int_at_least(text, 0, "an integer >= 0")


def _finite_float(text, lo=None, hi=None, lo_open=False, hi_open=False):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise argparse.ArgumentTypeError(f"must be {'>' if lo_open else '>='} {lo}, got {v}")
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise argparse.ArgumentTypeError(f"must be {'<' if hi_open else '<='} {hi}, got {v}")
    return v


def _lr(text):
    return _finite_float(text, lo=0.0, lo_open=True)


def _momentum(text):
    return _finite_float(text, lo=0.0, hi=1.0, hi_open=True)


def _weight_decay(text):
    return _finite_float(text, lo=0.0)


def _hidden(text):
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected widths like 512,512, got {text!r}")
    out = []
    for p in parts:
        try:
            v = int(p)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected widths like 512,512, got {text!r}") \
                from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"hidden widths must be >= 1, got {v}")
        out.append(v)
    return tuple(out)


def _preset_name(text):
    from .presets import PRESETS
    if text not in PRESETS:
        raise argparse.ArgumentTypeError(f"unknown preset {text!r} (choose from "
                                         f"{', '.join(PRESETS)})")
    return text


# ------------------------------------------------------------------ parser

EXIT_PIPE = 141      # 128 + SIGPIPE: stdout closed early (see the module docstring)

_THREADS_HELP = ("threads for every pool: OpenMP kernels, Numba, numpy's BLAS (default: "
                 "$FASTNN_NUM_THREADS, else $OMP_NUM_THREADS, else the CPUs this process "
                 "may use; more than those CPUs warns)")
_DATA_HELP = ("directory holding the four MNIST IDX files (raw or .gz), or a mnist/ "
              "subdirectory that does; when given it is the only place searched (default: "
              "$FASTNN_DATA, ./data/mnist, the source checkout, the user cache, else download)")
_JSON_HELP = "machine-readable output: JSON on stdout"

_EPILOG = """\
threads: --threads N, else $FASTNN_NUM_THREADS, else $OMP_NUM_THREADS, else the
  CPUs this process may use (affinity mask, cgroup quota); asking for more than
  those CPUs prints one warning.

exit codes: 0 success; 1 an error the message explains (data missing, diverged,
  unreadable file); 2 a bad command line; 130 Ctrl-C; 141 stdout closed early
  (e.g. piped into head): the rest of the output is dropped quietly.
"""


_PRECISION_HELP = ("matmul precision: bf16 rounds the inputs of the Dense and Conv2D layers' "
                   "GEMMs to bfloat16 and accumulates in float32; weights, optimizer and loss "
                   "stay float32")


def build_parser():
    from .presets import OPTIMIZERS, PRESETS
    p = argparse.ArgumentParser(prog="fastnn", description="Fast neural-network training on "
                                "multicore CPUs (MNIST presets, benchmarks, tools).",
                                epilog=_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser("train", help="train a preset on MNIST (test set = validation data)",
                       description="Train a preset on MNIST (the test set is the validation "
                       "data).", epilog=_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--preset", type=_preset_name, default=None,
                   help=f"recipe: {', '.join(PRESETS)} (default mlp)")
    t.add_argument("--hidden", metavar="W1,W2,...", type=_hidden, default=None,
                   help="hidden widths, e.g. 512,512 (default: the preset's)")
    t.add_argument("--epochs", metavar="N", type=_epochs, default=None,
                   help="the TOTAL number of epochs, including those already done when "
                        "resuming: --resume ck.npz --epochs 5 on a 3-epoch checkpoint trains "
                        "epochs 4 and 5 (default: the preset's)")
    t.add_argument("--batch-size", metavar="N", type=_positive_int, default=None,
                   help="examples per step (default: the preset's)")
    t.add_argument("--lr", type=_lr, default=None, help="learning rate (> 0)")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                   help="optimizer (default: the preset's)")
    t.add_argument("--momentum", type=_momentum, default=None, help="SGD momentum in [0, 1)")
    t.add_argument("--weight-decay", type=_weight_decay, default=None,
                   help="L2 weight decay (>= 0; default: the preset's)")
    t.add_argument("--threads", metavar="N", type=_positive_int, default=None, help=_THREADS_HELP)
    t.add_argument("--seed", metavar="N", type=_nonneg_int, default=None,
                   help="seed of the initial weights and the shuffling (default 0)")
    t.add_argument("--data", metavar="DIR", default=None, help=_DATA_HELP)
    t.add_argument("--subset", metavar="N", type=_positive_int, default=None,
                   help="train on the first N training images only (quick runs, tests)")
    t.add_argument("--logdir", metavar="DIR", default=None,
                   help="write TensorBoard events (train/, validation/) and log.csv here")
    t.add_argument("--save", metavar="PATH", default=None,
                   help="checkpoint (.npz) written at the start (unless resuming) and after "
                        "every epoch")
    t.add_argument("--resume", metavar="PATH", default=None,
                   help="continue from a checkpoint written by --save (its recipe is kept; "
                        "only --epochs, the new total, may change)")
    t.add_argument("--precision", choices=("fp32", "bf16"), default=None, help=_PRECISION_HELP
                   + " (default fp32; a resumed run keeps its checkpoint's)")
    t.add_argument("--json", action="store_true", help="one JSON object per epoch + a summary")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI ranks (implied when started by mpirun -n N, "
                        "N > 1): every rank trains on its slice of each global batch "
                        "(--batch-size), rank 0 prints and writes files; pip install "
                        "\"fastnn[mpi]\"")

    e = sub.add_parser("evaluate", help="test-set loss and accuracy of a saved model")
    e.add_argument("model", help="model or checkpoint file (.npz)")
    e.add_argument("--data", metavar="DIR", default=None, help=_DATA_HELP)
    e.add_argument("--threads", metavar="N", type=_positive_int, default=None, help=_THREADS_HELP)
    e.add_argument("--json", action="store_true", help=_JSON_HELP)

    pr = sub.add_parser("predict", help="classify image files or test-set samples")
    pr.add_argument("model", help="model or checkpoint file (.npz)")
    pr.add_argument("images", nargs="*", help="PNG/JPEG files (grey-scaled, resized to 28x28)")
    pr.add_argument("--index", type=_nonneg_int, nargs="+", default=[],
                    help="indices into the MNIST test set")
    pr.add_argument("--data", metavar="DIR", default=None, help=_DATA_HELP + "; used with --index")
    pr.add_argument("--json", action="store_true", help="one JSON object per input")

    i = sub.add_parser("info", help="build, CPU features, kernels and thread pools")
    i.add_argument("--json", action="store_true", help=_JSON_HELP)

    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="bench_command", metavar="WHAT")
    bsub.required = True
    bk = bsub.add_parser("kernels", help="GFLOP/s of every kernel variant")
    bk.add_argument("--threads", metavar="N", type=_positive_int, default=None,
                    help="the second thread count timed, after 1 (default: fastnn's count, "
                         "$FASTNN_NUM_THREADS, else $OMP_NUM_THREADS, else the CPUs this "
                         "process may use)")
    bk.add_argument("--json", action="store_true", help=_JSON_HELP)
    bt = bsub.add_parser("train", help="time a preset's epochs (one JSON line with --json)")
    bt.add_argument("--preset", type=_preset_name, default="mlp",
                    help=f"recipe: {', '.join(PRESETS)} (default mlp)")
    bt.add_argument("--epochs", metavar="N", type=_positive_int, default=3,
                    help="epochs to time (default 3; the first is reported on its own)")
    bt.add_argument("--threads", metavar="N", type=_positive_int, default=None, help=_THREADS_HELP)
    bt.add_argument("--seed", metavar="N", type=_nonneg_int, default=0,
                    help="seed of the initial weights and the shuffling (default 0)")
    bt.add_argument("--data", metavar="DIR", default=None, help=_DATA_HELP)
    bt.add_argument("--engine", choices=("auto", "fused", "general"), default="auto",
                    help="training path (default: the fused native loop when it applies)")
    bt.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help=_PRECISION_HELP + " (default fp32)")
    bt.add_argument("--json", action="store_true", help="one JSON line")

    ex = sub.add_parser("export", help="write a saved model as an ONNX graph "
                                       "(pip install \"fastnn[onnx]\")",
                        description="Write a saved model as an ONNX graph (opset 17) that "
                        "onnxruntime runs. Input: (N, 784) pixels / 255 for an MLP, NHWC "
                        "images (N, 28, 28, C) for a convnet; output: the logits (N, 10).")
    ex.add_argument("model", help="model or checkpoint file (.npz)")
    ex.add_argument("output", help="ONNX file to write (.onnx)")
    ex.add_argument("--softmax", action="store_true",
                    help="end with a Softmax node: probabilities instead of logits")
    ex.add_argument("--batch", metavar="N", type=_positive_int, default=None,
                    help="fix the batch size (default: a dynamic batch dimension)")

    pl = sub.add_parser("plot", help="loss/accuracy curves from a --logdir or a CSV log")
    pl.add_argument("logdir", help="a `fastnn train --logdir` directory, a TensorBoard log "
                                   "directory, or a history .csv/.json file")
    pl.add_argument("-o", "--output", default="curves.png",
                    help="PNG file to write (default curves.png)")
    return p


class _Fail(Exception):
    """An error already explained to the user: print the message, exit with ``code``."""

    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


def _set_threads(n):
    if n is not None:
        from . import _threads
        _threads._warn_if_oversubscribed(n, "--threads")    # named as the user wrote it
        _threads.set_num_threads(n)


@contextlib.contextmanager
def _data_option(data):
    """MNIST not at an explicit --data DIR: say that the option is at fault."""
    from .errors import DatasetNotFoundError
    try:
        yield
    except DatasetNotFoundError as exc:
        if data is None:
            raise
        raise _Fail(f"--data: {exc}", code=1) from None


def _load_mnist(data):
    from .datasets import mnist
    with _data_option(data):
        return mnist.load_data(path=data)


def _flat(x):
    return x.reshape(x.shape[0], -1)


def _print_json(obj, file=None):
    print(json.dumps(obj, sort_keys=False), file=file or sys.stdout, flush=True)


# ------------------------------------------------------------------ train

def _resolve_preset(args, stored=None):
    """Preset + command-line overrides; a resumed run starts from the checkpoint's recipe."""
    from .presets import Preset, get_preset
    if stored is not None:
        base = Preset.from_dict(stored)
        if args.preset is not None and args.preset != base.name:
            raise _Fail(f"--resume: the checkpoint was trained with preset {base.name!r}, "
                        f"not {args.preset!r}", code=2)
    else:
        base = get_preset(args.preset or "mlp")
    changes = {}
    if args.hidden is not None:
        if base.arch != "mlp":
            raise _Fail(f"--hidden sets an MLP's widths; preset {base.name!r} is a "
                        f"convolutional network ({base.arch_text()})", code=2)
        changes["sizes"] = (base.sizes[0],) + args.hidden + (base.sizes[-1],)
    for arg, field in (("epochs", "epochs"), ("batch_size", "batch_size"), ("lr", "lr"),
                       ("optimizer", "optimizer"), ("momentum", "momentum"),
                       ("weight_decay", "weight_decay")):
        v = getattr(args, arg)
        if v is not None:
            changes[field] = v
    if stored is not None and "sizes" in changes and tuple(changes["sizes"]) != base.sizes:
        raise _Fail(f"--resume: --hidden differs from the checkpoint's layers {base.sizes}", 2)
    if changes.get("optimizer", base.optimizer) != "sgd" and changes.get("momentum"):
        raise _Fail("--momentum applies to --optimizer sgd only", code=2)
    return base.replace(**changes)


def _rss_mb():
    """This process's resident set now, in MB (Linux /proc), or None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _peak_rss_mb():
    """The largest resident set this process has had, in MB (Unix), or None."""
    try:
        import resource
    except ImportError:
        return None
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss      # KiB on Linux
    # the kernel updates its high-water mark lazily: never report less than the RSS now
    return max(round(kb / 1024, 1), _rss_mb() or 0.0)


class _EpochPrinter:
    """--json: one object per epoch on stdout (with the process's RSS at the epoch's end,
    so that a run shows whether memory stays flat across epochs)."""

    step_freq = None
    rank0_only = True        # prints: rank 0 alone in a data-parallel run

    def __init__(self, epochs):
        self.epochs = epochs

    def set_state(self, state):
        self.state = state

    def on_train_begin(self, logs):
        pass

    def on_epoch_begin(self, epoch, logs):
        pass

    def on_batch_end(self, step, logs):
        pass

    def on_epoch_end(self, epoch, logs):
        _print_json({"epoch": epoch + 1, "epochs": self.epochs, **logs, "rss_mb": _rss_mb()})

    def on_train_end(self, logs):
        pass


def _cmd_train(args):
    t_start = process_start_time()
    from . import callbacks as cbs
    from . import fusion, presets, training
    from .distributed import DistributedError
    from .errors import DivergenceError

    _set_threads(args.threads)
    from ._threads import get_num_threads
    comm = _train_communicator(args)

    resume_extra = None
    if args.resume is not None:
        if not os.path.exists(args.resume):
            raise _Fail(f"--resume: no such checkpoint: {args.resume}", code=1)
        model, optimizer, resume_extra = _load_checkpoint(args.resume, with_optimizer=True)
        stored = (resume_extra or {}).get("cli", {}) if isinstance(resume_extra, dict) else {}
        if "preset" not in stored or "rng_state" not in resume_extra or optimizer is None:
            raise _Fail(f"--resume: {args.resume} was not written by `fastnn train --save` "
                        f"(no training state in it)", code=1)
        preset = _resolve_preset(args, stored["preset"])
        seed = stored.get("seed", 0)
        precision = args.precision or stored.get("precision", "fp32")
        # Only --epochs may change: everything else would make the resumed run differ
        # from the one it continues (and the restored optimizer keeps its own settings).
        recipe = {"seed": (args.seed, seed), "subset": (args.subset, stored.get("subset"))}
        for field in ("batch_size", "lr", "optimizer", "momentum", "weight_decay"):
            recipe[field] = (getattr(args, field), stored["preset"][field])
        for field, (given, saved) in recipe.items():
            if given is not None and given != saved:
                raise _Fail(f"--resume: the checkpoint was trained with "
                            f"--{field.replace('_', '-')} {saved}; only --epochs may change "
                            f"when resuming", code=2)
        done = int(resume_extra.get("epoch", 0))
        if preset.epochs <= done:
            if args.epochs is None:
                msg = (f"--resume: {args.resume} already holds all {done} epoch(s) of its run; "
                       f"pass --epochs N with N > {done} (the total, resumed epochs included) "
                       f"to train further")
            else:
                msg = (f"--epochs {args.epochs} is the total number of epochs, resumed ones "
                       f"included, and {args.resume} already holds {done}: nothing to train; "
                       f"pass --epochs N with N > {done} (e.g. --epochs {done + args.epochs} "
                       f"for {args.epochs} more)")
            raise _Fail(msg, code=2)
    else:
        preset = _resolve_preset(args)
        seed = 0 if args.seed is None else args.seed
        precision = args.precision or "fp32"
        stored = {}

    (x_train, y_train), (x_test, y_test) = _load_mnist(args.data)
    if preset.arch == "mlp":           # a convolutional preset takes the (N, 28, 28) images
        x_train, x_test = _flat(x_train), _flat(x_test)
    subset = stored.get("subset") if resume_extra is not None else args.subset
    if subset is not None:
        x_train, y_train = x_train[:subset], y_train[:subset]

    if resume_extra is None:
        model = presets.build_model(preset, seed=seed)
        optimizer = presets.build_optimizer(preset, model)
    loss = presets.build_loss(preset)
    steps_per_epoch = -(-x_train.shape[0] // preset.batch_size)
    schedule = presets.build_schedule(preset, optimizer, steps_per_epoch)

    callbacks = []
    stop_at = None
    if preset.target_accuracy:
        stop_at = cbs.StopAtAccuracy(preset.target_accuracy, monitor="val_accuracy")
        callbacks.append(stop_at)
    if args.logdir:
        callbacks.append(cbs.TensorBoard(args.logdir))
        callbacks.append(cbs.CSVLogger(os.path.join(args.logdir, "log.csv"),
                                       append=resume_extra is not None))
    ckpt = None
    if args.save:
        ckpt = cbs.ModelCheckpoint(args.save, save_initial=resume_extra is None,
                                   extra={"cli": {"preset": preset.to_dict(), "seed": seed,
                                                  "subset": subset, "precision": precision}})
        callbacks.append(ckpt)
    if args.json:
        callbacks.append(_EpochPrinter(preset.epochs))

    if comm is not None:
        per_rank = -(-preset.batch_size // comm.size)
        if not args.json:
            print(f"fastnn train: distributed: {comm.size} ranks x {get_num_threads()} "
                  f"threads, global batch {preset.batch_size}, per-rank batch {per_rank}",
                  flush=True)
    if not args.json:
        print(f"fastnn train: preset {preset.name} {preset.arch_text()}, "
              f"batch {preset.batch_size}, {preset.optimizer} lr {preset.lr}"
              + (f" momentum {preset.momentum}" if preset.optimizer == "sgd" else "")
              + f", {preset.epochs} epochs, {get_num_threads()} threads, seed {seed}"
              + (f", precision {precision}" if precision != "fp32" else "")
              + (f"; resuming after epoch {resume_extra.get('epoch', 0)}"
                 if resume_extra is not None else ""), flush=True)
        if comm is None:
            verdict = fusion.check(model, loss, optimizer, preset.batch_size, precision)
            print("engine: fused (one native call per epoch)" if verdict.ok else
                  f"engine: general, layer by layer ({verdict.reason})", flush=True)
        else:
            verdict = fusion.check(model, loss, optimizer, per_rank, precision)
            print("engine: fused gradient step + allreduce + optimizer step" if verdict.ok
                  else f"engine: general, layer by layer, + allreduce ({verdict.reason})",
                  flush=True)
    t_fit = time.time()
    try:
        fit_kw = dict(epochs=preset.epochs, batch_size=preset.batch_size, loss=loss,
                      optimizer=optimizer, validation_data=(x_test, y_test), shuffle=True,
                      seed=seed, callbacks=callbacks, verbose=0 if args.json else 1,
                      schedule=schedule, resume=resume_extra, precision=precision)
        if comm is None:
            hist = training.fit(model, x_train, y_train, **fit_kw)
        else:
            hist = training.fit_distributed(model, x_train, y_train, comm=comm, **fit_kw)
    except DistributedError as exc:
        raise _Fail(str(exc), code=1) from None
    except KeyboardInterrupt:
        msg = "\nInterrupted."
        if ckpt is not None and ckpt.last_saved:
            done = ckpt.epochs_done
            msg += (f" The checkpoint {ckpt.last_saved} holds {done} completed epoch(s); "
                    f"resume with:\n    fastnn train --resume {ckpt.last_saved}"
                    + (f" --save {args.save}" if args.save else "")
                    + (f" --threads {args.threads}" if args.threads else ""))
        else:
            msg += " Nothing was saved (pass --save PATH to checkpoint every epoch)."
        print(msg, file=sys.stderr, flush=True)
        return 130
    except DivergenceError as exc:
        where = f" Last good checkpoint: {ckpt.last_saved}." if ckpt and ckpt.last_saved else ""
        raise _Fail(f"{exc}.{where}", code=1) from None
    t_end = time.time()
    h = hist.history
    epochs_run = len(hist.epoch)
    summary = {
        "summary": True, "preset": preset.name, "sizes": list(preset.sizes),
        "batch_size": preset.batch_size, "threads": get_num_threads(), "seed": seed,
        "precision": precision,
        "epochs_run": epochs_run, "engine": hist.params.get("engine"),
        "why_not_fused": hist.params.get("why_not_fused", ""),
        "test_loss": h["val_loss"][-1] if h.get("val_loss") else None,
        "test_accuracy": h["val_accuracy"][-1] if h.get("val_accuracy") else None,
        "train_s": t_end - t_fit,
        "wall_s_since_process_start": t_end - t_start,
        "epoch_time": h.get("epoch_time", []),
        "peak_rss_mb": _peak_rss_mb(),
    }
    if comm is not None:
        summary.update({"ranks": comm.size, "per_rank_batch": hist.params.get("per_rank_batch"),
                        "allreduce_s": comm.allreduce_seconds})
    if stop_at is not None:
        summary["target_accuracy"] = stop_at.target
        summary["target_reached_epoch"] = stop_at.reached_epoch
    if ckpt is not None:
        summary["checkpoint"] = ckpt.last_saved
    if args.json:
        _print_json(summary)
    else:
        if summary["test_accuracy"] is not None:
            print(f"test accuracy {summary['test_accuracy']:.4f}, loss {summary['test_loss']:.4f}"
                  f" after {epochs_run} epoch(s); training {summary['train_s']:.2f}s, "
                  f"{summary['wall_s_since_process_start']:.2f}s since process start"
                  + (f", peak RSS {summary['peak_rss_mb']:.0f} MB"
                     if summary["peak_rss_mb"] is not None else ""))
        if stop_at is not None:
            if stop_at.reached_epoch:
                print(f"reached {stop_at.target:.2%} test accuracy in epoch "
                      f"{stop_at.reached_epoch}: {summary['wall_s_since_process_start']:.2f}s "
                      f"wall time from process start")
            else:
                print(f"did NOT reach {stop_at.target:.2%} test accuracy in {epochs_run} epochs")
        if ckpt is not None:
            print(f"checkpoint: {ckpt.last_saved}")
    return 0


def _train_communicator(args):
    """The MPI communicator of a data-parallel `fastnn train` (--distributed, or started
    by an MPI launcher with more than one rank), else None.  Ranks other than 0 print
    nothing on stdout (errors still go to stderr)."""
    from .distributed import get_world, under_launcher
    if not (args.distributed or under_launcher()):
        return None
    try:
        comm = get_world()
    except ImportError as exc:
        raise _Fail(str(exc), code=1) from None
    if comm.rank != 0:
        sys.stdout = open(os.devnull, "w")
    return comm


def _load_checkpoint(path, with_optimizer=False):
    """(model, optimizer or None, extra or None) from a checkpoint; _Fail when unreadable."""
    from . import serialize
    from .errors import FastnnError
    try:
        if not with_optimizer:
            return serialize.load(path), None, None
        ck = serialize.load(path, with_optimizer=True)
        optimizer = None
        if ck.optimizer_state is not None:
            from .optim import optimizer_from_state
            optimizer = optimizer_from_state(ck.model.parameters(), ck.optimizer_state)
        return ck.model, optimizer, ck.extra
    except FileNotFoundError:
        raise _Fail(f"no such model file: {path}", code=1) from None
    except IsADirectoryError:
        raise _Fail(f"{path} is a directory, not a model file", code=1) from None
    except (FastnnError, ValueError, TypeError, OSError, KeyError) as exc:
        raise _Fail(f"cannot load {path}: {exc}", code=1) from None


# ------------------------------------------------------------------ evaluate / predict

def _cmd_evaluate(args):
    from . import training
    _set_threads(args.threads)
    model, _, _ = _load_checkpoint(args.model)
    (_, _), (x_test, y_test) = _load_mnist(args.data)
    t0 = time.perf_counter()
    from .presets import model_input
    res = training.evaluate(model, model_input(model, x_test), y_test)
    dt = time.perf_counter() - t0
    if args.json:
        _print_json({"model": args.model, "test_loss": res["loss"],
                     "test_accuracy": res["accuracy"], "samples": int(x_test.shape[0]),
                     "seconds": dt})
    else:
        print(f"{args.model}: test accuracy {res['accuracy']:.4f}, loss {res['loss']:.4f} "
              f"({x_test.shape[0]} images, {dt:.2f}s)")
    return 0


def _read_image(path):
    """A 28x28 uint8 digit, white on black like MNIST (dark-on-light images are inverted)."""
    import os

    import numpy as np
    if not os.path.exists(path):
        raise _Fail(f"no such image file: {path}", code=1)
    try:
        from PIL import Image
    except ImportError:
        raise _Fail("reading image files needs Pillow (pip install pillow); "
                    "or use --index N for test-set samples", code=1) from None
    try:
        with Image.open(path) as im:
            im = im.convert("L")
            if im.size != (28, 28):
                im = im.resize((28, 28), Image.BILINEAR)
            a = np.asarray(im, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise _Fail(f"no such image file: {path}", code=1) from None
    except OSError as exc:
        raise _Fail(f"cannot read image {path}: {exc}", code=1) from None
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    if border.mean() > 127:               # paper-like background: invert to MNIST's convention
        a = 255 - a
    return a


def _softmax(z):
    import numpy as np
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _cmd_predict(args, parser):
    import numpy as np

    from . import training
    if not args.images and not args.index:
        parser.error("predict: give image files or --index N")
    model, _, _ = _load_checkpoint(args.model)
    items = []
    for path in args.images:
        items.append((path, _read_image(path), None))
    if args.index:
        (_, _), (x_test, y_test) = _load_mnist(args.data)
        for i in args.index:
            if i >= x_test.shape[0]:
                raise _Fail(f"--index {i} is out of range: the test set has {x_test.shape[0]} "
                            f"images (0..{x_test.shape[0] - 1})", code=2)
            items.append((f"test[{i}]", x_test[i], int(y_test[i])))
    from .presets import model_input
    x = model_input(model, np.stack([it[1] for it in items]))
    probs = _softmax(training.predict(model, x).astype(np.float64))
    for (name, _, label), p in zip(items, probs):
        digit = int(np.argmax(p))
        if args.json:
            obj = {"input": name, "digit": digit, "probabilities": [round(float(v), 6) for v in p]}
            if label is not None:
                obj["label"] = label
            _print_json(obj)
        else:
            lab = f" (label {label})" if label is not None else ""
            print(f"{name}: {digit}{lab}  p={p[digit]:.4f}   "
                  + " ".join(f"{k}:{v:.3f}" for k, v in enumerate(p)))
    return 0


# ------------------------------------------------------------------ info / bench / plot

def _cmd_info(args):
    from ._config import show_config
    show_config(as_json=args.json)
    return 0


def _cmd_bench_kernels(args):
    from .bench import bench_kernels
    if args.threads is not None:
        from . import _threads
        _threads._warn_if_oversubscribed(args.threads, "--threads")
    bench_kernels(threads=args.threads, as_json=args.json)
    return 0


def _cmd_bench_train(args):
    from .bench_train import bench_train
    _set_threads(args.threads)
    with _data_option(args.data):
        res = bench_train(args.preset, epochs=args.epochs, seed=args.seed, data=args.data,
                          engine=args.engine, precision=args.precision)
    if args.json:
        _print_json(res)
    else:
        print(f"fastnn {res['model']} {res.get('precision', 'fp32')}: {res['threads']} "
              f"threads, batch {res['batch']}, {res['epochs']} epochs: median epoch {res['epoch_s']:.3f}s (first "
              f"{res['first_epoch_s']:.3f}s), test accuracy {res['test_acc']:.4f}")
    return 0


def _cmd_plot(args):
    from .errors import DataFormatError
    from .plot import plot_curves
    if not os.path.exists(args.logdir):
        raise _Fail(f"no such log directory or CSV file: {args.logdir}", code=1)
    try:
        plot_curves(args.logdir, args.output)
    except ImportError:
        raise _Fail("plot needs matplotlib: pip install fastnn[plot] (or pip install "
                    "matplotlib)", code=1) from None
    except DataFormatError as exc:
        raise _Fail(f"plot: {exc}", code=1) from None
    print(f"wrote {args.output}")
    return 0


def _cmd_export(args):
    model, _, _ = _load_checkpoint(args.model)
    try:
        from .onnx_export import OPSET, export_onnx
    except ImportError as exc:
        raise _Fail(f"export needs the onnx package ({exc}): pip install \"fastnn[onnx]\"",
                    code=1) from None
    try:
        export_onnx(model, args.output, batch=args.batch, softmax=args.softmax)
    except ValueError as exc:
        raise _Fail(f"cannot export {args.model}: {exc}", code=1) from None
    print(f"wrote {args.output} (ONNX opset {OPSET}, batch "
          f"{args.batch if args.batch is not None else 'dynamic'}, "
          f"{'probabilities' if args.softmax else 'logits'})")
    return 0


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    """warnings.showwarning for the command line: one line, no source excerpt."""
    text = " ".join(str(message).split()).removeprefix("fastnn: ")
    try:
        print(f"fastnn: warning: {text}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _silence_stdout():
    """After EPIPE: point fd 1 at /dev/null so no later flush (ours, or the
    interpreter's at exit) raises again or prints a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError, AttributeError):   # no real fd (captured in tests)
        pass


def _check_thread_env(args):
    """A bad $FASTNN_NUM_THREADS / $OMP_NUM_THREADS is a one-line error, up front."""
    if args.command in ("plot", "export") or (getattr(args, "threads", None) is not None
                                              and args.command != "info"):
        return                          # no kernels run, or --threads overrides them
    from ._threads import default_threads_source
    try:
        default_threads_source()
    except ValueError as exc:
        raise _Fail(str(exc), code=1) from None


def _dispatch(args, parser):
    _check_thread_env(args)
    if args.command == "train":
        return _cmd_train(args)
    if args.command == "evaluate":
        return _cmd_evaluate(args)
    if args.command == "predict":
        return _cmd_predict(args, parser)
    if args.command == "info":
        return _cmd_info(args)
    if args.command == "bench":
        if args.bench_command == "kernels":
            return _cmd_bench_kernels(args)
        return _cmd_bench_train(args)
    if args.command == "plot":
        return _cmd_plot(args)
    if args.command == "export":
        return _cmd_export(args)
    parser.error(f"unknown command {args.command!r}")


def main(argv=None):
    """Entry point of the ``fastnn`` console script; returns the exit code
    (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from .errors import DataFormatError, DatasetNotFoundError, NotBuiltError
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            code = _dispatch(args, parser)
            sys.stdout.flush()         # a closed pipe shows up here, not at exit
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_PIPE
    except _Fail as exc:
        if exc.code == 2:
            parser.print_usage(sys.stderr)
            print(f"fastnn: error: {exc}", file=sys.stderr)
        else:
            print(f"fastnn: {exc}", file=sys.stderr)
        return exc.code
    except (DatasetNotFoundError, DataFormatError, NotBuiltError) as exc:
        print(f"fastnn: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:             # unwritable --save/--logdir/-o, disk full, ...
        print(f"fastnn: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
