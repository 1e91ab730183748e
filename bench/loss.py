"""Time and peak memory of the Barlow Twins objective, forward + backward, in float32:
our formulations (Gram N x N, d x d cross-correlation, and the one "auto" picks) against the
reference's d x d computation (BatchNorm1d, c = bn(z1).T @ bn(z2) / N, off-diagonal view).

    python -m bench.loss                        # CPU default: d=2048, N=128 (< 1 min)
    python -m bench.loss --d 8192 --batch 256   # the reference's size (GPU default)

Memory is measured where it can be: on CUDA, growth of torch.cuda.max_memory_allocated over
the allocation before the call; on CPU, growth of the peak resident set size (ru_maxrss) of
a fresh process per method over its size just before the call (allocator caching included).
The last line is the ratio reference / ours(auto).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time

import psutil
import torch
from torch import nn

from bench.reference_values import LAMBD
from ffcv_bt.method.objective import barlow_twins_loss, choose_formulation
from ffcv_bt.stage.clock import sync_device
from ffcv_bt.stage.provenance import device_description


def reference_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = LAMBD) -> torch.Tensor:
    """The reference's way: a BatchNorm1d module, the full d x d matrix, in-place tail ops."""
    n, d = z1.shape
    bn = nn.BatchNorm1d(d, affine=False).to(z1.device)
    c = bn(z1).T @ bn(z2)
    c.div_(n)
    on_diag = torch.diagonal(c).add_(-1).pow_(2).sum()
    # off-diagonal entries: drop the first element, rows of d+1 end on a diagonal entry
    off_diag = c.flatten()[1:].view(d - 1, d + 1)[:, :-1].pow_(2).sum()
    return on_diag + lambd * off_diag


def loss_fn(method: str):
    if method == "reference":
        return reference_loss
    return lambda z1, z2: barlow_twins_loss(z1, z2, lambd=LAMBD, formulation=method)


def inputs(d: int, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(0)
    z1 = torch.randn(n, d, generator=g, device=device)
    z2 = 0.5 * z1 + torch.randn(n, d, generator=g, device=device)
    return z1.requires_grad_(True), z2.requires_grad_(True)


def forward_backward(fn, z1: torch.Tensor, z2: torch.Tensor) -> float:
    z1.grad = z2.grad = None
    loss = fn(z1, z2)
    loss.backward()
    return loss.item()


def measure(method: str, d: int, n: int, repeats: int, device_name: str, threads: int) -> dict:
    """Peak memory growth of the first call, then the median time of ``repeats`` calls."""
    device = torch.device(device_name)
    if threads:
        torch.set_num_threads(threads)
    fn = loss_fn(method)
    z1, z2 = inputs(d, n, device)
    if device.type == "cuda":
        sync_device(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        loss = forward_backward(fn, z1, z2)
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        base = max(psutil.Process().memory_info().rss,
                   resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        loss = forward_backward(fn, z1, z2)
        peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base, 0)
    times = []
    for _ in range(repeats):
        sync_device(device)
        start = time.perf_counter()
        forward_backward(fn, z1, z2)
        sync_device(device)
        times.append(time.perf_counter() - start)
    return {"loss": loss, "peak_bytes": peak, "median_s": statistics.median(times),
            "spread_s": (max(times) - min(times)) / 2}


def measure_isolated(method: str, d: int, n: int, repeats: int, device: torch.device,
                     threads: int) -> dict:
    """CPU: one fresh process per method, so its peak RSS is this method's alone."""
    if device.type == "cuda":
        return measure(method, d, n, repeats, str(device), threads)
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure, (method, d, n, repeats, str(device), threads))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=None, help="embedding dim (8192 GPU, 2048 CPU)")
    parser.add_argument("--batch", type=int, default=None, help="batch N (256 GPU, 128 CPU)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default; 1 is steadier on a busy "
                        "machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    d = args.d or (8192 if device.type == "cuda" else 2048)
    n = args.batch or (256 if device.type == "cuda" else 128)
    chosen = choose_formulation("auto", n, d)
    memory_kind = ("torch.cuda.max_memory_allocated growth" if device.type == "cuda"
                   else "peak RSS growth of a fresh process")
    print(f"# python -m bench.loss on {device_description(device)['device']} "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")
    print(f"# Barlow Twins objective, float32 forward+backward, d={d} N={n}, "
          f"median of {args.repeats} after 1 warm-up; memory: {memory_kind}")
    print(f"# auto picks {chosen!r} (gram when N < d)")
    print(f"{'method':22s} {'time ms':>10s} {'(+-)':>8s} {'peak MiB':>10s} {'loss':>14s} "
          f"{'rel. diff':>10s}")
    results = {}
    for method in ("reference", "cross", "gram"):
        results[method] = r = measure_isolated(method, d, n, args.repeats, device, args.threads)
        label = "reference (d x d)" if method == "reference" else f"ours {method}"
        diff = abs(r["loss"] - results["reference"]["loss"]) / abs(results["reference"]["loss"])
        print(f"{label:22s} {r['median_s'] * 1e3:10.2f} {r['spread_s'] * 1e3:8.2f} "
              f"{r['peak_bytes'] / 2**20:10.1f} {r['loss']:14.6f} {diff:10.1e}")
    ref, ours = results["reference"], results[chosen]
    mem_ratio = ref["peak_bytes"] / ours["peak_bytes"] if ours["peak_bytes"] > 0 else float("nan")
    print(f"loss ratio reference/ours time: {ref['median_s'] / ours['median_s']:.2f} "
          f"memory: {mem_ratio:.2f}")


if __name__ == "__main__":
    main()
