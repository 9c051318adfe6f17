"""fastnn against PyTorch (and TensorFlow / JAX when installed) on the same MNIST recipes.

Every engine trains the same preset (fastnn/presets.py) from the SAME initial
weights (fastnn's seeded PyTorch-default init, copied), on the same batches
(the same numpy permutation per epoch, last partial batch kept), with the
same optimizer and learning-rate schedule, at the same thread count.  Each
engine runs in its own subprocess so thread pools never interfere; all of
them run in ONE invocation of this script, one after the other.

    fastnn      `fastnn bench train --preset P --epochs E --threads T --json`
    PyTorch     eager nn.Sequential, torch.set_num_threads(T), float32 data pre-scaled
                to [0, 1] once (its best case), F.cross_entropy, torch.optim
    TensorFlow  a tf.function train step (GradientTape), intra-op threads T
    JAX         the whole epoch as one jitted lax.scan over the batches, XLA CPU threads T

Reported per preset and thread count: the median epoch wall time over the
epochs after the first, test accuracy after the last epoch, and the ratio
(other engine's time / fastnn's: > 1 means fastnn is faster).

``--precision fp32|bf16|both``: bf16 mixed precision as a column per engine
("fastnn@bf16", "torch@bf16"), next to fp32 with ``both``:

    fastnn@bf16  `fastnn bench train ... --precision bf16` (bf16 GEMM inputs, fp32 sums,
                 fp32 master weights, optimizer, loss: fit(precision="bf16"))
    torch@bf16   the same loop with the forward and the loss under
                 torch.autocast("cpu", dtype=torch.bfloat16) (PyTorch's CPU mixed precision)

TensorFlow and JAX have no bf16 replay here (their cells say so).  Ratios: every
other column's time over fastnn's of each precision (``X/fastnn@bf16`` > 1: fastnn
bf16 is faster than X).

    python bench/compare.py                       # mlp, mlp-keras, softmax at 1,2 threads
    python bench/compare.py --presets mlp,speedrun --threads 2 --epochs 4 --json results.json
    python bench/compare.py --presets lenet5,convnet --threads 2 --epochs 2 --engines fastnn,torch
    python bench/compare.py --presets mlp-keras,mlp,softmax --threads 2 --epochs 3 \
        --engines fastnn,torch --precision both --repeat 3

Convolutional presets (lenet5, convnet, speedrun-cnn) are replayed layer by
layer in PyTorch (``_torch_net``): NCHW, Conv2d weights converted from fastnn's
HWIO (``Conv2D.weight_to_torch``), the Dense after a Flatten re-ordered from
NHWC's (h, w, c) features to NCHW's (c, h, w) (``dense_weight_to_torch``), so the
two start from the same function.  Dropout masks come from each engine's own
generator.  TensorFlow and JAX replay MLPs only.
"""
import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ENGINES = ("fastnn", "torch", "tensorflow", "jax")
PRECISIONS = ("fp32", "bf16")
BF16_ENGINES = ("fastnn", "torch")     # the engines with a bf16 mode here


# ------------------------------------------------------------------ shared recipe

def _recipe(preset_name, epochs, seed):
    """Data, the initial model, permutations, per-step lrs.  MLP presets feed rows
    (N, 784), convolutional ones images (N, 28, 28)."""
    from fastnn import presets
    from fastnn.datasets import mnist
    p = presets.get_preset(preset_name).replace(epochs=epochs)
    (x, y), (xt, yt) = mnist.load_data()
    if p.arch == "mlp":
        x = x.reshape(x.shape[0], -1)
        xt = xt.reshape(xt.shape[0], -1)
    model = presets.build_model(p, seed=seed)
    steps = -(-x.shape[0] // p.batch_size)
    opt = presets.build_optimizer(p, model)
    sched = presets.build_schedule(p, opt, steps)
    lrs = np.array([sched.lr_at(t) if sched is not None else p.lr
                    for t in range(epochs * steps)], np.float64)
    # fit() draws one permutation per epoch from default_rng(seed), in order
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(x.shape[0]) for _ in range(epochs)]
    return p, (x, y, xt, yt), model, perms, lrs


def _dense_params(model):
    """(W (in, out), b) of every layer of an MLP: the JAX and TensorFlow replays."""
    if any(not hasattr(layer, "weight") or layer.weight.data.ndim != 2 for layer in model.layers):
        raise NotImplementedError("this engine replays MLP presets only")
    return ([layer.weight.data.copy() for layer in model.layers],
            [layer.bias.data.copy() for layer in model.layers])


