"""The GPU check's count of numba compilations: top-level compiles with their seconds,
nested ones counted apart, a second call of a compiled function not counted."""
from __future__ import annotations

import numba

from bench.jit_compiles import CompileLog


def test_compiles_are_counted_once_with_their_seconds() -> None:
    @numba.njit(cache=False)
    def inner(x):
        return x + 1

    @numba.njit(cache=False)
    def outer(x):
        return inner(x) * 2

    log = CompileLog()
    with log.install():
        assert outer(1) == 4
        assert outer(2) == 6  # compiled already
    outer(1.5)  # after the listener is removed: not recorded
    summary = log.summary()
    assert summary["compiles"] == 1 and summary["nested_compiles"] == 1
    assert summary["each"][0]["function"].endswith("outer")
    assert summary["seconds"] == summary["each"][0]["seconds"] > 0
