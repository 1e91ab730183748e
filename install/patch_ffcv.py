"""Patch ffcv 1.0.2's Python sources: the installed package, or an unpacked sdist (the wheel build).

- ``ffcv/fields/rgb_image.py`` builds a two-entry constant table, ``IMAGE_MODES`` ({'jpg': 0,
  'raw': 1}), as a ``numba.typed.Dict`` at import time. Filling a typed dict compiles its
  methods, uncached: ~11 s per process on a 2-core CPU (28 s under load), paid by every
  process that imports ffcv (each DDP rank, each test subprocess). The table is only read
  from Python (``IMAGE_MODES['jpg']`` outside the jitted code), so a plain dict is equivalent.
- ``ffcv/pipeline/graph.py`` line 1 imports ``warn`` from ``distutils.log``, which Python 3.12
  no longer ships (without setuptools): the name is unused there, ``warnings.warn`` replaces it.

Idempotent; leaves any other ffcv version alone. Run by ``make`` after pip, and by
``install/build_ffcv_wheel.py`` on the sdist's sources.

Usage: python install/patch_ffcv.py
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ORIGINAL = "IMAGE_MODES = Dict()\nIMAGE_MODES['jpg'] = 0\nIMAGE_MODES['raw'] = 1\n"
PATCHED = ("IMAGE_MODES = {'jpg': 0, 'raw': 1}  # ffcv-bt: a plain dict, no numba compile at "
           "import (install/patch_ffcv.py)\n")
DISTUTILS = "from distutils.log import warn\n"
NO_DISTUTILS = "from warnings import warn  # ffcv-bt: no distutils in Python 3.12 (install/patch_ffcv.py)\n"

# file under the ffcv package -> (ffcv 1.0.2's text, the patched text, what the patch does)
PATCHES = {
    "fields/rgb_image.py": (ORIGINAL, PATCHED, "IMAGE_MODES is a plain dict (import no longer compiles numba)"),
    "pipeline/graph.py": (DISTUTILS, NO_DISTUTILS, "imports no distutils (absent from Python 3.12)"),
}


def patch(path: Path, name: str = "fields/rgb_image.py") -> str:
    """Apply the patch for ``name`` (a key of PATCHES) to ``path``; say what was done."""
    original, patched, what = PATCHES[name]
    text = path.read_text()
    if patched in text:
        return f"{path}: already patched"
    if original not in text:
        return f"{path}: not as in ffcv 1.0.2; left alone"
    path.write_text(text.replace(original, patched, 1))
    return f"{path}: {what}"


def patch_package(package_dir: Path) -> list[str]:
    """Apply every patch to the ffcv package in ``package_dir``; one line per file."""
    return [patch(package_dir / name, name) for name in PATCHES]


def main() -> int:
    spec = importlib.util.find_spec("ffcv")  # locates the package without importing it
    if spec is None or spec.origin is None:
        print("ffcv is not installed: nothing to patch")
        return 0
    print("\n".join(patch_package(Path(spec.origin).parent)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
