"""Barlow Twins written independently of the harness, on the demo's images, as a check of
what the harness's pretraining learns per step.

Nothing of the harness's training path is used: images come from Debian's Fashion-MNIST
idx files (the same first N per class that ``write_dataset.py --demo`` converts), views
from plain torchvision transforms on uint8 tensors (RandomResizedCrop, flip; the
harness's colour ops are no-ops on grey images apart from brightness/contrast, kept here
as torchvision's ColorJitter), the loss written out after the paper's equation (as
lightly's ``BarlowTwinsLoss``: per-view standardisation over the batch, on-diagonal
``(1 - c_ii)^2``, off-diagonal ``lambd * c_ij^2``), and a plain LARS (the reference's:
trust ratio ``eta * |w| / |g|`` on weights, none on biases and BN). Only the backbone
builder is shared, so that both train the same network.

Both the independent run and, optionally, a harness checkpoint (``--harness PATH``) are
evaluated by the same kNN here (k = 20, T = 0.07, cosine, bilinear resize to 32 px), beside
a standard-init random network and the raw pixels, so the numbers compare side by side.

    python -m bench.independent_bt --steps 320 --seeds 0,1,2
    python -m bench.independent_bt --steps 320 --scale-min 0.08 --stem imagenet --res 24
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import v2

from ffcv_bt.data.fashion_mnist import FASHION_MNIST_DIR, SOURCE_FILES, read_idx
from ffcv_bt.method.model import build_backbone

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST pixel statistics (standard values)


def demo_images(split: str, per_class: int) -> tuple[Tensor, Tensor]:
    """The first ``per_class`` images of each class (as the demo's conversion picks them),
    uint8 (N, 1, 28, 28), and their labels."""
    images = read_idx(FASHION_MNIST_DIR / SOURCE_FILES[split][0])
    labels = read_idx(FASHION_MNIST_DIR / SOURCE_FILES[split][1])
    chosen = np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)]))
    return torch.from_numpy(images[chosen].copy())[:, None], torch.from_numpy(labels[chosen].astype(np.int64))


def view_transform(res: int, scale_min: float, jitter_p: float) -> v2.Compose:
    return v2.Compose([
        v2.RandomResizedCrop(res, scale=(scale_min, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4)], p=jitter_p),
    ])


def to_input(images_u8: Tensor) -> Tensor:
    """uint8 (B, 1, H, W) -> normalised float (B, 3, H, W), as a grey image saved as RGB."""
    x = (images_u8.float() / 255 - MEAN) / STD
    return x.expand(-1, 3, -1, -1).contiguous()


def barlow_loss(z1: Tensor, z2: Tensor, lambd: float) -> Tensor:
    """The paper's equation: standardise each view over the batch, cross-correlation c."""
    n = z1.shape[0]
    a = (z1 - z1.mean(0)) / z1.std(0, unbiased=False).add(1e-5)
    b = (z2 - z2.mean(0)) / z2.std(0, unbiased=False).add(1e-5)
    c = a.T @ b / n
    on = (torch.diagonal(c) - 1).pow(2).sum()
    off = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on + lambd * off


class PlainLARS(torch.optim.Optimizer):
    """SGD with momentum; weights (ndim > 1) get weight decay and the trust ratio."""

    def __init__(self, params, lr: float, weight_decay: float, momentum: float = 0.9,
                 eta: float = 0.02) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta))

    @torch.no_grad()
    def step(self) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if p.ndim > 1:
                    d = d.add(p, alpha=g["weight_decay"])
                    wn, dn = p.norm(), d.norm()
                    if wn > 0 and dn > 0:
                        d = d * (g["eta"] * wn / dn)
                buf = self.state[p].setdefault("mu", torch.zeros_like(p))
                buf.mul_(g["momentum"]).add_(d)
                p.add_(buf, alpha=-g["lr"])


def knn_top1(bank: Tensor, bank_labels: Tensor, queries: Tensor, labels: Tensor,
             k: int = 20, t: float = 0.07) -> float:
    bank, queries = F.normalize(bank, dim=1), F.normalize(queries, dim=1)
    sim, idx = (queries @ bank.T).topk(k, dim=1)
    scores = torch.zeros(len(queries), 10).scatter_add_(1, bank_labels[idx], (sim / t).exp())
    return 100.0 * (scores.argmax(1) == labels).float().mean().item()


@torch.no_grad()
def features(net: nn.Module, images_u8: Tensor, res: int) -> Tensor:
    net.eval()
    out = []
    for i in range(0, len(images_u8), 500):
        x = to_input(images_u8[i:i + 500])
        out.append(net(F.interpolate(x, size=res, mode="bilinear", antialias=True, align_corners=False)))
    return torch.cat(out)


def evaluate(net: nn.Module, data: dict, res: int) -> float:
    return knn_top1(features(net, data["train"], res), data["train_labels"],
                    features(net, data["val"], res), data["val_labels"])


