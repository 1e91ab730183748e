"""Process-group set-up from the launcher's environment, and SLURM submission.

One entry point runs as a plain process (1 CPU or 1 GPU), under ``torchrun`` (single or
multi node: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), or as a SLURM task
(SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, and the first host of SLURM_JOB_NODELIST as
master). gloo on CPU, NCCL on GPU. There is no launcher of our own: torchrun or SLURM
starts the processes.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist

from ffcv_bt.distributed.preemption import forget_control_group
from ffcv_bt.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _slurm_master_addr() -> str:
    nodelist = os.environ.get("SLURM_JOB_NODELIST", "")
    if not nodelist:
        return "127.0.0.1"
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                             text=True, check=True).stdout.split()
        return out[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        # Plain names like "node1,node2" need no expansion.
        return nodelist.split(",")[0]


def environment_ranks(env: dict[str, str] | None = None) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's or SLURM's variables, else (0, 1, 0).

    torchrun's variables win when both are present (torchrun inside an sbatch script).
    """
    env = dict(os.environ if env is None else env)
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def nvidia_driver_version() -> str | None:
    """The NVIDIA kernel driver's version line when one is loaded (Linux), else None."""
    path = Path("/proc/driver/nvidia/version")
    try:
        return path.read_text().splitlines()[0].strip() if path.is_file() else None
    except (OSError, IndexError):
        return None


def check_cuda_usable() -> None:
    """A node with an NVIDIA driver whose GPUs torch cannot use (a driver older than torch's
    CUDA build) must not train on the CPU for hours unnoticed: ConfigError naming both, unless
    the CPU was asked for (``CUDA_VISIBLE_DEVICES=""``)."""
    if torch.cuda.is_available() or os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return
    driver = nvidia_driver_version()
    if driver:
        raise ConfigError(f"torch {torch.__version__} (CUDA build {torch.version.cuda or 'none'}) "
                          f"cannot use this node's GPUs; NVIDIA driver: {driver}. Install a torch "
                          f"build for this driver, or run on the CPU with CUDA_VISIBLE_DEVICES=\"\"")


def setup(backend: str = "auto") -> DistInfo:
    """Initialise torch.distributed when the environment asks for more than one process.

    Picks the device (cuda:LOCAL_RANK when CUDA is available, else cpu) and the backend
    (nccl on CUDA, gloo on CPU) unless ``backend`` names one; refuses a node whose NVIDIA
    driver torch cannot use (check_cuda_usable).
    """
    rank, world_size, local_rank = environment_ranks()
    check_cuda_usable()
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        if "MASTER_ADDR" not in os.environ:  # SLURM without torchrun
            os.environ["MASTER_ADDR"] = _slurm_master_addr()
            os.environ.setdefault("MASTER_PORT", str(29500 + int(os.environ.get("SLURM_JOB_ID", 0)) % 1000))
        os.environ["RANK"], os.environ["WORLD_SIZE"] = str(rank), str(world_size)
        os.environ["LOCAL_RANK"] = str(local_rank)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                **({"device_id": device} if device.type == "cuda" else {}))
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


@contextlib.contextmanager
def process_group(backend: str = "auto") -> Iterator[DistInfo]:
    """``setup()`` on entry; on exit destroy the process group.

    Ranks meet in a barrier only after success: after an exception the other ranks may be
    waiting in another collective, and a barrier would hang until the NCCL timeout instead
    of failing promptly.
    """
    info = setup(backend)
    try:
        yield info
    except BaseException:
        destroy()
        raise
    if dist.is_initialized():
        dist.barrier()
    destroy()


def destroy() -> None:
    """Destroy the process group (if any), after dropping the stop vote's reference to its
    control group (``preemption.forget_control_group``)."""
    forget_control_group()
    if dist.is_initialized():
        dist.destroy_process_group()


def set_cpu_compute_threads(requested: int = 0) -> int:
    """Give torch ``requested`` threads, or (0) the CPU cores of this process minus one,
    which the FFCV loader uses.

    FFCV's numba workers prepare the next batches while torch computes; when both use
    every core, torch's OpenMP barriers can wait on descheduled threads (measured once on 2
    cores: 5.8 s vs 0.9 s per demo step), hence the default. bench/cpu_threads.py measures
    both splits on a machine. Returns the thread count.
    """
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("SLURM_NTASKS_PER_NODE", 1)))
    threads = requested or max(1, (os.cpu_count() or 1) // max(local, 1) - 1)
    torch.set_num_threads(threads)
    return threads
