"""Which mixed-precision dtype a run uses on its device."""
from __future__ import annotations

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
