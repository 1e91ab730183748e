"""numba compilations during the GPU check: how many, which, and their seconds.

FFCV compiles each loader pipeline with numba on its first batch (the project's augment
kernels inside it); a cold compile costs tens of seconds, and several of them may not fit
a lent session. numba's ``numba:compile`` event fires for every compilation that its
on-disk cache did not serve (``ffcv_bt/augment/jit.py`` caches the project's kernels), so
this listener counts exactly the compiles that cost time. Top-level compiles (a pipeline,
or a kernel called directly) carry the seconds; nested ones (kernels compiled inside a
pipeline) are counted apart.
"""
from __future__ import annotations

import threading
import time
from typing import Any

from numba.core import event


class CompileLog(event.Listener):
    """Records numba compilations while installed (:meth:`install`, any thread)."""

    def __init__(self) -> None:
        self.compiles: list[dict[str, Any]] = []
        self.nested = 0
        self._local = threading.local()

    def on_start(self, ev: event.Event) -> None:
        stack = self._local.__dict__.setdefault("stack", [])
        stack.append(time.perf_counter())

    def on_end(self, ev: event.Event) -> None:
        stack = self._local.stack
        seconds = time.perf_counter() - stack.pop()
        if stack:
            self.nested += 1
            return
        func = getattr(ev.data.get("dispatcher"), "py_func", None)
        name = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', '?')}"
        self.compiles.append({"function": name, "seconds": round(seconds, 3)})

    def install(self) -> Any:
        """A context manager during which compilations are recorded."""
        return event.install_listener("numba:compile", self)

    def summary(self) -> dict[str, Any]:
        """Counts and seconds, for the device file's checks."""
        return {"compiles": len(self.compiles), "nested_compiles": self.nested,
                "seconds": round(sum(c["seconds"] for c in self.compiles), 3),
                "each": sorted(self.compiles, key=lambda c: -c["seconds"])}
