"""Seconds from a fresh process to its first two-view batch, with numba's on-disk cache cold
(every kernel compiled: what each process paid before ``cache=True``) and warm (kernels
loaded), measured side by side in alternating child processes.

    python -m bench.loader_startup [--data data/fashion-mnist] [--repeats 2]

Each child builds the demo recipe's pretraining loader (batch 64, 24 px, one worker, one
torch thread) and takes one batch; ``NUMBA_CACHE_DIR`` points at a fresh folder for the cold
run and at the folder the cold run filled for the warm one. FFCV's generated pipeline
function is compiled in both (it cannot be cached); the difference is our kernels.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
t0 = time.perf_counter()
import torch
torch.set_num_threads(1)
from ffcv_bt.config import RULES_DIR, load_recipe
from ffcv_bt.data.pretrain_loader import AugmentationParams, make_pretrain_loader
t1 = time.perf_counter()
recipe = load_recipe(RULES_DIR / "demo.yaml")
loader = make_pretrain_loader(sys.argv[1], 64, 1, AugmentationParams.from_config(recipe.aug), 24, 0,
                              device="cpu")
next(iter(loader))
print(json.dumps({"imports_s": t1 - t0, "first_batch_s": time.perf_counter() - t1}))
"""


def first_batch_seconds(beton: Path, cache_dir: Path) -> dict[str, float]:
    """One child process's import and loader-to-first-batch seconds."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(beton)], env=env, cwd=REPO,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "fashion-mnist")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    beton = args.data / "train.beton"
    if not beton.is_file():
        raise SystemExit(f"{beton} not found: make demo writes it")
    print(f"{'run':>4} {'cold cache (compile) s':>24} {'warm cache (load) s':>21} {'ratio':>7}")
    for run in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            cold = first_batch_seconds(beton, Path(cache))["first_batch_s"]
            warm = first_batch_seconds(beton, Path(cache))["first_batch_s"]
        print(f"{run:>4} {cold:>24.1f} {warm:>21.1f} {cold / warm:>6.2f}x")


if __name__ == "__main__":
    main()
