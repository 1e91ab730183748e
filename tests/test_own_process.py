"""Each module of conftest.OWN_PROCESS in a pytest process of its own (see conftest.py):
the same marker selection as this session, and its failures reported here."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CHILD_ENV, OWN_PROCESS

TESTS = Path(__file__).resolve().parent


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("module", OWN_PROCESS)
def test_module_in_its_own_process(module: str, request: pytest.FixtureRequest) -> None:
    marks = request.config.getoption("-m") or "not slow"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-m", marks, str(TESTS / module)], cwd=TESTS.parent,
                          env={**os.environ, CHILD_ENV: "1"}, capture_output=True, text=True)
    assert proc.returncode in (0, 5), f"{module} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
    print(proc.stdout.strip().splitlines()[-1])
