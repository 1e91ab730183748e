"""The ``own_process`` marker: a test module that calls numba kernels directly runs in a
pytest process of its own whenever the session holds any other module.

Why: once FFCV has compiled a pipeline around a kernel, numba 0.68 serves a direct Python
call of the same kernel in that process an overload compiled in the pipeline's context,
which returns wrong pixels (zeros) or raises a dispatcher KeyError (the loader's own output
is right, and tested). So, on any command line, the selected tests of each marked module
are replaced by one item that runs exactly them (same -m selection) in a child pytest and
reports its failures; a session of that module alone runs it in place.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

CHILD_ENV = "FFCV_BT_OWN_PROCESS"  # set in the child pytest processes
MARKER = "own_process"


class OwnProcessRun(pytest.Item):
    """The selected tests of one marked module, run in a child pytest."""

    def __init__(self, *, node_ids: list[str], **kwargs) -> None:
        super().__init__(**kwargs)
        self.node_ids = node_ids

    def runtest(self) -> None:
        marks = self.config.getoption("-m") or "not slow"
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "-m", marks, *self.node_ids], cwd=self.config.rootpath,
                              env={**os.environ, CHILD_ENV: "1"}, capture_output=True, text=True)
        summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
        if proc.returncode not in (0, 5):
            raise AssertionError(f"{self.path.name} in its own process: {summary}\n"
                                 f"{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}")
        print(summary)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.path.name}: {len(self.node_ids)} tests in their own process"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}: calls numba kernels directly; runs in a "
                                       f"pytest process of its own beside other modules")


@pytest.hookimpl(trylast=True)  # after -k / -m selection: move only the selected tests
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    if os.environ.get(CHILD_ENV):
        return
    modules = {item.path for item in items}
    marked: dict[pytest.Module, list[pytest.Item]] = defaultdict(list)
    for item in items:
        if item.get_closest_marker(MARKER) is not None:
            marked[item.getparent(pytest.Module)].append(item)
    if not marked or len(modules) == 1:
        return
    moved = {item for group in marked.values() for item in group}
    config.hook.pytest_deselected(items=list(moved))
    runs = {module: OwnProcessRun.from_parent(module, name="[own process]",
                                              node_ids=[item.nodeid for item in group])
            for module, group in marked.items()}
    kept = []  # each child run where its module's first test was (workers start it in turn)
    for item in items:
        if item not in moved:
            kept.append(item)
        elif item is marked[item.getparent(pytest.Module)][0]:
            kept.append(runs[item.getparent(pytest.Module)])
    items[:] = kept
