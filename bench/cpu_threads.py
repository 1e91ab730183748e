"""The torch / FFCV thread split on a CPU, measured side by side on the demo recipe.

    python -m bench.cpu_threads [--threads 1,2] [--steps 30]

Each setting pretrains rules/demo.yaml for two epochs of ``--steps`` steps in a fresh
process (``--train.cpu_threads=N``; the loader keeps its ``data.num_workers`` threads) and
reports the steady-state images/s (second epoch, after numba's compilation) and the
process's CPU time over wall time while it pretrains (sampled between the first and the
last log line, so start-up and compilation are left out). Oversubscribed cores used to
make torch's OpenMP barriers wait on descheduled threads (a ~10x slower step); this prints
the ratio of the two settings so that a slowdown shows.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent


def measure(threads: int, steps: int, work: Path) -> dict[str, float]:
    out = work / f"threads-{threads}"
    cmd = [sys.executable, "-m", "ffcv_bt.train.pretrain", "--config", str(REPO / "rules" / "demo.yaml"),
           "--out", str(out), "--optim.epochs=2", f"--train.max_steps_per_epoch={steps}",
           "--monitor.every_epochs=0", f"--train.cpu_threads={threads}", "--train.log_every=5"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    handle, log = psutil.Process(proc.pid), out / "log.jsonl"
    first: tuple[float, float] | None = None
    last: tuple[float, float] | None = None
    while proc.poll() is None:
        lines = log.read_text().splitlines() if log.is_file() else []
        try:
            cpu = sum(handle.cpu_times()[:2])
        except psutil.NoSuchProcess:
            break
        if lines and first is None:
            first = (time.monotonic(), cpu)
        if lines:
            last = (time.monotonic(), cpu)
        time.sleep(0.05)
    if proc.wait() != 0:
        raise SystemExit(f"pretraining with {threads} threads failed: {' '.join(cmd)}")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    steady = [r["images_per_s"] for r in records if r.get("epoch") == 1]
    busy = (last[1] - first[1]) / max(last[0] - first[0], 1e-9) if first and last else float("nan")
    return {"images_per_s": sum(steady) / len(steady), "cpu_per_wall": busy}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="torch thread counts to compare")
    parser.add_argument("--steps", type=int, default=30, help="steps per epoch")
    args = parser.parse_args()
    counts = [int(t) for t in args.threads.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        results = {n: measure(n, args.steps, Path(tmp)) for n in counts}
    print(f"{psutil.cpu_count()} CPUs; rules/demo.yaml, {args.steps} steps per epoch, 2nd epoch")
    for n, r in results.items():
        print(f"  torch threads {n}: {r['images_per_s']:7.1f} images/s, process CPU / wall "
              f"{r['cpu_per_wall']:.2f} while pretraining")
    base = results[counts[0]]["images_per_s"]
    for n in counts[1:]:
        print(f"ratio threads {n} / threads {counts[0]}: {results[n]['images_per_s'] / base:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
