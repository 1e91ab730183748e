"""GPU readiness check: measures this device and writes its device file.

With no data from the user, on one CUDA GPU (about 5-8 minutes): writes a few thousand
ImageNet-like JPEGs (~400x350, smooth noise and shapes, quality 90) into a temporary
.beton with the project's writer, then

  a. pretraining steps of ResNet-50 + 8192-8192-8192 projector (the project's model,
     objective, LARS and ``ffcv_bt.train.pretrain.barlow_step``) at 160, 192 and 224 px: bf16 and fp16
     (GradScaler), channels_last on/off, torch.compile at the largest resolution for the
     best eager setting: two-view images/s, peak memory, loss finite and falling on a
     repeated batch;
  b. the same step under ``torchrun`` (a subprocess running this script's worker mode) with
     NCCL, SyncBatchNorm and DDP, also fed by the FFCV loader; per-process memory on each
     GPU (nvidia-smi) shows extra CUDA contexts;
  c. the loader alone with this machine's cores: pairs/s per resolution, and the loader
     cores per GPU needed to feed the measured step; then ``aug.device: gpu``: its
     workers' pairs/s, the device-side ops' time per pair, and its views against the
     numba loader's (at most 1 level apart);
  d. a checkpoint written and resumed (the project's Pretrainer on the temporary data): the
     resumed run's losses against an uninterrupted run's;
  e. one linear-probe epoch (ffcv_bt.evaluation.trained) and the fp32-vs-bf16 difference of frozen
     features;
  f. a table, and ``results/devices/<gpu name slug>.json`` (format: ffcv_bt.reporting.device_profile).

    python -m bench.gpu_check                      # a CUDA GPU -> results/devices/<slug>.json
    python -m bench.gpu_check --device cpu --quick # the same code paths on a CPU, tiny sizes,
                                                   # device file in a temporary folder
    python -m bench.gpu_check --ddp-nproc 8        # torchrun over 8 GPUs for part b

Exit status 0 when every check passed, 1 otherwise (the device file is written either way,
with ``checks.ok``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import numpy as np
import torch

from bench.reference_values import LAMBD, OPTIM

REPO = Path(__file__).resolve().parent.parent

BASE_RECIPE = REPO / "rules" / "base.yaml"
LOSS = {"lambd": LAMBD, "scale_loss": 1.0, "formulation": "auto"}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@dataclass
class Plan:
    """Sizes and variants of one check run (full on a GPU, or --quick)."""

    device: str
    arch: str
    width: int
    projector: str
    batch: int
    resolutions: list[int]
    precisions: list[str]
    channels_last: list[bool]
    compile_res: list[int]
    warmup: int
    steps: int
    train_images: int
    val_images: int
    classes: int
    image_size: tuple[int, int]  # (height, width) around which images vary
    ckpt_model: tuple[str, int, str]  # arch, width, projector of the resume check
    ckpt_res: int
    ckpt_batch: int
    ckpt_steps: int
    eval_overrides: dict[str, Any]
    ddp_nproc: int
    ddp_loader_steps: int
    loader_min_seconds: float
    cores: int


def make_plan(args: argparse.Namespace) -> Plan:
    cuda = args.device == "cuda"
    cores = len(os.sched_getaffinity(0))
    if args.quick:
        plan = Plan(args.device, "resnet18", 8, "64-64", 16, [16, 32],
                    ["bf16"] if cuda else ["fp32"], [True, False] if cuda else [False],
                    [], 1, 3, 160, 40, 4, (350, 400), ("resnet18", 8, "64-64"), 16, 16, 3,
                    {"linear.res": 32, "linear.resize": 36, "linear.batch_size": 32},
                    1, 4 if cuda else 0, 0.0, cores)
    else:
        plan = Plan(args.device, "resnet50", 64, "8192-8192-8192", args.batch, [160, 192, 224],
                    ["bf16", "fp16"] if cuda else ["fp32"], [True, False] if cuda else [False],
                    [224] if cuda else [], 3, 8, args.images, max(args.images // 6, 64), 10,
                    (350, 400), ("resnet18", 32, "512-512"), 64, 64, 4, {},
                    args.ddp_nproc, 12 if cuda else 0, 2.0, cores)
    if args.no_compile or not cuda:
        plan.compile_res = []
    if args.batch_override:
        plan.batch = args.batch_override
    return plan


# ----- a. the data ----------------------------------------------------------------------------
def synthetic_image(seed: int, label: int, size: tuple[int, int]) -> np.ndarray:
    """An ImageNet-like picture: a smooth colour field, textured noise and a few filled
    shapes whose kind and colour lean on the class (so a linear probe has something to find)."""
    import cv2

    rng = np.random.default_rng(seed)
    h = int(rng.integers(size[0] - 50, size[0] + 51))
    w = int(rng.integers(size[1] - 50, size[1] + 51))
    coarse = rng.uniform(0, 255, size=(int(rng.integers(3, 8)), int(rng.integers(3, 8)), 3))
    image = cv2.resize(coarse.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    texture = rng.normal(0, 20, size=(h // 4 + 1, w // 4 + 1, 3)).astype(np.float32)
    image += cv2.resize(texture, (w, h), interpolation=cv2.INTER_LINEAR)
    base_colour = np.array([(label * 83) % 256, (label * 151) % 256, (label * 47) % 256], float)
    for _ in range(int(rng.integers(2, 6))):
        colour = tuple(float(c) for c in np.clip(base_colour + rng.normal(0, 30, 3), 0, 255))
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(min(h, w) // 10, min(h, w) // 3))
        kind = (label + int(rng.integers(0, 2))) % 3
        if kind == 0:
            cv2.circle(image, (cx, cy), r, colour, -1)
        elif kind == 1:
            cv2.rectangle(image, (cx - r, cy - r // 2), (cx + r, cy + r // 2), colour, -1)
        else:
            pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
            cv2.fillPoly(image, [pts], colour)
    image += rng.normal(0, 4, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _write_one(job: tuple[str, int, int, tuple[int, int]]) -> None:
    from PIL import Image

    path, seed, label, size = job
    Image.fromarray(synthetic_image(seed, label, size)).save(path, quality=90)


def write_images(folder: Path, plan: Plan) -> Path:
    """``folder/{train,val}/class_XX/NNNNN.jpg`` (an ImageNet-style tree)."""
    import concurrent.futures
    import multiprocessing

    jobs = []
    for split, count, offset in (("train", plan.train_images, 0), ("val", plan.val_images, 10**6)):
        for i in range(count):
            label = i % plan.classes
            path = folder / split / f"class_{label:02d}" / f"{i:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            jobs.append((str(path), offset + i, label, plan.image_size))
    if plan.cores > 1 and len(jobs) > 200:
        # fork: nothing here has touched CUDA or started loader threads yet
        with concurrent.futures.ProcessPoolExecutor(
                plan.cores, mp_context=multiprocessing.get_context("fork")) as pool:
            list(pool.map(_write_one, jobs, chunksize=32))
    else:
        for job in jobs:
            _write_one(job)
    return folder


# ----- a. the step ----------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_harness(model: torch.nn.Module, wrapped: torch.nn.Module, device: torch.device,
                 precision: str, batch: int) -> SimpleNamespace:
    """What ``ffcv_bt.train.pretrain.barlow_step`` takes, bundled (see project_step)."""
    from ffcv_bt.method.lars import LARS, param_groups_for_lars, set_learning_rates

    opt = LARS(param_groups_for_lars(model), lr=0.0, weight_decay=OPTIM.weight_decay,
                momentum=OPTIM.momentum, eta=OPTIM.eta)
    set_learning_rates(opt, batch / 256, OPTIM.lr_weights, OPTIM.lr_biases)  # the peak (after warmup)
    dtype = DTYPES[precision] if device.type == "cuda" else None
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return SimpleNamespace(recipe=SimpleNamespace(loss=LOSS), device=device, amp_dtype=dtype,
                           ddp_model=wrapped, optimizer=opt, scaler=scaler)


def repeated_batch(batch: int, res: int, device: torch.device, seed: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Two correlated 'views' (the second a flipped, noisier copy of the first)."""
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(batch, 3, res, res, generator=g)
    x2 = x1.flip(3) + 0.3 * torch.randn(batch, 3, res, res, generator=g)
    return x1.to(device), x2.to(device)


