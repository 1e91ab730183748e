"""FFCV side effects handled where the loaders share them: numba threads capped at the
process's CPU affinity (a SLURM task with fewer CPUs than loader workers), and the
teardown that meets in a barrier only after success."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity")
@pytest.mark.timeout(300)
def test_more_workers_than_cpus_is_clamped_with_a_warning(tiny_dataset: Path) -> None:
    """Under `taskset -c 0` numba refuses a second thread ("must be between 1 and 1"); the
    loader asks for 2 workers, warns, uses 1, and yields the whole split."""
    code = (
        "import sys; from ffcv_bt.data.eval_loader import make_eval_loader\n"
        f"loader = make_eval_loader({str(tiny_dataset / 'val.beton')!r}, 16, 'val', 2, 'cpu', res=16)\n"
        "print(sum(labels.shape[0] for _, labels in loader))\n")
    proc = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "100"
    assert "data.num_workers=2 but this process may use 1 CPU(s)" in proc.stderr


def test_process_group_barrier_only_after_success(monkeypatch) -> None:
    """On an exception the other ranks may wait in another collective: no barrier (which
    would hang until the NCCL timeout), just destroy the group and re-raise."""
    import torch.distributed as dist

    from ffcv_bt.distributed import process_group as distributed

    calls: list[str] = []
    monkeypatch.setattr(distributed, "setup", lambda backend="auto": distributed.DistInfo())
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: calls.append("barrier"))
    monkeypatch.setattr(dist, "destroy_process_group", lambda *a, **k: calls.append("destroy"))
    with pytest.raises(KeyError):
        with distributed.process_group():
            raise KeyError("a rank failed")
    assert calls == ["destroy"]
    calls.clear()
    with distributed.process_group():
        pass
    assert calls == ["barrier", "destroy"]
