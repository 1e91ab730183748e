"""offline/ for a node without network (install/offline_bundle.py) and bench/gpu_node.sh
putting it on PYTHONPATH (run with a stub python that records its environment)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "install" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bundle = load("offline_bundle")


def test_every_bundled_package_is_pinned() -> None:
    pins = bundle.pins(REPO / "requirements.txt")
    assert [pin.split("==")[0].lower() for pin in pins] == list(bundle.PURE)
    assert all(pin.split("==")[1] for pin in pins)


def test_missing_packages(tmp_path: Path) -> None:
    for name in ("ffcv", "fastargs"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    assert bundle.missing_packages(tmp_path) == [n for n in bundle.PURE.values() if n != "fastargs"]


def run_gpu_node(tmp_path: Path, offline: Path, pythonpath: str | None) -> str:
    """bench/gpu_node.sh with a stub python; returns the PYTHONPATH values the stub saw."""
    seen = tmp_path / "seen.txt"
    stub = tmp_path / "python"
    stub.write_text(f'#!/bin/sh\necho "$PYTHONPATH" >> "{seen}"\n')
    stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({"PYTHON": str(stub), "FFCV_BT_OFFLINE": str(offline)})
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_node.sh"), str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return seen.read_text()


def test_gpu_node_puts_the_bundle_on_pythonpath(tmp_path: Path) -> None:
    offline = tmp_path / "offline"
    (offline / "ffcv").mkdir(parents=True)
    assert set(run_gpu_node(tmp_path, offline, None).split()) == {str(offline)}
    (tmp_path / "seen.txt").unlink()
    # after what the caller put there (a test's shadows, a user's choice), before site-packages
    assert set(run_gpu_node(tmp_path, offline, "/x").split()) == {f"/x{os.pathsep}{offline}"}
    (tmp_path / "seen.txt").unlink()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert set(run_gpu_node(tmp_path, empty, "/x").split()) == {"/x"}  # no ffcv in it: left out


@pytest.mark.slow
def test_bundle_holds_ffcv_and_its_requirements(tmp_path: Path) -> None:
    """A stand-in ffcv wheel and the pinned packages from the index (pip, network): each
    imports from the bundle, under the cap."""
    builder = load("build_ffcv_wheel")
    wheel = builder.write_wheel({"ffcv/__init__.py": b"STAND_IN = True\n",
                                 "ffcv-1.0.2.dist-info/METADATA": b"Metadata-Version: 2.1\nName: ffcv\n"
                                                                  b"Version: 1.0.2\n"},
                                tmp_path / "wheelhouse", "py3-none-any")
    out = tmp_path / "offline"
    total = bundle.build(wheel, out, REPO / "requirements.txt")
    assert 0 < total <= bundle.MAX_BYTES and bundle.missing_packages(out) == []
    names = ["ffcv", *bundle.PURE.values()]
    code = f"import importlib; print(*[importlib.import_module(n).__file__ for n in {names!r}])"
    proc = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(out), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, check=True, timeout=120)
    assert all(path.startswith(str(out)) for path in proc.stdout.split()), proc.stdout
