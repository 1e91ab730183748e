"""The reference recipe (rules/base.yaml) for the bench scripts, loaded like any recipe, so
that each value is stated once."""
from __future__ import annotations

from ffcv_bt.config import Section, load_recipe
from ffcv_bt.paths import RULES_DIR

REFERENCE = load_recipe(RULES_DIR / "base.yaml")
LAMBD: float = REFERENCE.loss.lambd
OPTIM: Section = REFERENCE.optim
