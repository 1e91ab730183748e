"""Tiny recipes for end-to-end tests, written next to a test's dataset."""
from __future__ import annotations

from pathlib import Path

from ffcv_bt.config import RULES_DIR


def write_tiny_recipe(folder: Path, data_dir: Path, epochs: int = 2, extra: str = "") -> Path:
    """A recipe over ``data_dir`` small enough for a 2-core CPU in seconds per epoch."""
    path = folder / "tiny.yaml"
    path.write_text(f"""extends: {RULES_DIR / 'base.yaml'}
data: {{dir: {data_dir}, num_workers: 2, in_memory: true}}
resolution: {{min_res: 16, max_res: 16}}
model: {{arch: resnet18, width: 4, small_stem: true, projector: 64-64}}
optim: {{batch_size: 16, epochs: {epochs}, warmup_epochs: 1, lr_weights: 0.2}}
train: {{log_every: 1, deterministic: true, precision: fp32}}
eval: {{protocol: smoke, control: true}}
{extra}""")
    return path
