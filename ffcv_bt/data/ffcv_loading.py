"""What the pretraining and evaluation loaders share: opening a .beton with clear errors,
building FFCV's ``Loader`` around given pipelines, and living with FFCV's side effects.

FFCV 1.0.2 facts handled here (from its source, ffcv/loader/loader.py and
ffcv/pipeline/compiler.py): the Loader sets numba's AND torch's thread counts to its worker
count, at construction and again every epoch; numba refuses more threads than the process
may run on (its CPU affinity: a SLURM task with 10 CPUs and 12 workers dies at start), and
a garbage-collected numba dispatcher can print a harmless ``KeyError`` traceback from its
finalizer (numba/core/dispatcher.py) between stages, and its batch thread
(ffcv/loader/epoch_iterator.py) starts on CUDA device 0 whatever the rank's device: leaving
its first ``torch.cuda.stream`` calls ``cudaSetDevice(0)``, a context on GPU 0 (~0.5 GB) in
every rank >= 1. :class:`DeviceEpochIterator` gives the thread the device of the thread that
began the epoch.
"""
from __future__ import annotations

import os
import queue
import sys
import time
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Optional, Sequence

import ffcv.loader.epoch_iterator as ffcv_epoch_iterator
import ffcv.loader.loader as ffcv_loader
import numba
import numpy as np
import torch
from ffcv.loader import Loader, OrderOption
from ffcv.reader import Reader

from ffcv_bt.data.manifest import REWRITE_HINT
from ffcv_bt.errors import ConfigError, DataError

ORDERS = {"random": OrderOption.RANDOM, "quasi_random": OrderOption.QUASI_RANDOM,
          "sequential": OrderOption.SEQUENTIAL}


def check_beton(beton: str | os.PathLike, required_fields: Sequence[str]) -> tuple[list[str], int]:
    """Field names and sample count of ``beton``; a DataError naming it if it is missing,
    truncated or corrupt, or lacks a field."""
    if not os.path.isfile(beton):
        raise DataError(f"dataset file not found: {beton}; {REWRITE_HINT}")
    try:
        reader = Reader(str(beton))
        names = list(reader.handlers)
        num_samples = int(reader.num_samples)
        # The allocation table is the file's last part and lists every sample's stored
        # bytes: a truncated file has a partial table or samples without an entry.
        table_bytes = os.path.getsize(beton) - int(reader.header["alloc_table_ptr"])
        complete = (table_bytes % reader.alloc_table.itemsize == 0
                    and np.unique(reader.alloc_table["sample_id"]).size == num_samples)
    except Exception as exc:  # noqa: BLE001 - FFCV raises anything from numpy on bad bytes
        raise DataError(f"{beton}: not a readable FFCV dataset file, truncated or corrupt "
                        f"({type(exc).__name__}: {exc}); rewrite it with write_dataset.py") from None
    if not complete:
        raise DataError(f"{beton}: truncated (its allocation table is incomplete); rewrite it "
                        f"with write_dataset.py")
    missing = [name for name in required_fields if name not in names]
    if missing:
        raise DataError(f"{beton}: missing field(s) {missing}; it has {names}; {REWRITE_HINT}")
    return names, num_samples


def check_indices(beton: str | os.PathLike, indices: Optional[Sequence[int]],
                  num_samples: int) -> Optional[np.ndarray]:
    """``indices`` as a uint64 array (None stays None); a clear error if one is out of range."""
    if indices is None:
        return None
    array = np.asarray(indices)
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{beton}: indices must be a non-empty list of integers")
    if array.min() < 0 or array.max() >= num_samples:
        raise DataError(f"{beton}: indices must lie in [0, {num_samples}), got "
                        f"{array.min()}..{array.max()}; {REWRITE_HINT}")
    return array.astype(np.uint64)


def ffcv_order(order: str, distributed: bool) -> OrderOption:
    """FFCV's traversal order for ``order``; a clear error for unknown or unsupported ones."""
    if order not in ORDERS:
        raise ConfigError(f"order must be one of {sorted(ORDERS)}, got {order!r}")
    if distributed and order == "quasi_random":
        raise ConfigError("data.order 'quasi_random' is not supported by FFCV with several ranks")
    if distributed and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise RuntimeError("distributed=True needs torch.distributed initialised before the loader")
    return ORDERS[order]


def usable_workers(num_workers: int) -> int:
    """``num_workers`` capped at the threads numba may start here (the CPU affinity)."""
    limit = int(numba.config.NUMBA_NUM_THREADS)
    if num_workers > limit:
        warnings.warn(f"data.num_workers={num_workers} but this process may use {limit} CPU(s) "
                      f"(its affinity; under SLURM, cpus_per_task): using {limit} loader threads",
                      stacklevel=2)
        return limit
    return num_workers


def close_epoch(epoch: Any, timeout_s: float = 60.0) -> None:
    """End FFCV's epoch: its batch thread and the epoch's memory context.

    FFCV 1.0.2's ``EpochIterator.close`` only sets a flag that its thread checks when its
    output queue is full, so after an early end (break, exception) the thread goes on decoding
    batches nobody reads. Here the thread is also given no further batch and its queue is
    drained until it exits (at most the batch it is decoding), then the memory is released.
    """
    terminate = getattr(epoch, "terminate_event", None)
    if terminate is not None and hasattr(epoch, "iter_ixes") and hasattr(epoch, "is_alive"):
        terminate.set()
        epoch.iter_ixes = iter(())  # no batch after the one in progress
        deadline = time.monotonic() + timeout_s
        while epoch.is_alive() and time.monotonic() < deadline:
            try:
                while True:
                    epoch.output_queue.get_nowait()
            except queue.Empty:
                pass
            epoch.join(0.05)
    epoch.close()