def _torch_optimizer(p, params):
    """The preset's optimizer in PyTorch (SGD with momentum/Nesterov, Adam or AdamW)."""
    import torch
    if p.optimizer == "sgd":
        return torch.optim.SGD(params, lr=p.lr, momentum=p.momentum, nesterov=p.nesterov,
                               weight_decay=p.weight_decay)
    if p.optimizer == "adam":
        return torch.optim.Adam(params, lr=p.lr, weight_decay=p.weight_decay)
    return torch.optim.AdamW(params, lr=p.lr, weight_decay=p.weight_decay)


def _torch_net(model, input_shape):
    """The fastnn Sequential as a torch.nn.Sequential (NCHW), with the same weights."""
    import torch
    from fastnn import layers as L
    mods, shape, after_flatten = [], tuple(input_shape), None
    with torch.no_grad():
        for layer in model.layers:
            if isinstance(layer, L.Conv2D):
                t, b, l, r = layer.padding_for(shape[1], shape[2])
                if (t, l) != (b, r):
                    raise NotImplementedError(f"asymmetric padding {(t, b, l, r)} in the torch "
                                              "replay")
                m = torch.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                                    layer.stride, padding=(t, l), bias=layer.use_bias)
                m.weight.copy_(torch.from_numpy(layer.weight_to_torch()))
                if layer.bias is not None:
                    m.bias.copy_(torch.from_numpy(layer.bias.data))
                mods.append(m)
                if layer.activation == "relu":
                    mods.append(torch.nn.ReLU())
            elif isinstance(layer, L.MaxPool2D):
                mods.append(torch.nn.MaxPool2d(layer.pool_size, layer.stride))
            elif isinstance(layer, L.AvgPool2D):
                mods.append(torch.nn.AvgPool2d(layer.pool_size, layer.stride))
            elif isinstance(layer, L.GlobalAvgPool2D):
                mods += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()]
            elif isinstance(layer, L.BatchNorm2D):
                mods.append(torch.nn.BatchNorm2d(layer.num_features, eps=layer.eps,
                                                 momentum=layer.momentum))
            elif isinstance(layer, L.Flatten):
                mods.append(torch.nn.Flatten())
                after_flatten = tuple(shape[1:]) if len(shape) == 4 else None
            elif isinstance(layer, L.Dropout):
                mods.append(torch.nn.Dropout(layer.rate))
            elif isinstance(layer, L.ReLU):
                mods.append(torch.nn.ReLU())
            elif isinstance(layer, L.Dense):
                m = torch.nn.Linear(layer.in_features, layer.out_features)
                m.weight.copy_(torch.from_numpy(
                    L.dense_weight_to_torch(layer.weight.data, hwc=after_flatten)))
                m.bias.copy_(torch.from_numpy(layer.bias.data))
                mods.append(m)
                after_flatten = None
                if layer.activation == "relu":
                    mods.append(torch.nn.ReLU())
                elif layer.activation is not None:
                    raise NotImplementedError(f"Dense activation {layer.activation!r}")
            else:
                raise NotImplementedError(f"no torch replay of {type(layer).__name__}")
            if not isinstance(layer, L.Dropout):
                shape = tuple(layer.output_shape(shape))
    return torch.nn.Sequential(*mods)


def _result(engine, p, threads, epochs, times, acc, precision="fp32"):
    return {"engine": engine, "model": p.name, "threads": threads, "batch": p.batch_size,
            "epochs": epochs, "epoch_s": statistics.median(times[1:]) if len(times) > 1
            else times[0], "first_epoch_s": times[0], "test_acc": float(acc),
            "precision": precision}


def _column(engine, precision):
    """A table column: the engine, with "@bf16" in bf16."""
    return engine if precision == "fp32" else f"{engine}@{precision}"


# ------------------------------------------------------------------ workers

