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

The GPU check (bench.gpu_check) times the same project step at its own settings with
``step_benchmark`` and, under torchrun, ``run_steps`` (below).
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from types import SimpleNamespace
from typing import Any, Callable, Iterable

import torch

from bench.gpu_plan import Plan
from bench.reference_values import LAMBD, OPTIM
from ffcv_bt.method.lars import LARS, param_groups_for_lars, set_learning_rates
from ffcv_bt.method.model import BarlowTwins
from ffcv_bt.method.objective import barlow_twins_loss, choose_formulation
from ffcv_bt.stage.clock import sync_device
from ffcv_bt.stage.mixed_precision import autocast_dtype
from ffcv_bt.stage.provenance import device_description

IMAGENET_TRAIN = 1_281_167
LOSS = {"lambd": LAMBD, "scale_loss": 1.0, "formulation": "auto"}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


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


def peak_lars(model: torch.nn.Module, batch: int, optimizer: type = LARS) -> torch.optim.Optimizer:
    """``optimizer`` (the project's LARS) over the model's LARS groups with the reference
    recipe's settings, at the peak learning rate (after warmup) for ``batch``."""
    opt = optimizer(param_groups_for_lars(model), lr=0.0, weight_decay=OPTIM.weight_decay,
                    momentum=OPTIM.momentum, eta=OPTIM.eta)
    set_learning_rates(opt, batch / 256, OPTIM.lr_weights, OPTIM.lr_biases)
    return opt


def build(args: argparse.Namespace, device: torch.device, reference: bool) -> Callable[[], object]:
    """A closure running one training step of ours or of the reference style."""
    from ffcv_bt.train.step import barlow_step

    torch.manual_seed(0)
    model = BarlowTwins(args.arch, args.projector, width=args.width,
                        small_stem=args.small_stem).to(device)
    channels_last = device.type == "cuda"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = peak_lars(model, args.batch, PerParameterLARS if reference else LARS)
    dtype = autocast_dtype(args.precision, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(args.batch, 3, args.res, args.res, generator=g).to(device).contiguous(memory_format=fmt)
    x2 = torch.randn(args.batch, 3, args.res, args.res, generator=g).to(device).contiguous(memory_format=fmt)
    if not reference:
        return lambda: barlow_step(model, opt, scaler, dtype, LOSS, x1, x2)

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


# ----- the step at a GPU check's settings (bench.gpu_check a and b) ----------------------------
def step_harness(model: torch.nn.Module, wrapped: torch.nn.Module, device: torch.device,
                 precision: str, batch: int) -> SimpleNamespace:
    """What ``ffcv_bt.train.pretrain.barlow_step`` takes, bundled (see project_step)."""
    opt = peak_lars(model, batch)
    dtype = DTYPES[precision] if device.type == "cuda" else None
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return SimpleNamespace(recipe=SimpleNamespace(loss=LOSS), device=device, amp_dtype=dtype,
                           ddp_model=wrapped, optimizer=opt, scaler=scaler)


def project_step(harness: SimpleNamespace, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
    """The project's own pretraining step (ffcv_bt.train.pretrain.barlow_step) on the harness."""
    from ffcv_bt.train.step import barlow_step

    return barlow_step(harness.ddp_model, harness.optimizer, harness.scaler, harness.amp_dtype,
                       harness.recipe.loss, view1, view2)


def repeated_batch(batch: int, res: int, device: torch.device, seed: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Two correlated 'views' (the second a flipped, noisier copy of the first)."""
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(batch, 3, res, res, generator=g)
    x2 = x1.flip(3) + 0.3 * torch.randn(batch, 3, res, res, generator=g)
    return x1.to(device), x2.to(device)


def run_steps(harness: SimpleNamespace, x1: torch.Tensor, x2: torch.Tensor, warmup: int,
              steps: int) -> dict[str, Any]:
    """``warmup`` untimed then ``steps`` timed calls of the project's step; losses kept on
    the device until the end (no per-step sync, as in training)."""

    device = harness.device
    losses = []
    start = time.perf_counter()
    for _ in range(warmup):
        losses.append(project_step(harness, x1, x2))
    sync_device(device)
    first_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        losses.append(project_step(harness, x1, x2))
    sync_device(device)
    seconds = time.perf_counter() - start
    values = [float(v) for v in torch.stack(losses).double().cpu()]
    finite = all(math.isfinite(v) for v in values)
    return {"images_per_s": x1.shape[0] * steps / seconds, "seconds_per_step": seconds / steps,
            "warmup_seconds": first_seconds, "losses": values, "finite": finite,
            "falling": finite and statistics.mean(values[-3:]) < values[0]}


def step_benchmark(plan: Plan, device: torch.device, compile_deadline: float = math.inf
                   ) -> list[dict[str, Any]]:
    """Every (resolution, channels_last, precision) eagerly, then torch.compile of the best
    eager setting at ``plan.compile_res`` (skipped once ``time.perf_counter()`` passes
    ``compile_deadline``: compiling takes minutes); one record per setting."""
    from ffcv_bt.method.model import BarlowTwins

    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as training sets it (fixed shapes per resolution)
    model = BarlowTwins(plan.arch, plan.projector, width=plan.width).to(device)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    records: list[dict[str, Any]] = []

    def measure(res: int, channels_last: bool, precision: str, compiled: bool) -> dict[str, Any]:
        record = {"res": res, "precision": precision, "channels_last": channels_last,
                  "compile": compiled}
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        try:
            model.to(memory_format=fmt)
            model.load_state_dict(initial)
            wrapped: torch.nn.Module = model
            if compiled:
                torch._dynamo.reset()
                wrapped = torch.compile(model, dynamic=False)
            harness = step_harness(model, wrapped, device, precision, plan.batch)
            x1, x2 = repeated_batch(plan.batch, res, device)
            x1, x2 = x1.contiguous(memory_format=fmt), x2.contiguous(memory_format=fmt)
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            record.update(run_steps(harness, x1, x2, plan.warmup, plan.steps))
            record["peak_memory_gib"] = (torch.cuda.max_memory_allocated(device) / 2**30
                                         if device.type == "cuda" else None)
        except torch.cuda.OutOfMemoryError:
            record["error"] = "out of memory"
        except Exception as exc:  # noqa: BLE001 - a variant that fails is reported, not fatal
            record["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        finally:
            harness = x1 = x2 = None  # noqa: F841 - free the optimiser state and inputs
            if device.type == "cuda":
                torch.cuda.empty_cache()
        line = (f"  step {res:>4} px {precision} {'channels_last' if channels_last else 'contiguous'}"
                f"{' compiled' if compiled else ''}: ")
        print(line + (f"{record['images_per_s']:,.1f} images/s, loss {record['losses'][0]:.4g} -> "
                      f"{record['losses'][-1]:.4g}" if "error" not in record else record["error"]),
              flush=True)
        return record

    for res in plan.resolutions:
        for channels_last in plan.channels_last:
            for precision in plan.precisions:
                records.append(measure(res, channels_last, precision, False))
    for res in plan.compile_res:
        eager = best_of([r for r in records if r["res"] == res])
        if time.perf_counter() > compile_deadline:
            print(f"  step {res:>4} px compiled: skipped (time budget)", flush=True)
        elif eager is not None:
            records.append(measure(res, eager["channels_last"], eager["precision"], True))
    torch._dynamo.reset()
    model = initial = None  # free the model before returning
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return records


def good(record: dict[str, Any]) -> bool:
    return "error" not in record and record["finite"]


def best_of(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    candidates = [r for r in records if good(r)]
    return max(candidates, key=lambda r: r["images_per_s"]) if candidates else None


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
