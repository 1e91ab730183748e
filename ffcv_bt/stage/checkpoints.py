"""Training checkpoints that survive crashes, failed writes and corruption.

Each save keeps the checkpoint it replaces as ``<name>.prev.pt``; both writes are atomic
(see ``ffcv_bt.atomic_files``). Loading takes the newest readable one: a corrupt newest
checkpoint costs one checkpoint interval with a warning, not the run. Tensors are saved on
the CPU, so a machine without the training GPU can read them.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from ffcv_bt.atomic_files import atomic_torch_save
from ffcv_bt.errors import CheckpointError


def previous_path(path: str | Path) -> Path:
    """Where the checkpoint before ``path`` is kept."""
    path = Path(path)
    return path.with_name(path.stem + ".prev" + path.suffix)


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor (in dicts, lists, tuples) moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (CPU tensors) to ``path``, keeping the one it replaces.

    A failed write (disk full, quota) leaves the checkpoints on disk as they were and raises
    a CheckpointError saying so.
    """
    try:
        return atomic_torch_save(path, to_cpu(state), keep_previous=previous_path(path))
    except OSError as exc:
        kept = [str(p) for p in (Path(path), previous_path(path)) if p.is_file()]
        raise CheckpointError(f"could not write {path} ({exc}); kept: {', '.join(kept) or 'none'}. "
                              f"Free space and run the same command again to resume") from exc


def load_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """The newest readable checkpoint of ``path`` (or its previous one), None if neither
    exists; a CheckpointError when they exist but none can be read."""
    path = Path(path)
    candidates = [p for p in (path, previous_path(path)) if p.is_file()]
    problems = []
    for candidate in candidates:
        try:
            state = torch.load(candidate, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means unreadable
            problems.append(f"{candidate}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            continue
        if not isinstance(state, dict):
            problems.append(f"{candidate}: not a checkpoint (a {type(state).__name__})")
            continue
        if problems:
            print(f"warning: {problems[0]}; resuming from the previous checkpoint {candidate}",
                  file=sys.stderr)
        return state
    if problems:
        raise CheckpointError(f"cannot resume: {'; '.join(problems)}. Delete the unreadable "
                              f"file(s) to start this stage again, or use another --out")
    return None
