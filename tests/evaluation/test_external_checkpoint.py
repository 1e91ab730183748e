"""A published checkpoint (a torchvision ResNet state dict with its fc layer, as the released
Barlow Twins ResNet-50 file) evaluated through the real command and recorded in results/
as an "external" row with no pretraining cost."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from recipes import write_tiny_recipe

from ffcv_bt.method.model import build_backbone

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_external_checkpoint_lands_in_results(tiny_dataset: Path, tmp_path: Path) -> None:
    backbone, dim = build_backbone("resnet18", width=4, small_stem=True)
    state = {f"module.{k}": v for k, v in backbone.state_dict().items()}  # as saved under DDP
    state["module.fc.weight"], state["module.fc.bias"] = torch.zeros(1000, dim), torch.zeros(1000)
    weights = tmp_path / "released.pth"
    torch.save(state, weights)
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "ffcv_bt.evaluation", "--config",
         str(write_tiny_recipe(tmp_path, tiny_dataset)), "--protocol", "knn", "--weights",
         str(weights), "--out", str(tmp_path / "eval"), "--record", "--results-dir", str(results)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = pd.read_csv(results / "runs.csv")
    assert len(runs) == 1
    row = runs.iloc[0]
    assert (row.backbone, row.protocol, row.epochs, row.pretrain_gpu_hours) == ("external", "knn", 0, 0)
    assert row.eval_gpu_hours > 0 and 0 <= row.top1 <= 100 and row.dataset_classes == 10
    assert "external" in (results / "README.md").read_text()
