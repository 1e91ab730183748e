"""Which mixed-precision dtype a run uses on its device, where TF32 is allowed, and the two
places a stage uses them: the autocast block and the (scaled) optimiser step."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

BF16_MIN_CAPABILITY = 8  # Ampere: the first NVIDIA GPUs with native bf16 arithmetic


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (auto | bf16 | fp16 | fp32) on ``device``.

    None (fp32, no autocast) for fp32 or a CPU device. ``auto`` picks bf16 on GPUs of compute
    capability >= 8.0 and fp16 (with a GradScaler) before that: ``torch.cuda.is_bf16_supported``
    also answers True where bf16 is only emulated (V100), which is several times slower.
    """
    if precision == "fp32" or device.type != "cuda":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    major, _minor = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= BF16_MIN_CAPABILITY else torch.float16


def set_tf32(precision: str) -> bool:
    """Set TF32 explicitly for a stage of ``precision``; returns cuDNN's setting.

    torch's default lets cuDNN run fp32 convolutions in TF32 (10-bit mantissa) on Ampere and
    newer, so an "fp32" stage would not be fp32. Here cuDNN may use TF32 only in a mixed-precision
    stage (whose convolutions run in bf16/fp16 anyway), and cuBLAS never does (the objective's
    fp32 cross-correlation and the classifiers stay fp32). No effect on the CPU.
    """
    allowed = precision != "fp32"
    torch.backends.cudnn.allow_tf32 = allowed
    torch.backends.cuda.matmul.allow_tf32 = False
    return allowed


@contextmanager
def true_fp32() -> Iterator[None]:
    """TF32 off for cuDNN and cuBLAS inside the block (the frozen fp32 forwards of kNN and the
    monitor), the previous settings restored after."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def precision_setup(precision: str, device: torch.device, scaled: bool = True
                    ) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """TF32 set for ``precision`` (``set_tf32``), its autocast dtype on ``device``, and a
    GradScaler when that dtype is fp16 and ``scaled`` (the trained part computes in it)."""
    set_tf32(precision)
    dtype = autocast_dtype(precision, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 and scaled else None
    return dtype, scaler


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``dtype`` on ``device``'s type; a disabled block when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler | None) -> None:
    """Zero the gradients, backward (scaled when ``scaler``), step the optimiser."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
