"""Patch the installed ffcv 1.0.2 so that importing it does not compile numba code.

``ffcv/fields/rgb_image.py`` builds a two-entry constant table, ``IMAGE_MODES`` ({'jpg': 0,
'raw': 1}), as a ``numba.typed.Dict`` at import time. Filling a typed dict compiles its
methods, uncached: ~11 s per process on a 2-core CPU (28 s under load), paid by every
process that imports ffcv (each DDP rank, each test subprocess). The table is only read
from Python (``IMAGE_MODES['jpg']`` outside the jitted code), so a plain dict is
equivalent. Idempotent; leaves any other ffcv version alone. Run by ``make`` after pip.

Usage: python install/patch_ffcv.py
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ORIGINAL = "IMAGE_MODES = Dict()\nIMAGE_MODES['jpg'] = 0\nIMAGE_MODES['raw'] = 1\n"
PATCHED = ("IMAGE_MODES = {'jpg': 0, 'raw': 1}  # ffcv-bt: a plain dict, no numba compile at "
           "import (install/patch_ffcv.py)\n")


def patch(path: Path) -> str:
    """Patch ``path`` (ffcv/fields/rgb_image.py); say what was done."""
    text = path.read_text()
    if PATCHED in text:
        return f"{path}: already patched"
    if ORIGINAL not in text:
        return f"{path}: IMAGE_MODES not as in ffcv 1.0.2; left alone"
    path.write_text(text.replace(ORIGINAL, PATCHED))
    return f"{path}: IMAGE_MODES is a plain dict (import no longer compiles numba)"


def main() -> int:
    spec = importlib.util.find_spec("ffcv")  # locates the package without importing it
    if spec is None or spec.origin is None:
        print("ffcv is not installed: nothing to patch")
        return 0
    print(patch(Path(spec.origin).parent / "fields" / "rgb_image.py"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
