"""Data-parallel epochs side by side (issue 13): fastnn on 2 MPI ranks with 1 thread each,
PyTorch DDP (gloo, torchrun, 1 thread per rank), fastnn in one process with 1 and 2 threads,
alternating, medians of the epochs after the first:

    python bench/mpi_compare.py PRESET ROUNDS EPOCHS [after,ddp,t1,t2,mpi,mpi-after]

"after": fastnn's default gradient exchange (shared memory when the ranks share a machine);
"mpi": FASTNN_MPI_REDUCE=mpi, the MPI allreduce on the reduction thread, overlapped with the
backward pass; "mpi-after": the same buckets reduced after the whole step
(FASTNN_MPI_OVERLAP=0).  ("before" runs a checkout in /tmp/before, for A/B measurements.)

    python bench/mpi_compare.py --phases PRESET

the CPU time of each part of a 2-rank step in one process (see ``phases``).

    python bench/mpi_compare.py --overlap PRESET ROUNDS EPOCHS

the overlap achieved by the MPI allreduce path: 2 ranks x 1 thread, overlapped and not,
alternating; per run the allreduce time (from each bucket's gradient being written to its
sum), the part of it hidden behind the backward pass, and hidden / allreduce.
"""
import json, os, subprocess, sys, statistics, time
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
M = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-x", "PYTHONPATH", "-x", "FASTNN_DATA",
     "-x", "FASTNN_MPI_REDUCE", "-x", "FASTNN_MPI_OVERLAP", "-n", "2"]
MODES = {"mpi": {"FASTNN_MPI_REDUCE": "mpi", "FASTNN_MPI_OVERLAP": "1"},
         "mpi-after": {"FASTNN_MPI_REDUCE": "mpi", "FASTNN_MPI_OVERLAP": "0"},
         "after": {"FASTNN_MPI_REDUCE": "shm", "FASTNN_MPI_OVERLAP": "1"}}


def overlap_worker(preset_name, epochs):
    """Under mpirun: one fit_distributed of the preset, 1 thread; rank 0 prints a JSON line."""
    from fastnn import presets, training, _threads
    from fastnn.datasets import mnist
    from fastnn.distributed import get_world
    _threads.set_num_threads(1)
    preset = presets.get_preset(preset_name)
    (x, y), (xt, yt) = mnist.load_data(path=os.environ.get("FASTNN_DATA"))
    x, xt = x.reshape(len(x), -1), xt.reshape(len(xt), -1)
    model = presets.build_model(preset, seed=0)
    comm = get_world()
    cpu0 = time.process_time()
    h = training.fit_distributed(model, x, y, comm=comm, epochs=epochs,
                                 batch_size=preset.batch_size, loss=presets.build_loss(preset),
                                 optimizer=presets.build_optimizer(preset, model),
                                 validation_data=(xt, yt), seed=0, verbose=0)
    # CPU seconds per epoch of each rank (all its threads): the work, whatever the load
    cpu = comm.allgather(f"{(time.process_time() - cpu0) / epochs:.4f}")
    if comm.rank == 0:
        print(json.dumps({"overlap_run": True, "epoch_time": h.history["epoch_time"],
                          "cpu_per_epoch": [float(c) for c in cpu],
                          "busy": comm.allreduce_busy_seconds,
                          "hidden": comm.allreduce_hidden_seconds,
                          "exposed": comm.allreduce_seconds,
                          "acc": h.history["val_accuracy"][-1]}), flush=True)


