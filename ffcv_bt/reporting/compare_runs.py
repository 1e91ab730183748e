"""``python -m ffcv_bt.reporting.tables --compare RUN_A RUN_B``: what differs between two run folders
and how their results compare, side by side.

Reads each folder's ``run.json`` (the resolved configuration, the code version, the device)
and every stage's ``result.json``. Only result-determining values are compared (run-control
sections such as stages, seeds lists, estimates and SLURM settings are left out).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ffcv_bt.errors import RunFolderError
from ffcv_bt.params import RUN_CONTROL_SECTIONS


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """``run.json`` of ``run_dir`` plus ``results``: {stage: result.json} of finished stages."""
    run_dir = Path(run_dir)
    meta_path = run_dir / "run.json"
    if not meta_path.is_file():
        raise RunFolderError(f"{meta_path} not found: {run_dir} is not a run folder of run.py")
    meta = json.loads(meta_path.read_text())
    meta["results"] = {p.parent.name: json.loads(p.read_text())
                       for p in sorted(run_dir.glob("*/result.json"))}
    return meta


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(section.key, value in a, value in b) for every result-determining value that differs."""
    out = []
    for section in sorted(set(a) | set(b)):
        if section in RUN_CONTROL_SECTIONS:
            continue
        keys = sorted(set(a.get(section, {})) | set(b.get(section, {})))
        for key in keys:
            va = a.get(section, {}).get(key, "<absent>")
            vb = b.get(section, {}).get(key, "<absent>")
            if va != vb:
                out.append((f"{section}.{key}", va, vb))
    return out


def _cell(result: dict[str, Any] | None, key: str, digits: int = 2) -> str:
    if result is None or result.get(key) is None:
        return "—"
    value = result[key]
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def compare_runs(run_a: str | Path, run_b: str | Path) -> str:
    """A printable comparison: configuration differences, then results per stage."""
    a, b = read_run(run_a), read_run(run_b)
    lines = [f"A: {run_a} ({a.get('recipe')}, {a.get('n_devices')}x {a.get('device')}, "
             f"commit {a.get('code', {}).get('git_sha', '?')[:12]})",
             f"B: {run_b} ({b.get('recipe')}, {b.get('n_devices')}x {b.get('device')}, "
             f"commit {b.get('code', {}).get('git_sha', '?')[:12]})", "",
             "configuration differences (A -> B):"]
    differences = config_differences(a.get("config", {}), b.get("config", {}))
    lines += [f"  {key}: {va!r} -> {vb!r}" for key, va, vb in differences] or ["  none"]
    lines += ["", f"{'stage':<16} {'top-1 A':>9} {'top-1 B':>9} {'Δ (B-A)':>9} "
                  f"{'top-5 A':>9} {'top-5 B':>9} {'device-h A':>11} {'device-h B':>11}"]
    for stage in sorted(set(a["results"]) | set(b["results"])):
        ra, rb = a["results"].get(stage), b["results"].get(stage)
        delta = ("—" if ra is None or rb is None or ra.get("top1") is None or rb.get("top1") is None
                 else f"{rb['top1'] - ra['top1']:+.2f}")
        lines.append(f"{stage:<16} {_cell(ra, 'top1'):>9} {_cell(rb, 'top1'):>9} {delta:>9} "
                     f"{_cell(ra, 'top5'):>9} {_cell(rb, 'top5'):>9} "
                     f"{_cell(ra, 'device_hours', 4):>11} {_cell(rb, 'device_hours', 4):>11}")
    return "\n".join(lines)
