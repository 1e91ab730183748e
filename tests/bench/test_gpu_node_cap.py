"""bench/gpu_node.sh's time cap kills the check's whole process tree, including a child in a
session of its own and that child's worker (as torchrun and its ranks), and says it cut."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]

# Stands in for ``python -m bench.gpu_check``: starts a "torchrun" in a new session, which
# starts a "worker"; both record their PIDs and sleep far past the cap.
CHECK = """
import os, subprocess, sys, time
out = sys.argv[sys.argv.index("--out") + 1]
worker = "import os, time; open(os.path.join(%r, 'worker.pid'), 'w').write(str(os.getpid())); time.sleep(300)" % out
torchrun = ("import os, subprocess, sys, time; open(os.path.join(%r, 'torchrun.pid'), 'w').write(str(os.getpid())); "
            "subprocess.Popen([sys.executable, '-c', %r]); time.sleep(300)") % (out, worker)
subprocess.Popen([sys.executable, "-c", torchrun], start_new_session=True)
print("check started", flush=True)
time.sleep(300)
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.timeout(120)
def test_the_cap_kills_torchrun_and_its_workers(tmp_path: Path) -> None:
    stub = tmp_path / "python"
    stub.write_text(f"""#!/usr/bin/env bash
if [ "$1" = "-c" ]; then echo "3.x torch stub CUDA none"; exit 0; fi
exec {sys.executable} -c CHECK_SOURCE "$@"
""".replace("CHECK_SOURCE", shlex.quote(CHECK)))
    stub.chmod(0o755)
    out = tmp_path / "out"
    started = time.monotonic()
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_node.sh"), str(out), "--seconds", "4",
                           "--device", "cpu"], env={**os.environ, "PYTHON": str(stub)}, cwd=REPO,
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 124, proc.stdout + proc.stderr
    assert time.monotonic() - started < 30
    assert "check started" in (out / "gpu_check.log").read_text()
    assert "cut at 4 s (its process tree killed)" in proc.stdout
    pids = {name: int((out / f"{name}.pid").read_text()) for name in ("torchrun", "worker")}
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(pid) for pid in pids.values()), pids