def keep_torch_threads(loader: Loader) -> Iterator:
    """Iterate ``loader`` with the caller's torch thread count; close the epoch at its end.

    FFCV sets torch's thread count to its worker count when an epoch starts (in ``__iter__``
    and again in its batch thread); left alone, torch work on the CPU then competes with the
    numba workers for the cores. The count is restored once the first batch arrives, when
    both calls have happened. However the iteration ends (exhausted, break, exception), FFCV's
    epoch is closed (:func:`close_epoch`).
    """
    threads = torch.get_num_threads()
    epoch = iter(loader)
    try:
        for i, batch in enumerate(epoch):
            if i == 0:
                torch.set_num_threads(threads)
            yield batch
    finally:
        close_epoch(epoch)


def build_loader(beton: str | os.PathLike, pipelines: dict[str, Any], *, batch_size_per_rank: int,
                 num_workers: int, order: str, distributed: bool, seed: int,
                 indices: Optional[np.ndarray], drop_last: bool, in_memory: bool) -> Loader:
    """FFCV's Loader over ``beton`` with ``pipelines`` (fields not named are disabled).

    ``indices`` must come from :func:`check_indices`. Keeps the caller's torch thread count,
    and refuses a loader that would yield no batch.
    """
    threads = torch.get_num_threads()  # FFCV's constructor changes it; give it back
    loader = Loader(str(beton), batch_size=batch_size_per_rank,
                    num_workers=usable_workers(num_workers), os_cache=in_memory,
                    order=ffcv_order(order, distributed), distributed=distributed, seed=seed,
                    indices=indices, pipelines=pipelines, drop_last=drop_last)
    torch.set_num_threads(threads)
    if len(loader) == 0:
        raise DataError(f"{beton}: {len(loader.first_traversal_order)} samples on this rank give "
                        f"no batch of {batch_size_per_rank} (drop_last={drop_last}); use a smaller "
                        f"batch or more data")
    return loader


class BufferGuard:
    """Keeps FFCV's reused batch buffers safe from a non-blocking copy still in flight, and
    lets the copies run beside the training step.

    FFCV fills a small ring of (pinned, on CUDA machines) batch buffers in a background
    thread and refills a buffer once the batch after it has been pulled. A non-blocking
    host-to-device copy out of a buffer must therefore be complete before the next batch is
    pulled. :meth:`copied` records a CUDA event right after the copies are queued and
    :meth:`wait` (called before pulling the next batch) waits for that event only: the copy
    and what was queued before it, never the training step queued after it. Copies queued
    inside :meth:`side_stream` run on a stream of their own, so they overlap the step still
    running on the compute stream; :meth:`copied` then makes the compute stream wait for them
    (and tells the allocator the compute stream uses what they made). On a CPU the "copies"
    are synchronous and every call does nothing.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._event: Any = None
        self._side: Any = None

    @contextmanager
    def side_stream(self) -> Iterator[None]:
        """Queue the copies made inside on the side stream (CUDA only); pass the tensors
        they made to :meth:`copied` before any other use."""
        if not self.cuda:
            yield
            return
        if self._side is None:
            self._side = torch.cuda.Stream(self.device)
        with torch.cuda.stream(self._side):
            yield

    def copied(self, *made_on_side: torch.Tensor) -> None:
        """The batch's copies are queued: record the event :meth:`wait` waits for; after
        :meth:`side_stream`, the compute stream waits for the copies."""
        if not self.cuda:
            return
        self._event = torch.cuda.Event()
        if self._side is None:
            self._event.record()
            return
        self._event.record(self._side)
        compute = torch.cuda.current_stream(self.device)
        compute.wait_stream(self._side)
        for tensor in made_on_side:
            tensor.record_stream(compute)

    def wait(self) -> None:
        if self._event is not None:
            self._event.synchronize()
            self._event = None


def default_device() -> torch.device:
    """CUDA (this process's current device) when available, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class DeviceEpochIterator(ffcv_epoch_iterator.EpochIterator):
    """FFCV's epoch (a thread that decodes the batches) whose thread first sets the CUDA
    device that was current where the epoch began (the rank's), before any CUDA call."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.cuda_device = torch.cuda.current_device() if ffcv_epoch_iterator.IS_CUDA else None
        super().__init__(*args, **kwargs)  # starts the thread

    def run(self) -> None:
        if self.cuda_device is not None:
            torch.cuda.set_device(self.cuda_device)
        super().run()


def use_rank_device_in_ffcv_threads() -> None:
    """Make FFCV's Loader begin its epochs with :class:`DeviceEpochIterator` (once)."""
    if not issubclass(ffcv_loader.EpochIterator, DeviceEpochIterator):
        ffcv_loader.EpochIterator = DeviceEpochIterator


def _is_numba_finalizer_keyerror(unraisable: Any) -> bool:
    """True for numba's dispatcher-finalizer KeyError (harmless: the overload is gone)."""
    tb = unraisable.exc_traceback
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return (unraisable.exc_type is KeyError and tb is not None
            and tb.tb_frame.f_code.co_name == "finalizer"
            and tb.tb_frame.f_code.co_filename.endswith(os.path.join("numba", "core", "dispatcher.py")))


def drop_numba_finalizer_noise() -> None:
    """Install an unraisable-exception hook that drops numba's finalizer KeyError only;
    every other unraisable exception goes to the hook that was there before."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_numba_finalizer_noise", False):
        return

    def hook(unraisable: Any) -> None:
        if not _is_numba_finalizer_keyerror(unraisable):
            previous(unraisable)

    hook.drops_numba_finalizer_noise = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


drop_numba_finalizer_noise()
use_rank_device_in_ffcv_threads()