def pretrain(args: argparse.Namespace, seed: int, data: dict, log: bool = True) -> list[tuple[int, float]]:
    torch.manual_seed(seed)
    backbone, dim = build_backbone("resnet18", width=args.width, small_stem=args.stem == "small",
                                   zero_init_residual=True)
    dims = [dim] + [int(d) for d in args.projector.split("-")]
    layers: list[nn.Module] = []
    for i in range(len(dims) - 2):
        layers += [nn.Linear(dims[i], dims[i + 1], bias=False), nn.BatchNorm1d(dims[i + 1]), nn.ReLU()]
    layers.append(nn.Linear(dims[-2], dims[-1], bias=False))
    model = nn.Sequential(backbone, *layers)
    lr = args.lr * args.batch / 256
    opt = PlainLARS(model.parameters(), lr=lr, weight_decay=args.wd, eta=args.eta)
    t1 = view_transform(args.res, args.scale_min, 0.8)
    t2 = view_transform(args.res, args.scale_min, 0.8)
    g = torch.Generator().manual_seed(seed)
    curve, n = [], len(data["train"])
    warmup = max(1, int(0.1 * args.steps))
    step = 0
    start = time.time()
    while step < args.steps:
        order = torch.randperm(n, generator=g)
        for i in range(0, n - args.batch + 1, args.batch):
            if step >= args.steps:
                break
            if step % args.eval_every == 0:
                curve.append((step, evaluate(backbone, data, args.eval_res)))
            batch = data["train"][order[i:i + args.batch]]
            x1 = to_input(torch.stack([t1(im) for im in batch]))
            x2 = to_input(torch.stack([t2(im) for im in batch]))
            frac = step / args.steps
            scale = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * frac))
            for group in opt.param_groups:
                group["lr"] = lr * scale
            model.train()
            loss = args.scale_loss * barlow_loss(model(x1), model(x2), args.lambd)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    curve.append((step, evaluate(backbone, data, args.eval_res)))
    if log:
        print(f"  seed {seed}: kNN over steps {[(s, round(a, 2)) for s, a in curve]} "
              f"({time.time() - start:.0f} s)", flush=True)
    return curve


def harness_knn(path: str, data: dict, args: argparse.Namespace) -> float:
    from ffcv_bt.evaluation.backbone_weights import load_backbone
    net, _ = load_backbone(path, "resnet18", width=args.width, small_stem=args.stem == "small")
    return evaluate(net, data, args.eval_res)


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.2f} ± {sd:.2f} (n={len(values)})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-per-class", type=int, default=1000)
    p.add_argument("--val-per-class", type=int, default=200)
    p.add_argument("--steps", type=int, default=320)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--res", type=int, default=24, help="pretraining view size")
    p.add_argument("--eval-res", type=int, default=32)
    p.add_argument("--scale-min", type=float, default=0.08)
    p.add_argument("--stem", choices=("imagenet", "small"), default="imagenet")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--projector", default="1024-1024")
    p.add_argument("--lr", type=float, default=0.3)
    p.add_argument("--wd", type=float, default=1e-4)
    p.add_argument("--eta", type=float, default=0.02)
    p.add_argument("--lambd", type=float, default=0.0051)
    p.add_argument("--scale-loss", type=float, default=0.1)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--eval-every", type=int, default=80)
    p.add_argument("--harness", nargs="*", default=[], help="harness backbones (<arch>.pth) to "
                   "evaluate with the same kNN")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tr, trl = demo_images("train", args.train_per_class)
    va, val = demo_images("val", args.val_per_class)
    data = {"train": tr, "train_labels": trl, "val": va, "val_labels": val}
    print(f"{len(tr)} train / {len(va)} val images; {vars(args)}", flush=True)
    flat = lambda u8: F.interpolate(to_input(u8), size=args.eval_res, mode="bilinear",
                                    antialias=True, align_corners=False).flatten(1)
    print(f"raw pixels at {args.eval_res} px: {knn_top1(flat(tr), trl, flat(va), val):.2f}")
    seeds = [int(s) for s in args.seeds.split(",")]
    randoms = []
    for s in seeds:
        torch.manual_seed(s)
        net, _ = build_backbone("resnet18", width=args.width, small_stem=args.stem == "small",
                                zero_init_residual=False)
        randoms.append(evaluate(net, data, args.eval_res))
    print(f"random network (standard init): {mean_sd(randoms)}", flush=True)
    finals = [pretrain(args, s, data)[-1][1] for s in seeds]
    print(f"independent Barlow Twins, {args.steps} steps: {mean_sd(finals)}")
    if args.harness:
        print(f"harness checkpoints, same kNN: {mean_sd([harness_knn(h, data, args) for h in args.harness])}")


if __name__ == "__main__":
    main()
