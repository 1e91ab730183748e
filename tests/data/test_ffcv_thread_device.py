"""FFCV's batch thread sets the rank's CUDA device before its first CUDA call (else its first
``torch.cuda.stream`` makes a context on GPU 0 in every rank >= 1). No GPU here: FFCV's CUDA
path runs against recording stand-ins for torch.cuda's streams, events and devices."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path

import ffcv.loader.epoch_iterator as ffcv_epoch_iterator
import ffcv.loader.loader as ffcv_loader
import pytest
import torch

from ffcv_bt.data.eval_loader import make_eval_loader
from ffcv_bt.data.ffcv_loading import DeviceEpochIterator
from ffcv_bt.data.manifest import beton_path

RANK_DEVICE = 1


class _FakeCuda:
    """Each thread's current device (0 until it sets one, as CUDA's) and, per thread, the
    calls made: ("set_device", d) and ("stream", device current at the call)."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.calls: dict[str, list] = {}

    def record(self, *call) -> None:
        self.calls.setdefault(threading.current_thread().name, []).append(call)

    def set_device(self, device: int) -> None:
        self.local.device = device
        self.record("set_device", device)

    def current_device(self) -> int:
        return getattr(self.local, "device", 0)

    @contextmanager
    def stream(self, stream):
        self.record("stream", self.current_device())  # torch's StreamContext: cudaSetDevice
        yield


class _Stream:
    def wait_stream(self, other) -> None:
        pass


class _Event:
    def record(self, stream=None) -> None:
        pass

    def wait(self, stream=None) -> None:
        pass


@pytest.mark.timeout(300)
def test_the_batch_thread_sets_the_rank_device_first(tiny_dataset: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    assert ffcv_loader.EpochIterator is DeviceEpochIterator  # installed on import
    fake = _FakeCuda()
    fake.set_device(RANK_DEVICE)  # the main thread, as the process group set-up does
    monkeypatch.setattr(ffcv_epoch_iterator, "IS_CUDA", True)
    monkeypatch.setattr(torch.cuda, "set_device", fake.set_device)
    monkeypatch.setattr(torch.cuda, "current_device", fake.current_device)
    monkeypatch.setattr(torch.cuda, "stream", fake.stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _Stream())
    monkeypatch.setattr(torch.cuda, "Stream", _Stream)
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    loader = make_eval_loader(str(beton_path(tiny_dataset, "val")), 16, "val", num_workers=1,
                              device="cpu", res=16, resize_ratio=1.0)
    batches = sum(1 for _ in loader)
    assert batches == len(loader) > 1
    workers = {name: calls for name, calls in fake.calls.items()
               if name != threading.current_thread().name}
    assert len(workers) == 1  # one epoch, one batch thread
    calls = next(iter(workers.values()))
    assert calls[0] == ("set_device", RANK_DEVICE)  # before anything else
    assert calls[1:] == [("stream", RANK_DEVICE)] * batches  # every batch on the rank's device
