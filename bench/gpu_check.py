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
  f. a table, and ``results/devices/<gpu name slug>.json`` (format: ffcv_bt.reporting.device_profile),
     whose ``checks.jit_compiles`` counts this process's numba compilations (FFCV pipelines;
     torchrun's ranks compile their own) and their seconds (bench.jit_compiles).

    python -m bench.gpu_check                      # a CUDA GPU -> results/devices/<slug>.json
    python -m bench.gpu_check --device cpu --quick # the same code paths on a CPU, tiny sizes,
                                                   # device file in a temporary folder
    python -m bench.gpu_check --ddp-nproc 8        # torchrun over 8 GPUs for part b

Exit status 0 when every check passed, 1 otherwise (the device file is written either way,
with ``checks.ok``).

This module orders the phases and keeps the device file current; the measurements live
with the benchmarks: the step in bench.train_step, torchrun in bench.ddp_step, the loader in
bench.loader, the resume checks in bench.resume_checks, frozen features in
bench.frozen_features, the images in bench.synthetic_images, the sizes in bench.gpu_plan
and the device file's content and the table in bench.gpu_report.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from bench.ddp_step import ddp_worker, torchrun_check
from bench.frozen_features import frozen_forward_check, linear_probe_check
from bench.gpu_plan import make_plan
from bench.gpu_report import build_profile, print_table, recipe_row
from bench.jit_compiles import CompileLog
from bench.resume_checks import checkpoint_check, torch_checkpoint_check
from bench.train_step import best_of, step_benchmark


def ffcv_status() -> tuple[bool, str]:
    """Whether the loader phases can run: ffcv imports (else why not)."""
    try:
        import ffcv  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means: skip the loader phases
        return False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return True, ""


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
    compile_log = CompileLog()

    def save() -> Path:
        """The device file as far as measured (``partial`` until the end); before it holds
        every rate a device file needs, the figures go to <slug>.partial.json instead."""
        checks["elapsed_seconds"] = time.perf_counter() - started
        checks["jit_compiles"] = compile_log.summary()
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
    listening = contextlib.ExitStack()
    listening.enter_context(compile_log.install())
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
        # torchrun runs the step in the recipe's setting: its rate is what a run gets
        best, _ = recipe_row([r for r in checks["steps"] if r["res"] == max(plan.resolutions)],
                             device)
        beton = work / "data" / "train.beton"
        if loader_ok:
            phase(f"writing {plan.train_images} + {plan.val_images} JPEGs into {work}")
            from bench.synthetic_images import write_class_images
            from ffcv_bt.data.write import write_dataset

            write_class_images(work / "images", plan.train_images, plan.val_images, plan.classes,
                               plan.image_size, plan.cores)

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
            from bench.loader import device_augment_check, loader_benchmark, loader_workers

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
        listening.close()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
