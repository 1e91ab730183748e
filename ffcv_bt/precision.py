"""Which mixed-precision dtype a run uses on its device."""
from __future__ import annotations

import torch


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 on GPUs that have it, else fp16 (with a GradScaler); None (fp32) on CPU.

    ``precision`` is auto | bf16 | fp16 | fp32; fp32 or a CPU device disables autocast.
    """
    if precision == "fp32" or device.type != "cuda":
        return None
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16
