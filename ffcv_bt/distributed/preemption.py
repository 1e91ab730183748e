"""Stop signals (SLURM preemption and time limits) that every rank agrees on.

submitit asks SLURM for SIGUSR2 before the time limit; schedulers also send SIGTERM or
SIGUSR1. A signal reaches each rank on its own, possibly a step apart. If each rank
stopped when it saw the signal, a late rank would already be inside the next step's
collectives while the others wait in the checkpoint barrier: a hang past the warning time,
and no requeue if rank 0 is the late one. So the ranks agree: every step each rank
contributes its flag to a MAX all-reduce over a CPU (gloo) group, and all stop after the
same step. A CPU group keeps that agreement free of GPU synchronisation. The all-reduce blocks
every rank until the slowest arrives, so with several ranks it runs every ``every`` steps
(``train.stop_vote_every``) and at each epoch's last step, not after every step: ranks
count steps alike, so they vote at the same steps, and a signal is acted on at most
``every - 1`` steps late (SLURM's warning comes minutes ahead). Alone, there is nothing to
agree on and the flag is read after every step.

``StopSignals`` is a context manager: it installs the handlers on entry and restores the
previous ones on exit, so the next stage (an evaluation) is interruptible too. After the
checkpoint, :meth:`StopSignals.hand_over` calls the handler that was there before ours
(submitit's, which requeues the job). A signal that no agreement acted on (it arrived after
the stage's last step) is raised again once the previous handlers are back, so it is not lost.
"""
from __future__ import annotations

import signal
from types import FrameType, TracebackType
from typing import Any

import torch
import torch.distributed as dist

from ffcv_bt.distributed.collectives import world_size

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
_CONTROL_GROUP: Any = None


def control_group() -> Any:
    """A gloo process group over all ranks, for small CPU messages (created once)."""
    global _CONTROL_GROUP
    if _CONTROL_GROUP is None:
        _CONTROL_GROUP = (dist.group.WORLD if dist.get_backend() == "gloo"
                          else dist.new_group(backend="gloo"))
    return _CONTROL_GROUP


def forget_control_group() -> None:
    """Drop this module's reference to the control group, before the process group is
    destroyed: a gloo group still referenced then is torn down at interpreter exit instead,
    where its threads abort the process ("terminate called without an active exception",
    SIGABRT after a finished run; seen in 1 of 3 two-rank runs)."""
    global _CONTROL_GROUP
    _CONTROL_GROUP = None


class StopSignals:
    """Records stop signals; :meth:`agreed` tells every rank whether any rank got one."""

    def __init__(self, every: int = 1) -> None:
        if every < 1:
            raise ValueError(f"the stop vote needs every >= 1 steps, got {every}")
        self.every = every
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._handed_over = False

    def __enter__(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._record)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        installed = self._previous
        for sig, previous in installed.items():
            signal.signal(sig, previous)
        self._previous = {}
        pending = self.received
        if pending is not None and not self._handed_over and pending in installed:
            # Recorded after the last agreement: deliver it to the previous handler (a requeue,
            # or the default action) instead of dropping it with our handler.
            self._handed_over = True
            signal.raise_signal(pending)

    def _record(self, signum: int, frame: FrameType | None) -> None:  # noqa: ARG002
        self.received = signum

    def agreed(self, step: int | None = None, last: bool = False) -> int | None:
        """The signal to stop for if ANY rank received one (a collective: call it on every
        rank at the same point of every step, with the same ``step`` count); None to go on.
        With several ranks, only a ``step`` that is a multiple of ``every``, an epoch's
        ``last`` step or no ``step`` votes; the others return None."""
        local = self.received or 0
        if world_size() == 1:
            return self.received
        if step is not None and step % self.every and not last:
            return None
        flag = torch.tensor([local], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=control_group())
        agreed = int(flag.item())
        if agreed and self.received is None:
            self.received = agreed
        return agreed or None

    def hand_over(self) -> None:
        """After the checkpoint: call the handler that was installed before ours (submitit's
        requeues the job), if it is a Python callable."""
        self._handed_over = True
        previous = self._previous.get(self.received or -1)
        if callable(previous):
            previous(self.received, None)
