"""Make offline/: ffcv and its pure-Python requirements as files, for a node without network.

A lent GPU node has torch, numba, numpy and opencv-python-headless but no network, no apt and
no ffcv, fastargs or submitit. offline/ holds the self-contained ffcv wheel
(``make ffcv-wheel``) unpacked, plus fastargs, assertpy, terminaltables, pytorch-pfn-extras,
submitit and its cloudpickle at the versions pinned in requirements.txt (``pip install
--target``, no dependencies: the rest of what they import is on the node), so that putting
offline/ on PYTHONPATH is the whole install (``bench/gpu_node.sh`` does). Capped at 60 MiB
(a device run carries at most 64 MiB).

Usage: python install/offline_bundle.py --out offline wheelhouse/ffcv-1.0.2-*.whl
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# distribution name -> the import name the bundle must hold
PURE = {"fastargs": "fastargs", "assertpy": "assertpy", "terminaltables": "terminaltables",
        "pytorch-pfn-extras": "pytorch_pfn_extras", "submitit": "submitit",
        "cloudpickle": "cloudpickle"}  # submitit's requirement, absent from the node
MAX_BYTES = 60 * 2**20


def pins(requirements: Path) -> list[str]:
    """``name==version`` for each PURE distribution, as requirements.txt pins it."""
    found = {}
    for line in requirements.read_text().splitlines():
        match = re.match(r"\s*([A-Za-z0-9_.-]+)==([^\s#]+)", line)
        if match and match[1].lower() in PURE:
            found[match[1].lower()] = f"{match[1]}=={match[2]}"
    missing = sorted(set(PURE) - set(found))
    if missing:
        sys.exit(f"{requirements}: no == pin for {', '.join(missing)}")
    return [found[name] for name in PURE]


def size(folder: Path) -> int:
    """Bytes of the files under ``folder``."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def missing_packages(folder: Path) -> list[str]:
    """The import names (ffcv and PURE's) that ``folder`` lacks as packages."""
    names = ["ffcv", *PURE.values()]
    return [name for name in names if not (folder / name / "__init__.py").is_file()]


def build(wheel: Path, out: Path, requirements: Path) -> int:
    """Fill ``out`` afresh; return its size in bytes."""
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
                    "--target", str(out), str(wheel), *pins(requirements)], check=True)
    shutil.rmtree(out / "bin", ignore_errors=True)  # console scripts: not used from PYTHONPATH
    missing = missing_packages(out)
    if missing:
        sys.exit(f"{out}: {', '.join(missing)} missing after pip")
    total = size(out)
    if total > MAX_BYTES:
        sys.exit(f"{out}: {total / 2**20:.1f} MiB, over the {MAX_BYTES / 2**20:.0f} MiB cap")
    return total


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("wheel", type=Path, help="the ffcv wheel from make ffcv-wheel")
    parser.add_argument("--out", type=Path, default=REPO / "offline")
    parser.add_argument("--requirements", type=Path, default=REPO / "requirements.txt")
    args = parser.parse_args(argv)
    total = build(args.wheel, args.out, args.requirements)
    print(f"{args.out}: ffcv + {', '.join(PURE)} ({total / 2**20:.1f} MiB); "
          f"use with PYTHONPATH={args.out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
