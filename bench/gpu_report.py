"""The GPU check's part f: the device file's content (format:
ffcv_bt.reporting.device_profile) from what has been measured, and the table printed at
the end."""
from __future__ import annotations

import math
import time
from typing import Any

import torch

from bench.gpu_plan import BASE_RECIPE, Plan
from bench.train_step import best_of


def device_info(device: torch.device) -> dict[str, Any]:
    from ffcv_bt.stage.provenance import device_description

    name = device_description(device)["device"]
    capability = None
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        capability = f"{major}.{minor}"
    return {"device": name, "device_type": device.type, "capability": capability,
            "torch": torch.__version__, "cuda": torch.version.cuda or "none"}


def recipe_setting(device: torch.device) -> dict[str, Any]:
    """The step setting a run of base.yaml trains with on ``device``: its precision (auto:
    bf16 from capability 8.0, else fp16; fp32 on a CPU), channels_last (GPU only), eager."""
    from ffcv_bt.config import load_recipe
    from ffcv_bt.stage.mixed_precision import autocast_dtype

    train = load_recipe(BASE_RECIPE).train
    dtype = autocast_dtype(train.precision, device)
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    return {"precision": precision, "channels_last": bool(train.channels_last) and device.type == "cuda",
            "compile": bool(train.compile)}


def recipe_row(rows: list[dict], device: torch.device) -> tuple[dict | None, str]:
    """The measured step in the recipe's setting, or (if it failed) the fastest eager one;
    and which of the two it is."""
    setting = recipe_setting(device)
    row = best_of([r for r in rows if all(r[k] == v for k, v in setting.items())])
    if row is not None:
        return row, "recipe"
    return best_of([r for r in rows if not r["compile"]]), "fastest eager (the recipe's failed)"


def ddp_factor(steps: list[dict], checks: dict[str, Any]) -> float | None:
    """The torchrun step's rate (SyncBatchNorm, DDP, several ranks) over the single-process
    rate of the same setting and resolution; None when torchrun did not cross ranks."""
    ddp = checks.get("torchrun") or {}
    if "error" in ddp or not ddp.get("cross_rank_paths_exercised") or not ddp.get("images_per_s"):
        return None
    same = best_of([r for r in steps if r["res"] == ddp.get("res") and not r["compile"]
                    and r["precision"] == ddp.get("precision")
                    and r["channels_last"] == ddp.get("channels_last")])
    return ddp["images_per_s"] / same["images_per_s"] if same else None


def build_profile(plan: Plan, device: torch.device, argv: list[str], steps: list[dict],
                  loader_rates: dict[int, float] | None, workers: int | None,
                  checks: dict[str, Any], eval_rate: float | None) -> dict[str, Any]:
    """The device file's content from what has been measured so far (``loader`` null while
    the loader is unmeasured or skipped)."""
    from ffcv_bt.reporting import device_profile

    # The estimate uses what a run trains with: the recipe's setting (not the fastest one;
    # train.compile is off by default and always off under DDP), cudnn.benchmark on, and,
    # when torchrun crossed ranks, its SyncBatchNorm + DDP cost (the ratio measured at its
    # resolution, applied to every one). The single-process and compiled rates stay beside it.
    factor = ddp_factor(steps, checks)
    pretrain = {}
    for res in plan.resolutions:
        row, chosen = recipe_row([r for r in steps if r["res"] == res], device)
        compiled = best_of([r for r in steps if r["res"] == res and r["compile"]])
        if row is not None:
            pretrain[str(res)] = {k: row[k] for k in ("images_per_s", "precision",
                                                      "channels_last", "compile",
                                                      "peak_memory_gib")}
            pretrain[str(res)].update(
                setting=chosen, single_process_images_per_s=row["images_per_s"],
                ddp_factor=factor, compiled_images_per_s=compiled["images_per_s"] if compiled else None)
            if factor is not None:
                pretrain[str(res)]["images_per_s"] = row["images_per_s"] * factor
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
    jit = checks.get("jit_compiles")
    if jit:
        print(f"numba compilations in this process: {jit['compiles']} ({jit['nested_compiles']} "
              f"nested), {jit['seconds']:.1f} s")
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
