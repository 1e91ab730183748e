"""Provenance: the project's own outputs under results/ do not mark the code "-dirty"."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ffcv_bt.stage.provenance import code_version


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A committed checkout shaped like the project: source, results/ (tracked outputs)."""
    repo = tmp_path / "repo"
    (repo / "ffcv_bt").mkdir(parents=True)
    (repo / "results").mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "test@example.com")
    _git(repo, "config", "user.name", "test")
    (repo / "ffcv_bt" / "train.py").write_text("print('v1')\n")
    (repo / "results" / "runs.csv").write_text("seed\n0\n")
    (repo / "results" / "README.md").write_text("# results\n")
    (repo / "results" / "frontier.png").write_bytes(b"\x89PNG v1")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "v1")
    return repo


def test_rewritten_results_are_not_dirty(repo):
    # What a run does: appends its row, rewrites the README table and the plot, adds a file.
    (repo / "results" / "runs.csv").write_text("seed\n0\n1\n")
    (repo / "results" / "README.md").write_text("# results\n| a |\n")
    (repo / "results" / "frontier.png").write_bytes(b"\x89PNG v2")
    (repo / "results" / "cost_accuracy.png").write_bytes(b"\x89PNG new")
    assert code_version(repo)["dirty"] is False


def test_deleted_result_is_not_dirty(repo):
    (repo / "results" / "README.md").unlink()
    assert code_version(repo)["dirty"] is False


def test_changed_source_is_dirty_even_beside_results(repo):
    (repo / "results" / "runs.csv").write_text("seed\n0\n1\n")
    (repo / "ffcv_bt" / "train.py").write_text("print('v2')\n")
    assert code_version(repo)["dirty"] is True


def test_untracked_source_is_dirty(repo):
    (repo / "ffcv_bt" / "new_module.py").write_text("x = 1\n")
    assert code_version(repo)["dirty"] is True


def test_staged_source_is_dirty(repo):
    (repo / "ffcv_bt" / "train.py").write_text("print('v2')\n")
    _git(repo, "add", "ffcv_bt/train.py")
    assert code_version(repo)["dirty"] is True


def test_a_results_named_file_elsewhere_is_still_code(repo):
    # Only the top-level results/ folder is excluded, not every path containing "results".
    (repo / "ffcv_bt" / "results").mkdir()
    (repo / "ffcv_bt" / "results" / "tables.py").write_text("x = 1\n")
    assert code_version(repo)["dirty"] is True
