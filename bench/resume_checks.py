"""The GPU check's part d: a checkpoint written and resumed must continue exactly (on a CPU)
or within AMP tolerance (on a GPU). Two checks: the project's Pretrainer with the FFCV
loader, and torch only (model and LARS state through the project's checkpoint writer), which
runs where ffcv does not import."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from bench.gpu_plan import Plan, small_recipe
from bench.train_step import project_step, repeated_batch, step_harness


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