def phases(preset_name, rounds=7, k=60):
    """One process, 1 thread: the CPU time (thread_time, whatever the machine's load) of the
    parts of a 2-rank step of the preset (per-rank batch = half the preset's), alternating,
    medians over rounds: the fused single-process step for reference (k steps per call),
    the gradient-only step, the update from the 2 ranks' shared slots (apply_sum) and from
    a summed buffer (apply), the sharded evaluation per step, the Python around the native
    calls (a 4-8-8-3 net, where the native work is negligible)."""
    import numpy as np
    from fastnn import _fused, _threads, presets, training
    from fastnn.datasets import mnist
    from fastnn.distributed import ResidentGradPlan
    from fastnn.fusion import check
    _threads.set_num_threads(1)
    preset = presets.get_preset(preset_name)
    (x, y), (xt, yt) = mnist.load_data(path=os.environ.get("FASTNN_DATA"))
    x, xt = x.reshape(len(x), -1), xt.reshape(len(xt), -1)
    b = -(-preset.batch_size // 2)
    steps = -(-len(x) // preset.batch_size)

    def make(sizes=None):
        m = presets.build_model(preset, seed=0) if sizes is None else \
            __import__("fastnn.models", fromlist=["MLP"]).MLP(sizes, seed=0)
        o = presets.build_optimizer(preset, m)
        return m, o, check(m, presets.build_loss(preset), o, b).dense
    m1, o1, d1 = make()
    fused = _fused.FusedPlan(m1, o1, d1, b)
    m2, o2, d2 = make()
    gp = ResidentGradPlan(m2, o2, d2, b)
    m3, o3, d3 = make([4, 8, 8, 3])
    tiny = ResidentGradPlan(m3, o3, d3, 2)
    slots = np.zeros((2, m2.flat_params.size), np.float32)
    tslots = np.zeros((2, m3.flat_params.size), np.float32)
    xs = np.zeros((8, 4), np.uint8)
    perm = np.random.default_rng(0).permutation(len(x))
    T = time.thread_time
    res = {k_: [] for k_ in ("fused step", "grad_step", "apply_sum (2 slots)", "apply (summed)",
                             "evaluation per step", "Python per step")}
    for r in range(rounds):
        t = T(); fused.run(x, y, perm, 0, k); res["fused step"].append((T() - t) / k)
        tg = ta = tb = 0.0
        for s in range(k):
            rows = perm[s * b:(s + 1) * b]
            t0 = T(); gp.grad_step(x, y, rows, 1 / (2 * b), slots[s & 1]); t1 = T(); tg += t1 - t0
            if s & 1:
                gp.apply(slots[0]); ta += T() - t1
            else:
                gp.apply_sum(slots); tb += T() - t1
        res["grad_step"].append(tg / k)
        res["apply (summed)"].append(ta / (k // 2))
        res["apply_sum (2 slots)"].append(tb / (k - k // 2))
        half = len(xt) // 2
        t = T(); training.evaluate(m2, xt[:half], yt[:half])
        res["evaluation per step"].append((T() - t) / steps)
        t = T()
        for s in range(200):
            tiny.grad_step(xs, np.zeros(8, np.int64), np.array([1, 2]), 0.5, tslots[s & 1])
            tiny.apply_sum(tslots)
        res["Python per step"].append((T() - t) / 200)
    print(f"{preset_name}: 2 ranks x {b} rows, CPU ms per step (medians of {rounds}, load "
          f"{open('/proc/loadavg').read().split()[0]}); {steps} steps per epoch")
    for name, v in res.items():
        ms = statistics.median(v) * 1e3
        print(f"  {name:22s} {ms:7.3f} ms   x {steps} steps = {ms * steps / 1e3:.3f} s/epoch")


def run_overlap(preset, rounds, epochs, env):
    res = {m: [] for m in ("mpi", "mpi-after", "after")}
    for r in range(rounds):
        for m in res:
            e = dict(env, PYTHONPATH=ROOT, **MODES[m])
            load = open("/proc/loadavg").read().split()[0]
            out = subprocess.run(M + [sys.executable, os.path.abspath(__file__), "--worker", preset,
                                      str(epochs)], cwd=ROOT, env=e, capture_output=True,
                                 text=True, timeout=900)
            d = [json.loads(l) for l in out.stdout.splitlines() if '"overlap_run"' in l]
            if not d:
                print(m, "FAILED", out.stderr[-2000:], flush=True)
                continue
            d = d[-1]
            frac = d["hidden"] / d["busy"] if d["busy"] else 0.0
            res[m].append(dict(d, frac=frac, load=load))
            print(f"round {r} {m:9s} load {load} epochs {[round(x, 3) for x in d['epoch_time']]} "
                  f"CPU s/epoch per rank {d['cpu_per_epoch']} "
                  f"allreduce {d['busy']:.3f} s  hidden {d['hidden']:.3f} s  exposed "
                  f"{d['exposed']:.3f} s  hidden/allreduce {frac:.3f}  acc {d['acc']}", flush=True)
    print("MEDIANS:")
    for m, v in res.items():
        if v:
            ep = [x for run in v for x in run["epoch_time"][1:]]
            print(f"  {preset} {m:9s} epoch {statistics.median(ep):.3f} s  hidden/allreduce "
                  f"{statistics.median(run['frac'] for run in v):.3f}  loads {[run['load'] for run in v]}")


def main():
    env = dict(os.environ, FASTNN_DATA=os.environ.get("FASTNN_DATA", "/work/main/data"),
               OMP_NUM_THREADS="1")
    if sys.argv[1] == "--worker":
        return overlap_worker(sys.argv[2], int(sys.argv[3]))
    if sys.argv[1] == "--phases":
        os.environ.setdefault("FASTNN_DATA", env["FASTNN_DATA"])
        return phases(sys.argv[2])
    if sys.argv[1] == "--overlap":
        return run_overlap(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), env)
    preset, rounds, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    configs = sys.argv[4].split(",") if len(sys.argv) > 4 else ["after", "before", "ddp", "t1", "t2"]

    def cmd(c):
        tr = ["train", "--preset", preset, "--epochs", str(epochs), "--json"]
        if c in MODES:
            return M + [sys.executable, "-m", "fastnn.cli"] + tr + ["--threads", "1"], ROOT
        if c == "before": return M + [sys.executable, "-m", "fastnn.cli"] + tr + ["--threads", "1"], "/tmp/before"
        if c == "ddp": return ["torchrun", "--nproc_per_node", "2", os.path.join(ROOT, "bench", "ddp_torch.py"), "--preset", preset, "--epochs", str(epochs), "--json"], ROOT
        if c == "t1": return [sys.executable, "-m", "fastnn.cli"] + tr + ["--threads", "1"], ROOT
        if c == "t2": return [sys.executable, "-m", "fastnn.cli"] + tr + ["--threads", "2"], ROOT
        raise SystemExit(f"unknown configuration {c!r}")
    res = {c: [] for c in configs}
    for r in range(rounds):
        for c in configs:
            argv, cwd = cmd(c)
            e = dict(env, PYTHONPATH=cwd, **MODES.get(c, {}))
            load = open("/proc/loadavg").read().split()[0]
            out = subprocess.run(argv, cwd=cwd, env=e, capture_output=True, text=True, timeout=900)
            summ = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{") and '"summary"' in l]
            if not summ:
                print(c, "FAILED", out.stderr[-2000:], flush=True); continue
            d = summ[-1]
            ep = d["epoch_time"]
            share = d.get("allreduce_s", 0) / d["train_s"] if "allreduce_s" in d and d.get("train_s") else None
            res[c].append({"epochs": ep, "acc": d["test_accuracy"], "share": share, "load": load})
            print(f"round {r} {c:9s} load {load} epochs {[round(x, 3) for x in ep]} acc {d['test_accuracy']} "
                  f"allreduce share {share if share is None else round(share, 3)}", flush=True)
    print("MEDIANS (epochs after the first, all rounds):")
    for c, v in res.items():
        if not v: continue
        ep = [x for run in v for x in run["epochs"][1:]]
        sh = [run["share"] for run in v if run["share"] is not None]
        print(f"  {preset} {c:9s} median {statistics.median(ep):.3f} s  min {min(ep):.3f}  acc {v[-1]['acc']}  "
              f"allreduce share {statistics.median(sh) if sh else '-'}  loads {[run['load'] for run in v]}")


if __name__ == "__main__":
    main()
