"""The batch copies' protocol on CUDA (no GPU here: torch.cuda's streams and events are
recording stand-ins): copies queued on a side stream, the compute stream made to wait for
them before any use, the allocator told, and the wait before the next pull on the copies'
event only. On a CPU every call does nothing."""
from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from ffcv_bt.data.ffcv_loading import BufferGuard


class _Log:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.current = "compute"


class _Stream:
    def __init__(self, log: _Log, name: str) -> None:
        self.log, self.name = log, name

    def wait_stream(self, other: "_Stream") -> None:
        self.log.calls.append(("wait_stream", self.name, other.name))


class _Event:
    def __init__(self, log: _Log) -> None:
        self.log = log

    def record(self, stream: _Stream | None = None) -> None:
        self.log.calls.append(("event.record", stream.name if stream else self.log.current))

    def synchronize(self) -> None:
        self.log.calls.append(("event.synchronize",))


class _Copy:
    def __init__(self, log: _Log, name: str) -> None:
        self.log, self.name = log, name
        log.calls.append(("copy", name, log.current))

    def record_stream(self, stream: _Stream) -> None:
        self.log.calls.append(("record_stream", self.name, stream.name))


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> _Log:
    log = _Log()

    @contextmanager
    def stream(s: _Stream):
        before, log.current = log.current, s.name
        yield
        log.current = before

    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: _Stream(log, "side"))
    monkeypatch.setattr(torch.cuda, "stream", stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _Stream(log, "compute"))
    monkeypatch.setattr(torch.cuda, "Event", lambda: _Event(log))
    return log


def test_side_stream_copies_then_compute_waits(log: _Log) -> None:
    guard = BufferGuard("cuda:1")
    for _ in range(2):  # two batches, one side stream
        with guard.side_stream():
            copies = [_Copy(log, "images"), _Copy(log, "labels")]
        guard.copied(*copies)
        guard.wait()
    batch = [("copy", "images", "side"), ("copy", "labels", "side"),
             ("event.record", "side"),  # the buffers are free once the copies are done
             ("wait_stream", "compute", "side"),  # before the compute stream uses them
             ("record_stream", "images", "compute"), ("record_stream", "labels", "compute"),
             ("event.synchronize",)]
    assert log.calls == batch * 2


def test_without_the_side_stream_the_event_is_on_the_compute_stream(log: _Log) -> None:
    guard = BufferGuard("cuda:0")
    guard.copied()
    guard.wait()
    assert log.calls == [("event.record", "compute"), ("event.synchronize",)]


def test_on_a_cpu_nothing_happens(log: _Log) -> None:
    guard = BufferGuard("cpu")
    with guard.side_stream():
        copies = [_Copy(log, "images")]
    guard.copied(*copies)
    guard.wait()
    assert log.calls == [("copy", "images", "compute")]
