"""The GPU check's part b: the project's step under torchrun (DDP, SyncBatchNorm, NCCL on
CUDA or gloo on a CPU), on a repeated batch and then fed by the FFCV loader.

``torchrun_check`` starts ``python -m bench.gpu_check --ddp-worker CONFIG`` under torchrun;
each rank runs ``ddp_worker``; rank 0 writes the result file, with each rank's memory as
nvidia-smi sees it (extra CUDA contexts show there).
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.gpu_plan import BASE_RECIPE, Plan
from bench.train_step import project_step, repeated_batch, run_steps, step_harness

REPO = Path(__file__).resolve().parent.parent


def gpu_processes(pids: list[int]) -> dict[str, Any]:
    """Memory of each of ``pids`` on each GPU, from nvidia-smi (one row per process and GPU)."""
    try:
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=index,pci.bus_id",
                               "--format=csv,noheader"], capture_output=True, text=True,
                              check=True, timeout=30).stdout
        apps = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,gpu_bus_id,used_memory",
                               "--format=csv,noheader,nounits"], capture_output=True, text=True,
                              check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": f"nvidia-smi unavailable ({type(exc).__name__})"}
    index = {}
    for line in gpus.strip().splitlines():
        i, bus = (s.strip() for s in line.split(","))
        index[bus.lower()] = int(i)
    rows = []
    for line in apps.strip().splitlines():
        parts = [s.strip() for s in line.split(",")]
        if len(parts) == 3 and parts[0].isdigit():
            rows.append({"pid": int(parts[0]), "gpu": index.get(parts[1].lower(), parts[1]),
                         "used_mib": float(parts[2]) if parts[2].replace(".", "").isdigit() else None})
    ours = [r for r in rows if r["pid"] in pids]
    note = ("" if ours or not rows else
            "no row matches our pids (another pid namespace?): all rows shown")
    return {"rows": ours or rows, "note": note}


def ddp_worker(config: dict[str, Any]) -> None:
    """One torchrun rank: the step under DDP (NCCL on CUDA, gloo on CPU) with SyncBatchNorm,
    on a repeated batch and then on FFCV loader batches; rank 0 writes the result."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from ffcv_bt.distributed.process_group import setup
    from ffcv_bt.method.model import BarlowTwins, convert_sync_batchnorm
    from ffcv_bt.stage.clock import sync_device

    info = setup()
    device = info.device
    if not dist.is_initialized():  # one rank: setup() leaves it to plain-process mode
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size,
                                **({"device_id": device} if device.type == "cuda" else {}))
    if device.type == "cpu":
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // info.world_size - 1))
    channels_last = config["channels_last"] and device.type == "cuda"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = BarlowTwins(config["arch"], config["projector"], width=config["width"]).to(device)
    model = convert_sync_batchnorm(model, device).to(memory_format=fmt)
    norm = next(type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__)
    wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    harness = step_harness(model, wrapped, device, config["precision"], config["batch"])
    x1, x2 = repeated_batch(config["batch"], config["res"], device, seed=info.rank)
    x1, x2 = x1.contiguous(memory_format=fmt), x2.contiguous(memory_format=fmt)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = run_steps(harness, x1, x2, config["warmup"], config["steps"])
    del x1, x2
    loader_result: dict[str, Any] = {}
    if config["loader_steps"] > 0:
        from ffcv_bt.config import load_recipe
        from ffcv_bt.data.pretrain_loader import (
            AugmentationParams,
            make_pretrain_loader,
        )

        aug = AugmentationParams.from_config(load_recipe(BASE_RECIPE).aug)
        workers = max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
        loader = make_pretrain_loader(config["beton"], config["batch"], workers, aug, config["res"],
                                      seed=0, device=device, distributed=True,
                                      channels_last=channels_last)
        losses, done, start = [], 0, None
        epoch = 0
        while done < config["loader_steps"]:
            loader.set_epoch(epoch)
            for view1, view2 in loader:
                if done == 1:  # the first batch carries the loader's JIT compilation
                    sync_device(device)
                    start = time.perf_counter()
                losses.append(project_step(harness, view1, view2))
                done += 1
                if done >= config["loader_steps"]:
                    break
            epoch += 1
        sync_device(device)
        seconds = time.perf_counter() - start if start is not None else math.nan
        values = [float(v) for v in torch.stack(losses).double().cpu()]
        loader_result = {"loader_steps": done, "loader_workers": workers,
                         "images_per_s_with_loader": config["batch"] * (done - 1) / seconds
                         if done > 1 else None,
                         "loader_losses_finite": all(math.isfinite(v) for v in values)}
    mine = {"rank": info.rank, "pid": os.getpid(), "device": str(device),
            "peak_memory_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                                if device.type == "cuda" else None)}
    everyone: list[Any] = [None] * info.world_size
    dist.all_gather_object(everyone, mine)
    if info.rank == 0:
        out = {"world_size": info.world_size, "backend": dist.get_backend(), "batch_norm": norm,
               "ddp": type(wrapped).__name__, **{k: config[k] for k in ("res", "precision", "batch")},
               "channels_last": channels_last, **result, **loader_result, "ranks": everyone,
               "gpu_processes": gpu_processes([r["pid"] for r in everyone])
               if device.type == "cuda" else None}
        Path(config["result"]).write_text(json.dumps(out, indent=2))
    dist.barrier()
    dist.destroy_process_group()


def torchrun_check(plan: Plan, best: dict[str, Any], beton: Path, work: Path) -> dict[str, Any]:
    """Run this script's worker mode under ``torchrun --nproc_per_node N``."""
    result = work / "ddp.json"
    config = {"arch": plan.arch, "width": plan.width, "projector": plan.projector,
              "batch": plan.batch, "res": best["res"], "precision": best["precision"],
              "channels_last": best["channels_last"], "warmup": plan.warmup, "steps": plan.steps,
              "loader_steps": plan.ddp_loader_steps, "beton": str(beton), "result": str(result)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={plan.ddp_nproc}", "-m", "bench.gpu_check",
           "--ddp-worker", json.dumps(config)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if plan.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    start = time.perf_counter()
    shown = " ".join(cmd[:5] + ["--ddp-worker", "<config>"])
    # torchrun and its workers in a process group of their own: on timeout the whole group
    # is killed, so no worker keeps holding a GPU after the check has moved on
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        return {"command": shown, "returncode": None,
                "error": f"torchrun did not finish in 300 s (its process group was killed): "
                         f"{(stderr or '')[-3000:]}"}
    out: dict[str, Any] = {"command": shown, "returncode": proc.returncode,
                           "wall_seconds": time.perf_counter() - start}
    if proc.returncode != 0 or not result.is_file():
        out["error"] = (stderr or stdout)[-3000:]
        return out
    out.update(json.loads(result.read_text()))
    return out