def worker_torch(preset, threads, epochs, seed, precision="fp32"):
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    # bf16: PyTorch's CPU mixed precision, the forward and the loss under autocast
    # (Linear/Conv in bf16, cross-entropy in fp32; fp32 parameters and optimizer)
    def autocast():
        if precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()
    p, (x, y, xt, yt), model, perms, lrs = _recipe(preset, epochs, seed)
    X = torch.from_numpy(np.multiply(x, np.float32(1 / 255), dtype=np.float32))
    Y = torch.from_numpy(y.astype(np.int64))
    Xt = torch.from_numpy(np.multiply(xt, np.float32(1 / 255), dtype=np.float32))
    if X.ndim == 3:                      # images: NCHW with one channel
        X, Xt = X.unsqueeze(1), Xt.unsqueeze(1)
        net = _torch_net(model, (1,) + tuple(x.shape[1:]) + (1,))
    else:
        net = _torch_net(model, (1, x.shape[1]))
    net.train()
    opt = _torch_optimizer(p, net.parameters())
    b = p.batch_size
    times, t = [], 0
    for perm in perms:
        idx = torch.from_numpy(perm)
        t0 = time.perf_counter()
        for s in range(0, len(perm), b):
            bi = idx[s:s + b]
            for g in opt.param_groups:
                g["lr"] = float(lrs[t])
            with autocast():
                out = net(X[bi])
                loss = F.cross_entropy(out, Y[bi], label_smoothing=p.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            t += 1
        times.append(time.perf_counter() - t0)
    net.eval()
    with torch.no_grad(), autocast():
        acc = (torch.cat([net(Xt[i:i + 1000]).float() for i in range(0, len(Xt), 1000)])
               .argmax(1).numpy() == yt).mean()
    return _result("torch", p, threads, epochs, times, acc, precision)


def worker_jax(preset, threads, epochs, seed, precision="fp32"):
    if precision != "fp32":
        raise NotImplementedError("no bf16 replay for JAX")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}"
                               f" intra_op_parallelism_threads={threads}")
    import jax
    import jax.numpy as jnp
    p, (x, y, xt, yt), model, perms, lrs = _recipe(preset, epochs, seed)
    Ws, bs = _dense_params(model)
    if p.optimizer != "sgd":
        raise NotImplementedError("the JAX replay implements SGD (momentum, nesterov) only")
    X = jnp.asarray(np.multiply(x, np.float32(1 / 255), dtype=np.float32))
    Y = jnp.asarray(y.astype(np.int32))
    params = [(jnp.asarray(W), jnp.asarray(b)) for W, b in zip(Ws, bs)]
    vel = [(jnp.zeros_like(W), jnp.zeros_like(b)) for W, b in params]
    mu, nesterov, wd, ls = p.momentum, p.nesterov, p.weight_decay, p.label_smoothing

    def loss_fn(params, xb, yb):
        a = xb
        for i, (W, b) in enumerate(params):
            a = a @ W + b
            if i < len(params) - 1:
                a = jax.nn.relu(a)
        logp = jax.nn.log_softmax(a)
        nll = -jnp.take_along_axis(logp, yb[:, None], axis=1)[:, 0]
        return jnp.mean((1 - ls) * nll - ls * logp.mean(axis=1))

    def sgd(params, vel, grads, lr):
        new_p, new_v = [], []
        for (W, b), (vW, vb), (gW, gb) in zip(params, vel, grads):
            pair_p, pair_v = [], []
            for w, v, g in ((W, vW, gW), (b, vb, gb)):
                g = g + wd * w
                v = mu * v + g
                step = g + mu * v if nesterov else v
                pair_p.append(w - lr * step)
                pair_v.append(v)
            new_p.append(tuple(pair_p))
            new_v.append(tuple(pair_v))
        return new_p, new_v

    def step(carry, inp):
        params, vel = carry
        idx, lr = inp
        grads = jax.grad(loss_fn)(params, X[idx], Y[idx])
        return sgd(params, vel, grads, lr), None

    @jax.jit
    def full_batches(params, vel, idx, lr):
        (params, vel), _ = jax.lax.scan(step, (params, vel), (idx, lr))
        return params, vel

    @jax.jit
    def one_step(params, vel, idx, lr):
        return step((params, vel), (idx, lr))[0]

    b = p.batch_size
    n_full = len(perms[0]) // b
    times, t = [], 0
    for perm in perms:
        full = jnp.asarray(perm[:n_full * b].reshape(n_full, b).astype(np.int32))
        tail = perm[n_full * b:]
        t0 = time.perf_counter()
        params, vel = full_batches(params, vel, full, jnp.asarray(lrs[t:t + n_full], jnp.float32))
        t += n_full
        if len(tail):
            params, vel = one_step(params, vel, jnp.asarray(tail.astype(np.int32)),
                                   jnp.float32(lrs[t]))
            t += 1
        jax.block_until_ready(params)
        times.append(time.perf_counter() - t0)
    a = jnp.asarray(np.multiply(xt, np.float32(1 / 255), dtype=np.float32))
    for i, (W, bb) in enumerate(params):
        a = a @ W + bb
        if i < len(params) - 1:
            a = jax.nn.relu(a)
    acc = (np.asarray(a).argmax(1) == yt).mean()
    return _result("jax", p, threads, epochs, times, acc)


