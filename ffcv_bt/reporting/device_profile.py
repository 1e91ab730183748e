"""Device files: what one kind of device measured (python -m bench.gpu_check), read by the cost
estimates of ``run.py --dry-run`` and ``--budget-hours``.

One JSON file per device type, ``results/devices/<slug>.json`` (the slug of the device
name as torch reports it, e.g. ``nvidia-h100-80gb-hbm3``). A recipe uses the file whose
slug is that of its ``estimate.device``. Format (version 1)::

    {
      "format": "ffcv-bt-device/1",
      "device": "NVIDIA H100 80GB HBM3",      # torch.cuda.get_device_name (or "cpu (...)")
      "device_type": "cuda",                  # cuda | cpu
      "capability": "9.0",                    # CUDA compute capability; null on a CPU
      "torch": "2.14.1+cu130", "cuda": "13.0",
      "date": "2026-05-01T12:00:00", "command": "python -m bench.gpu_check ...",
      "model": {"arch": "resnet50", "width": 64, "projector": "8192-8192-8192",
                "batch_per_device": 256},
      "pretrain": {                           # per resolution (px, as a string key)
        "224": {"images_per_s": 1900.0,       # two-view images/s per device, full step
                "precision": "bf16", "channels_last": true, "compile": false,
                "peak_memory_gib": 41.2}, ...},
      "eval_images_per_s": 5200.0,            # linear-probe training images/s per device
      "loader": {"cores": 16,                 # loader threads used for the measurement
                 "pairs_per_s": {"224": 4100.0, ...},
                 "pairs_per_s_per_core": {"224": 256.0, ...},
                 # optional: the workers' part of aug.device gpu (decode, crop, flip)
                 "gpu_aug_pairs_per_s_per_core": {"224": 420.0, ...}},
      "checks": {...}                         # free-form results of the other checks
    }

Resolutions not measured are estimated from the nearest measured one, with a cost
proportional to the pixels (res^2) for the step and to nothing for the loader (whose
cost is dominated by decoding the stored JPEG, which does not depend on the output size).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ffcv_bt.atomic_files import atomic_write_json
from ffcv_bt.paths import REPO_ROOT

FORMAT = "ffcv-bt-device/1"
DEVICES_DIR = REPO_ROOT / "results" / "devices"


def slugify(name: str) -> str:
    """File-name form of a device name: lower case, runs of other characters -> '-'."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not slug:
        raise ValueError(f"device name {name!r} has no letters or digits")
    return slug


def device_file(name: str, devices_dir: str | Path | None = None) -> Path:
    """Where the file of device ``name`` lives."""
    return Path(devices_dir or DEVICES_DIR) / f"{slugify(name)}.json"


def _fail(source: str, key: str, problem: str) -> ValueError:
    return ValueError(f"{source}: '{key}' {problem} (device file format {FORMAT}; "
                      f"rewrite it with python -m bench.gpu_check)")


