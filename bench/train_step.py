"""Images/s of one full Barlow Twins pretraining step (forward both views, objective,
backward, LARS) on whatever device is present, with synthetic input tensors (the loader is
measured separately by bench/loader.py). This is the figure a recipe's GPU-hours are
estimated from (`estimate.pretrain_images_per_s`, used by `run.py --dry-run`).

It measures our step (objective formulation chosen by shape) and the reference step (the
d x d cross-correlation) side by side and prints the ratio last:

    python bench/train_step.py --arch resnet50 --res 224 --batch 256          # a GPU
    python bench/train_step.py --arch resnet18 --width 16 --small-stem --res 32 \
        --projector 512-512-512 --batch 128                                  # the CPU demo
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ffcv_bt.accounting import device_description, sync_device  # noqa: E402
from ffcv_bt.model import BarlowTwins  # noqa: E402
from ffcv_bt.objective import barlow_twins_loss  # noqa: E402
from ffcv_bt.optim import LARS, param_groups_for_lars, set_learning_rates  # noqa: E402
from ffcv_bt.mixed_precision import autocast_dtype  # noqa: E402

IMAGENET_TRAIN = 1_281_167


def measure(args: argparse.Namespace, formulation: str, device: torch.device) -> list[float]:
    """Seconds per step for ``args.steps`` timed steps after ``args.warmup`` untimed ones."""
    torch.manual_seed(0)
    model = BarlowTwins(args.arch, args.projector, width=args.width,
                        small_stem=args.small_stem).to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = LARS(param_groups_for_lars(model), lr=0.0, weight_decay=1e-6, momentum=0.9, eta=0.001)
    set_learning_rates(opt, 1e-3, 0.2, 0.0048)
    dtype = autocast_dtype(args.precision, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x1 = torch.randn(args.batch, 3, args.res, args.res, device=device).to(memory_format=fmt)
    x2 = torch.randn_like(x1)
    times = []
    for i in range(args.warmup + args.steps):
        sync_device(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            z1, z2 = model(x1, x2)
        loss = barlow_twins_loss(z1.float(), z2.float(), formulation=formulation)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        sync_device(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--small-stem", action="store_true")
    parser.add_argument("--projector", default="8192-8192-8192")
    parser.add_argument("--res", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64, help="per-device batch")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    desc = device_description(device)
    print(f"# bench/train_step.py on {desc['device']} (torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads)")
    print(f"# {args.arch} width {args.width}{' small-stem' if args.small_stem else ''}, "
          f"projector {args.projector}, {args.res} px, batch {args.batch}, precision {args.precision}")
    rates = {}
    for label, formulation in [("ours (auto)", "auto"), ("reference (cross)", "cross")]:
        times = measure(args, formulation, device)
        med = statistics.median(times)
        spread = (max(times) - min(times)) / 2
        rates[label] = args.batch / med
        print(f"{label:18s} {med * 1000:9.1f} ms/step (+-{spread * 1000:.1f})  "
              f"{rates[label]:9.1f} two-view images/s")
    ours = rates["ours (auto)"]
    hours = 1000 * IMAGENET_TRAIN / ours / 3600
    print(f"1000 ImageNet epochs at this rate: {hours:,.0f} device-hours on {desc['device']}")
    print(f"train step ratio ours/reference: {ours / rates['reference (cross)']:.2f}")


if __name__ == "__main__":
    main()