def worker_tensorflow(preset, threads, epochs, seed, precision="fp32"):
    if precision != "fp32":
        raise NotImplementedError("no bf16 replay for TensorFlow")
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    p, (x, y, xt, yt), model, perms, lrs = _recipe(preset, epochs, seed)
    Ws, bs = _dense_params(model)
    if p.optimizer != "sgd":
        raise NotImplementedError("the TensorFlow replay implements SGD (momentum, nesterov) only")
    X = tf.constant(np.multiply(x, np.float32(1 / 255), dtype=np.float32))
    Y = tf.constant(y.astype(np.int32))
    params = [tf.Variable(a) for W, b in zip(Ws, bs) for a in (W, b)]
    vel = [tf.Variable(tf.zeros_like(v)) for v in params]
    mu, nesterov, wd, ls = p.momentum, p.nesterov, p.weight_decay, p.label_smoothing
    n_layers = len(Ws)

    @tf.function(reduce_retracing=True)
    def train_step(idx, lr):
        xb, yb = tf.gather(X, idx), tf.gather(Y, idx)
        with tf.GradientTape() as tape:
            a = xb
            for i in range(n_layers):
                a = tf.matmul(a, params[2 * i]) + params[2 * i + 1]
                if i < n_layers - 1:
                    a = tf.nn.relu(a)
            labels = tf.one_hot(yb, a.shape[-1]) * (1 - ls) + ls / a.shape[-1]
            loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels, a))
        grads = tape.gradient(loss, params)
        for w, v, g in zip(params, vel, grads):
            g = g + wd * w
            v.assign(mu * v + g)
            w.assign_sub(lr * (g + mu * v if nesterov else v))
        return loss

    b = p.batch_size
    times, t = [], 0
    for perm in perms:
        t0 = time.perf_counter()
        for s in range(0, len(perm), b):
            train_step(tf.constant(perm[s:s + b].astype(np.int32)), tf.constant(lrs[t], tf.float32))
            t += 1
        times.append(time.perf_counter() - t0)
    a = tf.constant(np.multiply(xt, np.float32(1 / 255), dtype=np.float32))
    for i in range(n_layers):
        a = tf.matmul(a, params[2 * i]) + params[2 * i + 1]
        if i < n_layers - 1:
            a = tf.nn.relu(a)
    acc = (a.numpy().argmax(1) == yt).mean()
    return _result("tensorflow", p, threads, epochs, times, acc)


WORKERS = {"torch": worker_torch, "jax": worker_jax, "tensorflow": worker_tensorflow}


# ------------------------------------------------------------------ driver

def _available(engine):
    if engine == "fastnn":
        return True
    import importlib.util
    return importlib.util.find_spec(engine) is not None


def _run(cmd, timeout):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "")}
    if not env["OMP_NUM_THREADS"]:
        del env["OMP_NUM_THREADS"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip()
                           else f"exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_engine(engine, preset, threads, epochs, seed, timeout, precision="fp32"):
    if engine == "fastnn":
        cmd = [sys.executable, "-m", "fastnn.cli", "bench", "train", "--preset", preset,
               "--epochs", str(epochs), "--threads", str(threads), "--seed", str(seed),
               "--precision", precision, "--json"]
    else:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", engine, "--presets", preset,
               "--threads", str(threads), "--epochs", str(epochs), "--seed", str(seed),
               "--precision", precision]
    res = _run(cmd, timeout)
    if res.get("precision", "fp32") != precision:
        raise RuntimeError(f"{engine} ran {res.get('precision')}, not {precision}")
    return res


def _ratio_pairs(columns):
    """(column, reference) pairs of the ratio columns: every other column over each
    fastnn column, except fastnn fp32 over fastnn bf16 twice (only fastnn/fastnn@bf16:
    > 1 means bf16 is faster)."""
    refs = [c for c in columns if c.split("@")[0] == "fastnn"]
    pairs = []
    for r in refs:
        for c in columns:
            if c == r or (r == "fastnn" and c.startswith("fastnn")):
                continue
            pairs.append((c, r))
    return pairs


