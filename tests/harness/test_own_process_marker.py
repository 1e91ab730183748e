"""The own_process marker (tests/own_process.py) on different command lines, on two tiny
synthetic test modules: a marked module runs in a child process beside any other module,
in place when it is alone, and a failure in the child fails the session."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

MARKED = '''import os
import pytest
pytestmark = pytest.mark.own_process

def test_where():
    assert os.environ.get("FFCV_BT_OWN_PROCESS", "") == os.environ["EXPECT_CHILD"]

def test_other():
    assert {fail}
'''
PLAIN = "def test_plain():\n    assert True\n"


def _session(folder: Path, *files: str, expect_child: str, fail: bool = False,
             extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    (folder / "conftest.py").write_text(
        "from own_process import pytest_collection_modifyitems, pytest_configure  # noqa\n")
    (folder / "test_marked.py").write_text(MARKED.format(fail="False" if fail else "True"))
    (folder / "test_plain.py").write_text(PLAIN)
    (folder / "pytest.ini").write_text("[pytest]\n")
    env = {**os.environ, "PYTHONPATH": str(TESTS), "EXPECT_CHILD": expect_child}
    env.pop("FFCV_BT_OWN_PROCESS", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-m", "not slow", *extra, *files], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=120)


def test_marked_module_beside_another_runs_in_a_child(tmp_path: Path) -> None:
    proc = _session(tmp_path, "test_plain.py", "test_marked.py", expect_child="1")
    assert proc.returncode == 0, proc.stdout
    assert "2 passed, 2 deselected" in proc.stdout  # plain + the child run; marked moved


def test_whole_folder_and_a_selection_run_in_a_child(tmp_path: Path) -> None:
    proc = _session(tmp_path, expect_child="1", extra=("-k", "where or plain"))
    assert proc.returncode == 0, proc.stdout
    assert "2 passed" in proc.stdout


def test_marked_module_alone_runs_in_place(tmp_path: Path) -> None:
    proc = _session(tmp_path, "test_marked.py", expect_child="")
    assert proc.returncode == 0, proc.stdout
    assert "2 passed" in proc.stdout


def test_a_failure_in_the_child_fails_the_session(tmp_path: Path) -> None:
    proc = _session(tmp_path, "test_plain.py", "test_marked.py", expect_child="1", fail=True)
    assert proc.returncode == 1
    assert "test_marked.py in its own process: 1 failed, 1 passed" in proc.stdout