def run_steps(harness: SimpleNamespace, x1: torch.Tensor, x2: torch.Tensor, warmup: int,
              steps: int) -> dict[str, Any]:
    """``warmup`` untimed then ``steps`` timed calls of the project's step; losses kept on
    the device until the end (no per-step sync, as in training)."""

    device = harness.device
    losses = []
    start = time.perf_counter()
    for _ in range(warmup):
        losses.append(project_step(harness, x1, x2))
    sync(device)
    first_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        losses.append(project_step(harness, x1, x2))
    sync(device)
    seconds = time.perf_counter() - start
    values = [float(v) for v in torch.stack(losses).double().cpu()]
    finite = all(math.isfinite(v) for v in values)
    return {"images_per_s": x1.shape[0] * steps / seconds, "seconds_per_step": seconds / steps,
            "warmup_seconds": first_seconds, "losses": values, "finite": finite,
            "falling": finite and statistics.mean(values[-3:]) < values[0]}


def step_benchmark(plan: Plan, device: torch.device, compile_deadline: float = math.inf
                   ) -> list[dict[str, Any]]:
    """Every (resolution, channels_last, precision) eagerly, then torch.compile of the best
    eager setting at ``plan.compile_res`` (skipped once ``time.perf_counter()`` passes
    ``compile_deadline``: compiling takes minutes); one record per setting."""
    from ffcv_bt.method.model import BarlowTwins

    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as training sets it (fixed shapes per resolution)
    model = BarlowTwins(plan.arch, plan.projector, width=plan.width).to(device)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    records: list[dict[str, Any]] = []

    def measure(res: int, channels_last: bool, precision: str, compiled: bool) -> dict[str, Any]:
        record = {"res": res, "precision": precision, "channels_last": channels_last,
                  "compile": compiled}
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        try:
            model.to(memory_format=fmt)
            model.load_state_dict(initial)
            wrapped: torch.nn.Module = model
            if compiled:
                torch._dynamo.reset()
                wrapped = torch.compile(model, dynamic=False)
            harness = step_harness(model, wrapped, device, precision, plan.batch)
            x1, x2 = repeated_batch(plan.batch, res, device)
            x1, x2 = x1.contiguous(memory_format=fmt), x2.contiguous(memory_format=fmt)
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            record.update(run_steps(harness, x1, x2, plan.warmup, plan.steps))
            record["peak_memory_gib"] = (torch.cuda.max_memory_allocated(device) / 2**30
                                         if device.type == "cuda" else None)
        except torch.cuda.OutOfMemoryError:
            record["error"] = "out of memory"
        except Exception as exc:  # noqa: BLE001 - a variant that fails is reported, not fatal
            record["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        finally:
            harness = x1 = x2 = None  # noqa: F841 - free the optimiser state and inputs
            if device.type == "cuda":
                torch.cuda.empty_cache()
        line = (f"  step {res:>4} px {precision} {'channels_last' if channels_last else 'contiguous'}"
                f"{' compiled' if compiled else ''}: ")
        print(line + (f"{record['images_per_s']:,.1f} images/s, loss {record['losses'][0]:.4g} -> "
                      f"{record['losses'][-1]:.4g}" if "error" not in record else record["error"]),
              flush=True)
        return record

    for res in plan.resolutions:
        for channels_last in plan.channels_last:
            for precision in plan.precisions:
                records.append(measure(res, channels_last, precision, False))
    for res in plan.compile_res:
        eager = best_of([r for r in records if r["res"] == res])
        if time.perf_counter() > compile_deadline:
            print(f"  step {res:>4} px compiled: skipped (time budget)", flush=True)
        elif eager is not None:
            records.append(measure(res, eager["channels_last"], eager["precision"], True))
    torch._dynamo.reset()
    model = initial = None  # free the model before returning
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return records


def good(record: dict[str, Any]) -> bool:
    return "error" not in record and record["finite"]


def best_of(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    candidates = [r for r in records if good(r)]
    return max(candidates, key=lambda r: r["images_per_s"]) if candidates else None


# ----- b. torchrun ----------------------------------------------------------------------------
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
                    sync(device)
                    start = time.perf_counter()
                losses.append(project_step(harness, view1, view2))
                done += 1
                if done >= config["loader_steps"]:
                    break
            epoch += 1
        sync(device)
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


def project_step(harness: SimpleNamespace, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
    """The project's own pretraining step (ffcv_bt.train.pretrain.barlow_step) on the harness."""
    from ffcv_bt.train.step import barlow_step

    return barlow_step(harness.ddp_model, harness.optimizer, harness.scaler, harness.amp_dtype,
                       harness.recipe.loss, view1, view2)


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


# ----- c. the loader --------------------------------------------------------------------------
def loader_benchmark(loader: Any, resolutions: list[int], min_seconds: float) -> dict[str, float]:
    """Pairs/s of the FFCV two-view loader (uint8 pairs, no device work) per resolution:
    one untimed pass after each resolution change, then passes until ``min_seconds``."""
    rates = {}
    for res in resolutions:
        loader.set_resolution(res)
        for _ in loader.ffcv_loader:
            pass
        pairs, seconds, passes = 0, 0.0, 0
        while passes == 0 or (seconds < min_seconds and passes < 20):
            start = time.perf_counter()
            for batch in loader.ffcv_loader:
                pairs += batch[0].shape[0]
            seconds += time.perf_counter() - start
            passes += 1
        rates[res] = pairs / seconds
        print(f"  loader {res:>4} px: {rates[res]:,.0f} pairs/s with {loader_workers(loader)} "
              f"cores", flush=True)
    return rates


def device_augment_check(beton: Path, device: torch.device, resolutions: list[int],
                         batch: int, workers: int, min_seconds: float) -> dict[str, Any]:
    """``aug.device: gpu`` on this machine: its views against the numba path's (levels), the
    workers' pairs/s and the device-side ops' milliseconds per pair at each resolution."""
    from ffcv_bt.augment.device_augment import augment_views
    from ffcv_bt.config import load_recipe
    from ffcv_bt.data.normalize import IMAGENET_STD
    from ffcv_bt.data.pretrain_loader import AugmentationParams, make_pretrain_loader

    aug = AugmentationParams.from_config(load_recipe(BASE_RECIPE).aug)
    common = dict(batch_size_per_rank=batch, num_workers=workers, aug=aug,
                  res=resolutions[0], seed=0, device=device, order="sequential")
    numba_path = make_pretrain_loader(beton, augment_on="cpu", **common)
    device_path = make_pretrain_loader(beton, augment_on="gpu", **common)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    worst, compared = 0.0, 0
    for numba_batch, device_batch in zip(numba_path, device_path):
        for a, b in zip(numba_batch, device_batch):
            worst = max(worst, float(((a - b).abs() * std * 255).max()))
        compared += 1
        if compared == 3:
            break
    record: dict[str, Any] = {"max_level_difference_to_numba_path": worst,
                              "ok": worst <= 1.0, "workers_pairs_per_s": {}, "device_ms_per_pair": {}}
    for res in resolutions:
        device_path.set_resolution(res)
        for _ in device_path.ffcv_loader:  # untimed: reallocation after the change
            pass
        pairs, seconds, device_seconds = 0, 0.0, 0.0
        while pairs == 0 or seconds < min_seconds:
            start = time.perf_counter()
            for images, params in device_path.ffcv_loader:
                pairs += images.shape[0]
                seconds += time.perf_counter() - start
                on_device = images.to(device)
                sync(device)
                began = time.perf_counter()
                for v in range(2):
                    augment_views(on_device[:, v], params[:, v], aug.solarize_threshold)
                sync(device)
                device_seconds += time.perf_counter() - began
                start = time.perf_counter()
        record["workers_pairs_per_s"][str(res)] = pairs / seconds
        record["device_ms_per_pair"][str(res)] = 1000 * device_seconds / pairs
        print(f"  aug.device gpu {res:>4} px: workers {pairs / seconds:,.0f} pairs/s, device ops "
              f"{1000 * device_seconds / pairs:.3f} ms per pair", flush=True)
    print(f"  aug.device gpu vs cpu: views at most {worst:g} levels apart "
          f"({'ok' if record['ok'] else 'MISMATCH'})", flush=True)
    return record


def loader_workers(loader: Any) -> int:
    return int(loader.ffcv_loader.num_workers)


# ----- d. checkpoint and resume ---------------------------------------------------------------
def small_recipe(plan: Plan, data_dir: Path, **extra: Any):
    from ffcv_bt.config import load_recipe

    arch, width, projector = plan.ckpt_model
    cuda = plan.device == "cuda"
    overrides = {"data.dir": str(data_dir), "data.num_workers": plan.cores,
                 "resolution.min_res": plan.ckpt_res, "resolution.max_res": plan.ckpt_res,
                 "model.arch": arch, "model.width": width, "model.projector": projector,
                 "optim.batch_size": plan.ckpt_batch, "optim.epochs": 2, "optim.warmup_epochs": 1,
                 "train.max_steps_per_epoch": plan.ckpt_steps, "train.log_every": 1,
                 # deterministic algorithms exist on the CPU; on CUDA some backward kernels
                 # (adaptive average pooling) have none, so a GPU resume matches to tolerance
                 "train.deterministic": not cuda, "train.precision": "auto" if cuda else "fp32",
                 "train.channels_last": cuda, "eval.protocol": "smoke", "run.stages": "pretrain",
                 **extra}
    return load_recipe(BASE_RECIPE, overrides)


def _log_losses(out_dir: Path, epoch: int) -> list[float]:
    records = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines() if line]
    return [r["loss"] for r in records if r["epoch"] == epoch]


def checkpoint_check(plan: Plan, device: torch.device, data_dir: Path, work: Path
                     ) -> tuple[dict[str, Any], Any]:
    """Run A trains epoch 0, checkpoints, trains epoch 1; run B starts from A's epoch-0
    checkpoint in a fresh Pretrainer (fresh loader) and trains epoch 1. B's per-step
    losses and final weights must equal A's (exactly on a CPU; within AMP tolerance on a
    GPU). Returns the record and B's loader (reused by the loader benchmark)."""
    from ffcv_bt.distributed.process_group import DistInfo
    from ffcv_bt.train.pretrain import Pretrainer

    recipe = small_recipe(plan, data_dir)
    dist = DistInfo(device=device)
    run_a, run_b = work / "resume-a", work / "resume-b"
    a = Pretrainer(recipe, run_a, dist)
    run_a.mkdir(parents=True)
    with a.stop:
        a.train_epoch()  # epoch 0
        a.epoch = 1
        a.save_checkpoint()
        run_b.mkdir(parents=True)
        shutil.copy(a.ckpt_path, run_b / "checkpoint.pt")
        a.train_epoch()  # epoch 1
    b = Pretrainer(recipe, run_b, dist)
    resumed_at = (b.epoch, b.step)
    with b.stop:
        b.train_epoch()  # epoch 1, from the checkpoint
    uninterrupted, resumed = _log_losses(run_a, 1), _log_losses(run_b, 1)
    weight_diff = max(float((pa.detach() - pb.detach()).abs().max())
                      for pa, pb in zip(a.model.parameters(), b.model.parameters()))
    rel = max((abs(x - y) / max(abs(x), 1e-12) for x, y in zip(uninterrupted, resumed)),
              default=math.inf)
    exact = device.type == "cpu"
    tolerance = 0.0 if exact else 2e-2
    record = {"precision": recipe.train.precision, "resumed_at_epoch_step": list(resumed_at),
              "epoch0_losses": _log_losses(run_a, 0), "losses_uninterrupted": uninterrupted,
              "losses_resumed": resumed, "max_relative_difference": rel,
              "max_weight_difference": weight_diff, "tolerance": tolerance,
              "ok": (len(resumed) == len(uninterrupted) == plan.ckpt_steps
                     and resumed_at == (1, plan.ckpt_steps) and rel <= tolerance
                     and (weight_diff == 0.0 or not exact))}
    print(f"  resume: uninterrupted {[f'{v:.6g}' for v in uninterrupted]}\n"
          f"          resumed       {[f'{v:.6g}' for v in resumed]}  "
          f"(max rel. difference {rel:.2e}, {'ok' if record['ok'] else 'MISMATCH'})", flush=True)
    del a
    return record, b.train_loader


# ----- e. frozen features: fp32 against bf16 -------------------------------------------------
@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 for matmuls and cuDNN on (True) or off (False, true fp32 as the reference
    evaluates), restored afterwards."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def feature_differences(f32: torch.Tensor, other: torch.Tensor) -> dict[str, Any]:
    """How far ``other`` features are from the fp32 ones: the max |diff| over the max |f|,
    and the max relative difference where |f| is at least 1% of the max."""
    diff = (other - f32).abs()
    big = f32.abs() >= 0.01 * f32.abs().max()
    return {"features_max_abs_diff_over_max_abs": float(diff.max() / f32.abs().max()),
            "features_max_relative_diff": float((diff[big] / f32.abs()[big]).max()),
            "features_compared": int(big.sum())}


# ----- e. linear probe ------------------------------------------------------------------------
def linear_probe_check(plan: Plan, device: torch.device, data_dir: Path, work: Path
                       ) -> dict[str, Any]:
    """One linear-probe epoch through ffcv_bt.evaluation.trained (random-init backbone of the benchmark
    architecture), a second epoch timed for images/s, and fp32 vs bf16 frozen features."""
    from ffcv_bt.distributed.process_group import DistInfo
    from ffcv_bt.evaluation.trained import Evaluation

    recipe = small_recipe(plan, data_dir, **{
        "model.arch": plan.arch, "model.width": plan.width, "model.projector": plan.projector,
        "eval.protocol": "standard", **plan.eval_overrides})
    ev = Evaluation(recipe, "linear", "random", work / "linear", DistInfo(device=device))
    ev.out_dir.mkdir(parents=True)
    start = time.perf_counter()
    ev.run_epoch()  # train (loader JIT included), validate, frozen check, checkpoint
    first_epoch = time.perf_counter() - start
    sync(device)
    start = time.perf_counter()
    ev.train_epoch()
    sync(device)
    seconds = time.perf_counter() - start
    images = len(ev.train_loader) * ev.settings.batch_size
    first = None
    for batch, _ in ev.val_loader:  # a whole pass: never leave an FFCV epoch half-read
        if first is None:
            first = batch.clone()
    backbone = ev.model.backbone.eval()
    with torch.no_grad():
        with tf32(False):
            f32 = backbone(first).float()
        with tf32(True):
            f_tf32 = backbone(first).float()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                bf16 = backbone(first).float()
    record = {"protocol": "linear", "res": ev.settings.res, "batch": ev.settings.batch_size,
              "precision": ev.settings.precision, "first_epoch_seconds": first_epoch,
              "images_per_s": images / seconds, "top1_after_one_epoch": ev.history[-1]["top1"],
              "train_loss": ev.history[-1]["train_loss"], **feature_differences(f32, bf16),
              "features_tf32_max_abs_diff_over_max_abs": float((f_tf32 - f32).abs().max()
                                                               / f32.abs().max())}
    record["ok"] = (math.isfinite(record["train_loss"])
                    and record["features_max_abs_diff_over_max_abs"] < 0.1)
    print(f"  linear probe: {record['images_per_s']:,.0f} images/s at {record['res']} px, "
          f"fp32 vs bf16 features: max |diff| / max |f| = "
          f"{record['features_max_abs_diff_over_max_abs']:.2e}", flush=True)
    return record


# ----- torch-only phases (no ffcv needed) ------------------------------------------------------
def ffcv_status() -> tuple[bool, str]:
    """Whether the loader phases can run: ffcv imports (else why not)."""
    try:
        import ffcv  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means: skip the loader phases
        return False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return True, ""


def torch_checkpoint_check(plan: Plan, device: torch.device, work: Path) -> dict[str, Any]:
    """A checkpoint written and resumed on the device without the loader: run A steps k
    times, saves model + LARS state with the project's checkpoint writer, steps k more;
    run B loads that file into a fresh model and optimizer and steps the same k. Losses and
    weights must match (exactly on a CPU, within AMP tolerance on a GPU)."""
    from ffcv_bt.method.model import BarlowTwins
    from ffcv_bt.stage.checkpoints import load_checkpoint, save_checkpoint

    arch, width, projector = plan.ckpt_model
    precision = "bf16" if device.type == "cuda" else "fp32"
    x1, x2 = repeated_batch(plan.ckpt_batch, plan.ckpt_res, device)

    def fresh() -> tuple[torch.nn.Module, SimpleNamespace]:
        torch.manual_seed(0)
        model = BarlowTwins(arch, projector, width=width).to(device)
        return model, step_harness(model, model, device, precision, plan.ckpt_batch)

    model_a, a = fresh()
    for _ in range(plan.ckpt_steps):
        project_step(a, x1, x2)
    path = work / "torch-resume" / "checkpoint.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"model": model_a.state_dict(), "optimizer": a.optimizer.state_dict()})
    uninterrupted = [float(project_step(a, x1, x2)) for _ in range(plan.ckpt_steps)]
    model_b, b = fresh()
    state = load_checkpoint(path)
    model_b.load_state_dict(state["model"])
    b.optimizer.load_state_dict(state["optimizer"])
    resumed = [float(project_step(b, x1, x2)) for _ in range(plan.ckpt_steps)]
    weight_diff = max(float((pa.detach() - pb.detach()).abs().max())
                      for pa, pb in zip(model_a.parameters(), model_b.parameters()))
    rel = max(abs(u - r) / max(abs(u), 1e-12) for u, r in zip(uninterrupted, resumed))
    exact = device.type == "cpu"
    record = {"precision": precision, "losses_uninterrupted": uninterrupted,
              "losses_resumed": resumed, "max_relative_difference": rel,
              "max_weight_difference": weight_diff, "tolerance": 0.0 if exact else 2e-2,
              "ok": rel <= (0.0 if exact else 2e-2) and (weight_diff == 0.0 or not exact)}
    print(f"  torch-only resume: max rel. loss difference {rel:.2e}, max weight difference "
          f"{weight_diff:.2e} ({'ok' if record['ok'] else 'MISMATCH'})", flush=True)
    return record


def frozen_forward_check(plan: Plan, device: torch.device) -> dict[str, Any]:
    """The frozen evaluation forward of the benchmark backbone (eval mode): images/s in true
    fp32 (TF32 off, as the reference), and the bf16 features' difference to fp32."""
    from ffcv_bt.method.model import BarlowTwins

    res = plan.eval_overrides.get("linear.res", 224)
    batch = plan.ckpt_batch if device.type == "cpu" else 256
    torch.manual_seed(0)
    backbone = BarlowTwins(plan.arch, plan.projector, width=plan.width).backbone.to(device).eval()
    x = torch.randn(batch, 3, res, res, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad(), tf32(False):
        f32 = backbone(x).float()
        sync(device)
        start, passes = time.perf_counter(), 3
        for _ in range(passes):
            backbone(x)
        sync(device)
        seconds = time.perf_counter() - start
        with torch.autocast(device.type, dtype=torch.bfloat16):
            bf16 = backbone(x).float()
    record = {"res": res, "batch": batch, "fp32_images_per_s": batch * passes / seconds,
              **feature_differences(f32, bf16)}
    record["ok"] = bool(math.isfinite(record["fp32_images_per_s"])
                        and record["features_max_abs_diff_over_max_abs"] < 0.1)
    print(f"  frozen forward fp32: {record['fp32_images_per_s']:,.0f} images/s at {res} px; bf16 vs "
          f"fp32 max |diff| / max |f| = {record['features_max_abs_diff_over_max_abs']:.2e}", flush=True)
    return record


# ----- f. report ------------------------------------------------------------------------------
def device_info(device: torch.device) -> dict[str, Any]:
    from ffcv_bt.stage.provenance import device_description

    name = device_description(device)["device"]
    capability = None
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        capability = f"{major}.{minor}"
    return {"device": name, "device_type": device.type, "capability": capability,
            "torch": torch.__version__, "cuda": torch.version.cuda or "none"}


def build_profile(plan: Plan, device: torch.device, argv: list[str], steps: list[dict],
                  loader_rates: dict[int, float] | None, workers: int | None,
                  checks: dict[str, Any], eval_rate: float | None) -> dict[str, Any]:
    """The device file's content from what has been measured so far (``loader`` null while
    the loader is unmeasured or skipped)."""
    from ffcv_bt.reporting import device_profile

    # The estimate uses what training runs: eager (train.compile is off by default and always
    # off under DDP), cudnn.benchmark on; the compiled rate is kept beside it.
    pretrain = {}
    for res in plan.resolutions:
        eager = best_of([r for r in steps if r["res"] == res and not r["compile"]])
        compiled = best_of([r for r in steps if r["res"] == res and r["compile"]])
        if eager is not None:
            pretrain[str(res)] = {k: eager[k] for k in ("images_per_s", "precision",
                                                        "channels_last", "compile",
                                                        "peak_memory_gib")}
            pretrain[str(res)]["compiled_images_per_s"] = compiled["images_per_s"] if compiled else None
    profile = {
        "format": device_profile.FORMAT, **device_info(device),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": " ".join(["python -m bench.gpu_check", *argv]),
        "model": {"arch": plan.arch, "width": plan.width, "projector": plan.projector,
                  "batch_per_device": plan.batch},
        "pretrain": pretrain, "eval_images_per_s": eval_rate or math.nan,
        "loader": None, "partial": checks.get("partial", True), "checks": checks,
    }
    if loader_rates and workers:
        gpu_aug = checks.get("device_augment", {}).get("workers_pairs_per_s", {})
        profile["loader"] = {
            "cores": workers, "pairs_per_s": {str(r): v for r, v in loader_rates.items()},
            "pairs_per_s_per_core": {str(r): v / workers for r, v in loader_rates.items()},
            **({"gpu_aug_pairs_per_s_per_core": {r: v / workers for r, v in gpu_aug.items()}}
               if gpu_aug else {})}
    return profile


def print_table(profile: dict[str, Any], steps: list[dict]) -> None:
    from ffcv_bt.reporting import device_profile

    print(f"\n# {profile['device']} (capability {profile['capability']}), torch "
          f"{profile['torch']}, CUDA {profile['cuda']}; {profile['model']['arch']} projector "
          f"{profile['model']['projector']}, batch {profile['model']['batch_per_device']} per device")
    print(f"{'res':>5} {'precision':>9} {'format':>13} {'compile':>7} {'images/s':>10} "
          f"{'peak GiB':>8} {'loss first->last':>22} {'falling':>7}")
    for r in steps:
        fmt = "channels_last" if r["channels_last"] else "contiguous"
        if "error" in r:
            print(f"{r['res']:>5} {r['precision']:>9} {fmt:>13} {str(r['compile']):>7} "
                  f"{r['error']}")
            continue
        mem = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "-"
        print(f"{r['res']:>5} {r['precision']:>9} {fmt:>13} {str(r['compile']):>7} "
              f"{r['images_per_s']:>10,.1f} {mem:>8} {r['losses'][0]:>10.4g}->{r['losses'][-1]:<10.4g} "
              f"{str(r['falling']):>7}")
    loader = profile["loader"]
    checks = profile["checks"]
    if loader is None:
        print(f"\nloader: not measured ({checks.get('loader_phases')})")
    else:
        print(f"\n{'res':>5} {'best images/s':>14} {'loader pairs/s':>15} {'per core':>9} "
              f"{'loader cores/GPU':>17}")
        for res, entry in profile["pretrain"].items():
            print(f"{res:>5} {entry['images_per_s']:>14,.1f} {loader['pairs_per_s'][res]:>15,.0f} "
                  f"{loader['pairs_per_s_per_core'][res]:>9,.1f} "
                  f"{device_profile.loader_cores_needed(profile, int(res)):>17.2f}")
    ddp = checks["torchrun"]
    if "error" in ddp:
        print(f"\ntorchrun: FAILED (exit {ddp['returncode']}):\n{ddp['error']}")
    else:
        print(f"\ntorchrun x{ddp['world_size']} ({ddp['backend']}, {ddp['batch_norm']}, "
              f"{ddp['ddp']}): {ddp['images_per_s']:,.1f} images/s per device at {ddp['res']} px, "
              f"losses finite {ddp['finite']}"
              + (f"; with the FFCV loader {ddp['images_per_s_with_loader']:,.1f} images/s"
                 if ddp.get("images_per_s_with_loader") else ""))
        for rank in ddp["ranks"]:
            mem = f"{rank['peak_memory_gib']:.1f} GiB" if rank["peak_memory_gib"] is not None else "-"
            print(f"  rank {rank['rank']} pid {rank['pid']} on {rank['device']}: peak {mem}")
        procs = ddp.get("gpu_processes") or {}
        for row in procs.get("rows", []):
            print(f"  nvidia-smi: pid {row['pid']} on GPU {row['gpu']}: {row['used_mib']} MiB")
        if procs.get("note") or procs.get("error"):
            print(f"  nvidia-smi: {procs.get('note') or procs.get('error')}")
    if not ddp.get("cross_rank_paths_exercised", True):
        print("  1 rank: SyncBatchNorm and every collective are identities; cross-rank paths "
              "not exercised")
    torch_resume = checks["checkpoint_resume_torch"]
    print(f"checkpoint resume, torch only ({torch_resume['precision']}): max relative loss "
          f"difference {torch_resume['max_relative_difference']:.2e}: "
          f"{'ok' if torch_resume['ok'] else 'FAILED'}")
    frozen = checks["frozen_forward"]
    print(f"frozen forward fp32: {frozen['fp32_images_per_s']:,.0f} images/s at {frozen['res']} px; "
          f"bf16 vs fp32 max |diff|/max|f| {frozen['features_max_abs_diff_over_max_abs']:.2e}")
    if "checkpoint_resume" not in checks:
        return
    resume = checks["checkpoint_resume"]
    print(f"checkpoint resume ({resume['precision']}): max relative loss difference "
          f"{resume['max_relative_difference']:.2e} (tolerance {resume['tolerance']:g}), max weight "
          f"difference {resume['max_weight_difference']:.2e}: {'ok' if resume['ok'] else 'FAILED'}")
    augment = checks["device_augment"]
    print(f"aug.device gpu: views at most {augment['max_level_difference_to_numba_path']:g} levels "
          f"from the numba path ({'ok' if augment['ok'] else 'FAILED'}); device ops ms per pair "
          + ", ".join(f"{res} px {ms:.3f}" for res, ms in augment["device_ms_per_pair"].items()))
    lin = checks["linear_probe"]
    print(f"linear probe epoch: {lin['images_per_s']:,.0f} images/s at {lin['res']} px "
          f"({lin['precision']}); fp32 vs bf16 frozen features: max |diff|/max|f| "
          f"{lin['features_max_abs_diff_over_max_abs']:.2e}, max relative "
          f"{lin['features_max_relative_diff']:.2e}")


def cuda_or_explain(asked: str | None) -> torch.device:
    """The device to measure. Without --device: CUDA when torch sees it; a machine with an
    NVIDIA driver whose CUDA torch cannot use (driver too old for torch's CUDA build) is an
    error naming both, not a silent hours-long CPU run."""
    if asked == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", 0)
    from ffcv_bt.distributed.process_group import nvidia_driver_version

    driver = nvidia_driver_version()
    if asked == "cuda" or driver:
        raise SystemExit(f"error: torch {torch.__version__} (CUDA build {torch.version.cuda or 'none'}) "
                         f"sees no usable CUDA device; NVIDIA driver: {driver or 'not found'}. "
                         f"Install a torch build for this driver, or pass --device cpu")
    return torch.device("cpu")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None,
                        help="default: cuda when available (an unusable NVIDIA driver is an error)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny model and data: the same code paths in ~1-2 minutes")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for <slug>.json (default: results/devices on a GPU, a "
                             "temporary folder on a CPU); the file is rewritten after every "
                             "phase, marked partial until the last")
    parser.add_argument("--images", type=int, default=3000, help="training JPEGs to generate "
                        "(scaled with the torchrun ranks for the with-loader rate)")
    parser.add_argument("--batch", type=int, default=256, help="per-device batch (full mode)")
    parser.add_argument("--batch-override", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--ddp-nproc", type=int, default=0,
                        help="torchrun processes for b (default: this node's GPU count, 1 on a CPU)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--ddp-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ddp_worker is not None:
        ddp_worker(json.loads(args.ddp_worker))
        return 0
    device = cuda_or_explain(args.device)
    args.device = device.type
    if args.ddp_nproc <= 0:
        args.ddp_nproc = max(1, torch.cuda.device_count()) if device.type == "cuda" else 1
    args.images = args.images * max(1, args.ddp_nproc)
    plan = make_plan(args)
    plan.resolutions = sorted(plan.resolutions, reverse=True)  # most valuable first: 224, 192, 160
    started = time.perf_counter()
    loader_ok, loader_why = ffcv_status()
    from ffcv_bt.reporting import device_profile

    def phase(name: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {name}", flush=True)

    folder = args.out or (device_profile.DEVICES_DIR if device.type == "cuda"
                          else Path(tempfile.mkdtemp(prefix="ffcv-bt-device-")))
    checks: dict[str, Any] = {"ok": False, "partial": True, "steps": [],
                              "images": {"train": plan.train_images, "val": plan.val_images},
                              "plan": asdict(plan),
                              "loader_phases": "run" if loader_ok else f"skipped: {loader_why}"}
    measured: dict[str, Any] = {"loader_rates": None, "workers": None, "eval_rate": None}

    def save() -> Path:
        """The device file as far as measured (``partial`` until the end); before it holds
        every rate a device file needs, the figures go to <slug>.partial.json instead."""
        checks["elapsed_seconds"] = time.perf_counter() - started
        profile = build_profile(plan, device, argv, checks["steps"], measured["loader_rates"],
                                measured["workers"], checks, measured["eval_rate"])
        path = device_profile.device_file(profile["device"], folder)
        partial = path.with_suffix(".partial.json")
        try:
            written = device_profile.write(path, profile)
            partial.unlink(missing_ok=True)  # superseded by the device file
            return written
        except ValueError:
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(profile, indent=2, default=str))
            return partial

    if device.type == "cpu":
        from ffcv_bt.distributed.process_group import set_cpu_compute_threads

        # cores - 1, as in training: with every core busy (a shared machine), torch's
        # OpenMP barriers wait on descheduled threads (measured 20x slower on 2 cores)
        set_cpu_compute_threads()
    else:
        torch.cuda.set_device(device)
    work = Path(tempfile.mkdtemp(prefix="ffcv-bt-gpu-check-"))
    try:
        phase("a. pretraining steps (torch only)")
        checks["steps"] = step_benchmark(plan, device, compile_deadline=started + 240)
        save()
        phase("d. checkpoint written and resumed on the device (torch only)")
        checks["checkpoint_resume_torch"] = torch_checkpoint_check(plan, device, work)
        phase("e. frozen evaluation forward, fp32 vs bf16 (torch only)")
        checks["frozen_forward"] = frozen_forward_check(plan, device)
        measured["eval_rate"] = checks["frozen_forward"]["fp32_images_per_s"]
        save()
        best = best_of([r for r in checks["steps"] if r["res"] == max(plan.resolutions)])
        beton = work / "data" / "train.beton"
        if loader_ok:
            phase(f"writing {plan.train_images} + {plan.val_images} JPEGs into {work}")
            write_images(work / "images", plan)
            from ffcv_bt.data.write import write_dataset

            write_dataset(work / "images", work / "data", num_workers=plan.cores)
        else:
            print(f"  loader phases skipped (ffcv not importable: {loader_why})", flush=True)
            plan.ddp_loader_steps = 0
        phase("b. torchrun" + ("" if plan.ddp_nproc > 1 else
                               " (1 rank: cross-rank paths not exercised)"))
        checks["torchrun"] = (torchrun_check(plan, best, beton, work) if best
                              else {"error": "no working step setting", "returncode": None})
        checks["torchrun"]["cross_rank_paths_exercised"] = plan.ddp_nproc > 1
        save()
        if loader_ok:
            phase("d. checkpoint and resume (Pretrainer with the FFCV loader)")
            checks["checkpoint_resume"], loader = checkpoint_check(plan, device, work / "data", work)
            phase("c. loader")
            measured["loader_rates"] = loader_benchmark(loader, plan.resolutions, plan.loader_min_seconds)
            measured["workers"] = loader_workers(loader)
            del loader
            checks["device_augment"] = device_augment_check(
                beton, device, plan.resolutions, plan.ckpt_batch, measured["workers"],
                plan.loader_min_seconds)
            save()
            phase("e. linear probe (FFCV loader)")
            checks["linear_probe"] = linear_probe_check(plan, device, work / "data", work)
            measured["eval_rate"] = checks["linear_probe"]["images_per_s"]
        bests = [best_of([r for r in checks["steps"] if r["res"] == res]) for res in plan.resolutions]
        parts = [checks.get(k, {"ok": True}) for k in ("checkpoint_resume", "device_augment",
                                                      "linear_probe")]
        ddp = checks["torchrun"]
        checks["ok"] = bool(all(b is not None and b["falling"] for b in bests)
                            and "error" not in ddp and ddp.get("finite", False)
                            and checks["checkpoint_resume_torch"]["ok"]
                            and checks["frozen_forward"]["ok"] and all(p["ok"] for p in parts))
        checks["partial"] = False
        path = save()
        print_table(device_profile.load(path), checks["steps"])
        phase(f"device file {path} ({'all checks passed' if checks['ok'] else 'SOME CHECKS FAILED'})")
        return 0 if checks["ok"] else 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
