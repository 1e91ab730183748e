"""Images/s of one full Barlow Twins pretraining step (forward both views, objective,
backward, LARS) on whatever device is present, ours against a reference-style step,
measured side by side in one run. Synthetic input tensors (the loader is measured by
python -m bench.loader; the whole machine by python -m bench.gpu_check).

ours: the project's step (``ffcv_bt.train.pretrain.barlow_step``): objective formulation chosen by
shape (N x N Gram matrices when the batch is smaller than the embedding), the project's
LARS, no host-device synchronisation inside the step.
reference-style: the same model and precision, written the way the public reference code
runs a step: the d x d cross-correlation objective, a LARS step that loops over parameters
computing each norm and trust ratio separately (as ours does too), and ``loss.item()``
every step (the host waits for the device each step). The objective is computed in
float32 in both, so the two compute the same numbers.

Rounds alternate (ours, reference, ours, ...), so a change in machine load hits both
alike; the figure is the median round. The ratio is printed last:

    python -m bench.train_step --arch resnet50 --res 224 --batch 256          # a GPU
    python -m bench.train_step --arch resnet18 --width 16 --small-stem --res 32 \
        --projector 512-512-512 --batch 128                                  # the CPU demo
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Iterable

import torch

from bench.reference_values import LAMBD, OPTIM
from ffcv_bt.method.lars import LARS, param_groups_for_lars, set_learning_rates
from ffcv_bt.method.model import BarlowTwins
from ffcv_bt.method.objective import barlow_twins_loss, choose_formulation
from ffcv_bt.stage.clock import sync_device
from ffcv_bt.stage.mixed_precision import autocast_dtype
from ffcv_bt.stage.provenance import device_description

IMAGENET_TRAIN = 1_281_167


class PerParameterLARS(torch.optim.Optimizer):
    """LARS written as the reference code writes it: one parameter at a time, weight decay
    and trust ratio skipped for 1-d parameters (biases, BN)."""

    def __init__(self, params: Iterable, lr: float, weight_decay: float, momentum: float,
                 eta: float) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta))

    @torch.no_grad()
    def step(self, closure: Callable | None = None) -> None:  # type: ignore[override]
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                if p.ndim != 1:
                    dp = dp.add(p, alpha=g["weight_decay"])
                    param_norm, update_norm = torch.norm(p), torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(param_norm > 0.0,
                                    torch.where(update_norm > 0, g["eta"] * param_norm / update_norm, one),
                                    one)
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])


def build(args: argparse.Namespace, device: torch.device, reference: bool) -> Callable[[], object]:
    """A closure running one training step of ours or of the reference style."""
    from ffcv_bt.train.step import barlow_step

    torch.manual_seed(0)
    model = BarlowTwins(args.arch, args.projector, width=args.width,
                        small_stem=args.small_stem).to(device)
    channels_last = device.type == "cuda"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    groups = param_groups_for_lars(model)
    opt = (PerParameterLARS if reference else LARS)(groups, lr=0.0, weight_decay=OPTIM.weight_decay,
                                                     momentum=OPTIM.momentum, eta=OPTIM.eta)
    set_learning_rates(opt, args.batch / 256, OPTIM.lr_weights, OPTIM.lr_biases)
    dtype = autocast_dtype(args.precision, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(args.batch, 3, args.res, args.res, generator=g).to(device).contiguous(memory_format=fmt)
    x2 = torch.randn(args.batch, 3, args.res, args.res, generator=g).to(device).contiguous(memory_format=fmt)
    if not reference:
        loss_cfg = {"lambd": LAMBD, "scale_loss": 1.0, "formulation": "auto"}
        return lambda: barlow_step(model, opt, scaler, dtype, loss_cfg, x1, x2)

    def reference_step() -> float:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            z1, z2 = model(x1, x2)
        loss = barlow_twins_loss(z1.float(), z2.float(), lambd=LAMBD, formulation="cross")
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        return loss.item()  # the per-step host-device synchronisation

    return reference_step


def time_block(step: Callable[[], object], steps: int, device: torch.device) -> float:
    """Seconds per step over ``steps`` consecutive steps (one sync at each end)."""
    sync_device(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync_device(device)
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--small-stem", action="store_true")
    parser.add_argument("--projector", default="8192-8192-8192")
    parser.add_argument("--res", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64, help="per-device batch")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each, alternating")
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps = {"ours": build(args, device, reference=False),
             "reference-style": build(args, device, reference=True)}
    if device.type == "cpu":  # importing ffcv set 1 thread; leave a core free, as training does
        from ffcv_bt.distributed.process_group import set_cpu_compute_threads

        set_cpu_compute_threads()
    desc = device_description(device)
    dtype = autocast_dtype(args.precision, device)
    dim = int(args.projector.split("-")[-1])
    print(f"# python -m bench.train_step on {desc['device']} (torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads)")
    print(f"# {args.arch} width {args.width}{' small-stem' if args.small_stem else ''}, "
          f"projector {args.projector}, {args.res} px, batch {args.batch}, autocast "
          f"{dtype or 'off (fp32)'}; ours uses the '{choose_formulation('auto', args.batch, dim)}' "
          f"objective")
    for step in steps.values():
        time_block(step, args.warmup, device)
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            seconds[name].append(time_block(step, args.steps, device))
    rates = {}
    for name, values in seconds.items():
        med = statistics.median(values)
        rates[name] = args.batch / med
        print(f"{name:16s} {med * 1000:9.1f} ms/step [{min(values) * 1000:.1f}-"
              f"{max(values) * 1000:.1f}]  {rates[name]:9.1f} two-view images/s")
    hours = 1000 * IMAGENET_TRAIN / rates["ours"] / 3600
    print(f"1000 ImageNet epochs at our rate: {hours:,.0f} device-hours on {desc['device']}")
    print(f"train step ratio ours/reference-style: {rates['ours'] / rates['reference-style']:.2f}")


if __name__ == "__main__":
    main()
