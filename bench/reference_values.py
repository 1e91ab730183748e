"""The reference recipe's values for the bench scripts, read from rules/base.yaml with plain
YAML (no fastargs: bench/gpu_check.py runs on nodes without it), so each is stated once."""
from __future__ import annotations

from pathlib import Path

import yaml

BASE_RECIPE = Path(__file__).resolve().parent.parent / "rules" / "base.yaml"
REFERENCE = yaml.safe_load(BASE_RECIPE.read_text())
LAMBD: float = REFERENCE["loss"]["lambd"]
OPTIM: dict = REFERENCE["optim"]