def _positive(source: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or value != value or value == float("inf"):
        raise _fail(source, key, f"must be a positive finite number, got {value!r}")
    return float(value)


def _per_resolution(source: str, key: str, table: Any) -> dict[int, Any]:
    if not isinstance(table, dict) or not table:
        raise _fail(source, key, "must be a non-empty mapping of resolution -> value")
    out = {}
    for res, value in table.items():
        if not str(res).isdigit() or int(res) < 1:
            raise _fail(source, f"{key}.{res}", "is not a resolution in pixels")
        out[int(res)] = value
    return out


def validate(profile: Any, source: str = "device file") -> dict[str, Any]:
    """Check ``profile`` against the format; return it. ValueError naming source and key."""
    if not isinstance(profile, dict):
        raise ValueError(f"{source}: a device file must hold a JSON object")
    if profile.get("format") != FORMAT:
        raise _fail(source, "format", f"must be {FORMAT!r}, got {profile.get('format')!r}")
    for key in ("device", "device_type", "torch", "date", "command"):
        if not isinstance(profile.get(key), str) or not profile[key]:
            raise _fail(source, key, "must be a non-empty string")
    if profile["device_type"] not in ("cuda", "cpu"):
        raise _fail(source, "device_type", f"must be 'cuda' or 'cpu', got {profile['device_type']!r}")
    if not isinstance(profile.get("model"), dict):
        raise _fail(source, "model", "must be a mapping (arch, width, projector, batch_per_device)")
    for res, entry in _per_resolution(source, "pretrain", profile.get("pretrain")).items():
        if not isinstance(entry, dict):
            raise _fail(source, f"pretrain.{res}", "must be a mapping")
        _positive(source, f"pretrain.{res}.images_per_s", entry.get("images_per_s"))
        for flag in ("channels_last", "compile"):
            if not isinstance(entry.get(flag), bool):
                raise _fail(source, f"pretrain.{res}.{flag}", "must be true or false")
        if entry.get("precision") not in ("bf16", "fp16", "fp32"):
            raise _fail(source, f"pretrain.{res}.precision", "must be bf16, fp16 or fp32")
    _positive(source, "eval_images_per_s", profile.get("eval_images_per_s"))
    loader = profile.get("loader")
    if loader is None:  # measured without ffcv (gpu_check's torch-only phases)
        return profile
    if not isinstance(loader, dict):
        raise _fail(source, "loader", "must be a mapping (cores, pairs_per_s, pairs_per_s_per_core) "
                    "or null (not measured)")
    if isinstance(loader.get("cores"), bool) or not isinstance(loader.get("cores"), int) \
            or loader["cores"] < 1:
        raise _fail(source, "loader.cores", f"must be a positive integer, got {loader.get('cores')!r}")
    optional = ("gpu_aug_pairs_per_s_per_core",)
    for table in ("pairs_per_s", "pairs_per_s_per_core", *optional):
        if table in optional and table not in loader:
            continue
        for res, value in _per_resolution(source, f"loader.{table}", loader.get(table)).items():
            _positive(source, f"loader.{table}.{res}", value)
    return profile


def load(path: str | Path) -> dict[str, Any]:
    """Read and validate a device file; ValueError naming the file (and key) otherwise."""
    path = Path(path)
    try:
        profile = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"{path}: cannot read device file ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    return validate(profile, str(path))


def write(path: str | Path, profile: dict[str, Any]) -> Path:
    """Validate, then write atomically (a reader never sees half a file)."""
    validate(profile, str(path))
    return atomic_write_json(path, profile)


def find(name: str, devices_dir: str | Path | None = None) -> dict[str, Any] | None:
    """The validated file of device ``name`` if there is one, else None."""
    path = device_file(name, devices_dir)
    return load(path) if path.is_file() else None


def _nearest(table: dict[int, Any], res: int) -> int:
    return min(table, key=lambda measured: (abs(measured - res), -measured))


def step_images_per_s(profile: dict[str, Any], res: int) -> float:
    """Two-view images/s per device at ``res``: measured, or the nearest measured
    resolution's rate scaled by (measured / res)^2 (cost proportional to pixels)."""
    table = {r: e["images_per_s"] for r, e in _per_resolution("device file", "pretrain",
                                                              profile["pretrain"]).items()}
    measured = _nearest(table, res)
    return table[measured] * (measured / res) ** 2


def loader_table(profile: dict[str, Any], aug_device: str = "cpu") -> str:
    """The loader table that applies: the ``aug.device: gpu`` workers' rates when asked for
    and measured, else the full CPU loader's (an upper bound on the cores needed)."""
    if aug_device == "gpu" and "gpu_aug_pairs_per_s_per_core" in profile["loader"]:
        return "gpu_aug_pairs_per_s_per_core"
    return "pairs_per_s_per_core"


def loader_pairs_per_s_per_core(profile: dict[str, Any], res: int, aug_device: str = "cpu") -> float:
    """Loader pairs/s per core at ``res``: measured, else the nearest measured resolution's."""
    name = loader_table(profile, aug_device)
    table = _per_resolution("device file", f"loader.{name}", profile["loader"][name])
    return float(table[_nearest(table, res)])


def loader_cores_needed(profile: dict[str, Any], res: int, aug_device: str = "cpu") -> float:
    """Loader cores one device needs at ``res`` to keep its measured step fed."""
    return step_images_per_s(profile, res) / loader_pairs_per_s_per_core(profile, res, aug_device)
