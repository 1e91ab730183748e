"""Where the repository's folders are (no dependencies: the GPU check imports it on nodes
without fastargs)."""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = REPO_ROOT / "rules"
