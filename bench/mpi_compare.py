"""Data-parallel epochs side by side (issue 13): fastnn on 2 MPI ranks with 1 thread each,
PyTorch DDP (gloo, torchrun, 1 thread per rank), fastnn in one process with 1 and 2 threads,
alternating, medians of the epochs after the first:

    python bench/mpi_compare.py PRESET ROUNDS EPOCHS [after,ddp,t1,t2]

("before" runs a checkout in /tmp/before, for A/B measurements of this script's author.)
"""
import json, os, subprocess, sys, statistics, time
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
preset, rounds, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
configs = sys.argv[4].split(",") if len(sys.argv) > 4 else ["after", "before", "ddp", "t1", "t2"]
env = dict(os.environ, FASTNN_DATA=os.environ.get("FASTNN_DATA", "/work/main/data"), OMP_NUM_THREADS="1")
M = ["mpirun", "--allow-run-as-root", "-x", "PYTHONPATH", "-x", "FASTNN_DATA", "-n", "2"]
def cmd(c):
    tr = ["train", "--preset", preset, "--epochs", str(epochs), "--json"]
    if c == "after": return M + [sys.executable, "-m", "fastnn.cli"] + tr + ["--threads", "1"], ROOT
    if c == "before": return M + [sys.executable, "-m", "fastnn.cli"] + tr + ["--threads", "1"], "/tmp/before"
    if c == "ddp": return ["torchrun", "--nproc_per_node", "2", os.path.join(ROOT, "bench", "ddp_torch.py"), "--preset", preset, "--epochs", str(epochs), "--json"], ROOT
    if c == "t1": return [sys.executable, "-m", "fastnn.cli"] + tr + ["--threads", "1"], ROOT
    if c == "t2": return [sys.executable, "-m", "fastnn.cli"] + tr + ["--threads", "2"], ROOT
res = {c: [] for c in configs}
for r in range(rounds):
    for c in configs:
        argv, cwd = cmd(c)
        e = dict(env, PYTHONPATH=cwd)
        load = open("/proc/loadavg").read().split()[0]
        out = subprocess.run(argv, cwd=cwd, env=e, capture_output=True, text=True, timeout=900)
        summ = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{") and '"summary"' in l]
        if not summ:
            print(c, "FAILED", out.stderr[-2000:], flush=True); continue
        d = summ[-1]
        ep = d["epoch_time"]
        share = d.get("allreduce_s", 0) / d["train_s"] if "allreduce_s" in d and d.get("train_s") else None
        res[c].append({"epochs": ep, "acc": d["test_accuracy"], "share": share, "load": load})
        print(f"round {r} {c:6s} load {load} epochs {[round(x, 3) for x in ep]} acc {d['test_accuracy']} "
              f"allreduce share {share if share is None else round(share, 3)}", flush=True)
print("MEDIANS (epochs after the first, all rounds):")
for c, v in res.items():
    if not v: continue
    ep = [x for run in v for x in run["epochs"][1:]]
    sh = [run["share"] for run in v if run["share"] is not None]
    print(f"  {preset} {c:6s} median {statistics.median(ep):.3f} s  min {min(ep):.3f}  acc {v[-1]['acc']}  "
          f"allreduce share {statistics.median(sh) if sh else '-'}  loads {[run['load'] for run in v]}")
