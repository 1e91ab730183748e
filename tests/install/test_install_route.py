"""How `make test` / `make demo` install ffcv (install/ffcv_route.sh and the Makefile): the
sdist build only as root with FFCV's apt packages installed, the self-contained wheel
otherwise, with no apt call for FFCV's packages. `id` and `dpkg-query` are stubs."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FFCV_APT = ["pkg-config", "libopencv-dev", "libturbojpeg0-dev"]

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


def stub_env(tmp_path: Path, uid: int, missing: list[str]) -> dict[str, str]:
    """PATH with an `id` printing ``uid`` and a `dpkg-query` for which ``missing`` is not installed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    cases = "|".join(missing) or "-none-"
    (bin_dir / "dpkg-query").write_text(
        "#!/bin/sh\nfor last; do :; done\n"
        f'case "$last" in {cases}) exit 1;; *) printf "install ok installed";; esac\n')
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "FFCV_ROUTE"}
    return {**env, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def route(tmp_path: Path, uid: int, missing: list[str]) -> str:
    proc = subprocess.run(["sh", str(REPO / "install" / "ffcv_route.sh"), *FFCV_APT],
                          env=stub_env(tmp_path, uid, missing), capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def test_route(tmp_path: Path) -> None:
    assert route(tmp_path, 0, []) == "sdist"
    assert route(tmp_path, 0, ["libopencv-dev"]) == "wheel"
    assert route(tmp_path, 1000, []) == "wheel"
    assert route(tmp_path, 1000, FFCV_APT) == "wheel"


def make_dry_run(tmp_path: Path, uid: int, missing: list[str]) -> str:
    """`make -n -B test`: the commands make would run (-B: as on a machine with no .venv)."""
    proc = subprocess.run(["make", "-n", "-B", "test"], cwd=REPO, env=stub_env(tmp_path, uid, missing),
                          capture_output=True, text=True, check=True)
    return proc.stdout


@needs_make
def test_make_uses_the_wheel_without_root(tmp_path: Path) -> None:
    out = make_dry_run(tmp_path, 1000, FFCV_APT + ["dataset-fashion-mnist"])
    assert "install/build_ffcv_wheel.py --out wheelhouse" in out
    assert "pip install --quiet --no-deps --force-reinstall wheelhouse/ffcv-1.0.2-*.whl" in out
    apt_loop = next(line for line in out.splitlines() if line.startswith("missing=") and "for p in" in line)
    assert apt_loop.split("for p in")[1].split(";")[0].split() == ["dataset-fashion-mnist"]
    # the wheel is installed before the requirements, so pip finds ffcv==1.0.2 satisfied
    assert out.index("ffcv-1.0.2-*.whl") < out.index("-r requirements.txt")


@needs_make
def test_make_builds_the_sdist_as_root_with_the_packages(tmp_path: Path) -> None:
    out = make_dry_run(tmp_path, 0, [])
    assert "build_ffcv_wheel" not in out and "wheelhouse" not in out
    apt_loop = next(line for line in out.splitlines() if line.startswith("missing=") and "for p in" in line)
    assert apt_loop.split("for p in")[1].split(";")[0].split() == FFCV_APT + ["dataset-fashion-mnist"]
    assert "build_ffcv_wheel.py" in make_dry_run(tmp_path, 0, ["libturbojpeg0-dev"])