def _table(rows, engines):
    """engines: the table's columns (an engine, "@bf16" for its bf16 runs)."""
    pairs = _ratio_pairs(engines)
    head = ["preset", "threads"] + [f"{e} s/epoch" for e in engines] + \
        [f"{e} acc" for e in engines] + [f"{c}/{r}" for c, r in pairs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (preset, threads), res in rows.items():
        cells = [preset, str(threads)]
        cells += [f"{res[e]['epoch_s']:.3f}" if e in res else res.get(e + "_error", "n/a")[:40]
                  for e in engines]
        cells += [f"{res[e]['test_acc']:.4f}" if e in res else "" for e in engines]
        for c, r in pairs:
            if c in res and r in res:
                cells.append(f"{res[c]['epoch_s'] / res[r]['epoch_s']:.2f}x")
            else:
                cells.append("")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _positive_ints(text):
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,2, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return vals


def main(argv=None):
    from fastnn.presets import PRESETS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="mlp,mlp-keras,softmax",
                    help=f"comma-separated, from {', '.join(PRESETS)}")
    ap.add_argument("--threads", type=_positive_ints, default=[1, 2])
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run (>= 2: the first "
                    "is reported apart, the median is over the rest)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--precision", default="fp32", choices=PRECISIONS + ("both",),
                    help="fp32, bf16 (mixed precision: fastnn's precision='bf16', PyTorch's "
                         "bf16 autocast), or both as columns side by side")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per engine, alternating engines; the run with the median epoch "
                         "time is reported (use 3+ on a shared, noisy machine)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per engine run")
    ap.add_argument("--json", default=None, help="also write all results to this file")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    presets = [s.strip() for s in args.presets.split(",") if s.strip()]
    for name in presets:
        if name not in PRESETS:
            ap.error(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    if args.epochs < 1:
        ap.error("--epochs must be >= 1")
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")

    if args.worker:                            # one engine, one preset, one thread count
        if args.precision not in PRECISIONS:
            ap.error("a worker runs one precision")
        res = WORKERS[args.worker](presets[0], args.threads[0], args.epochs, args.seed,
                                   args.precision)
        print(json.dumps(res), flush=True)
        return 0

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    bad = [e for e in engines if e not in ENGINES]
    if bad:
        ap.error(f"unknown engine(s) {bad}; choose from {', '.join(ENGINES)}")
    present = [e for e in engines if _available(e)]
    for e in engines:
        if e not in present:
            print(f"# {e}: not installed, skipped", flush=True)
    precisions = PRECISIONS if args.precision == "both" else (args.precision,)
    # (column, engine, precision), fp32 columns first; engines without bf16 skip it
    columns = [(_column(e, pr), e, pr) for pr in precisions for e in present
               if pr == "fp32" or e in BF16_ENGINES]
    for pr in precisions:
        for e in present:
            if pr != "fp32" and e not in BF16_ENGINES:
                print(f"# {e}: no {pr} replay, skipped in {pr}", flush=True)
    import fastnn
    from fastnn import _config
    info = _config.config()
    print(f"# cpu: {info['cpu']}; features: "
          f"{', '.join(k for k, v in info.get('cpu_features', {}).items() if v)}; "
          f"fastnn {fastnn.__version__}; epochs {args.epochs}, seed {args.seed}", flush=True)
    rows, flat = {}, []
    for preset in presets:
        for threads in args.threads:
            res = rows.setdefault((preset, threads), {})
            runs = {col: [] for col, _, _ in columns}
            for rep in range(args.repeat):
                # alternate engines and precisions so slow phases of the machine hit all
                for col, e, pr in columns:
                    t0 = time.perf_counter()
                    try:
                        r = run_engine(e, preset, threads, args.epochs, args.seed, args.timeout,
                                       pr)
                    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                        res[col + "_error"] = f"failed: {exc}"
                        print(f"# {col} {preset} {threads}T failed: {exc}", flush=True)
                        continue
                    runs[col].append(r)
                    flat.append(r)
                    print(f"# {col:<12} {preset:<9} {threads}T  epoch {r['epoch_s']:.3f}s "
                          f"(first {r['first_epoch_s']:.3f}s)  acc {r['test_acc']:.4f}  "
                          f"[{time.perf_counter() - t0:.0f}s]", flush=True)
            for e, rs in runs.items():
                if rs:
                    res[e] = sorted(rs, key=lambda r: r["epoch_s"])[(len(rs) - 1) // 2]
    print()
    print(_table(rows, [col for col, _, _ in columns]))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"results": flat, "cpu": info["cpu"], "epochs": args.epochs}, fh, indent=1)
    return 0 if all(not math.isnan(r["epoch_s"]) for r in flat) else 1


if __name__ == "__main__":
    sys.exit(main())
