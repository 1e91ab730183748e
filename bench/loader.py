"""Two-view loader throughput: ours (FFCV, decode once) against the reference PIL pipeline.

Claim measured: on the same JPEGs with the same number of workers, our FFCV two-view Barlow
Twins loader delivers several times the augmented pairs per second of the reference
torchvision + PIL DataLoader, and approaches the bound set by JPEG decoding alone.

Prints, in one run: (a) ours (per-view ops fused into one FFCV op, ``ffcv_bt.augment.fused``),
pairs/s; (b) the reference (PIL RandomResizedCrop bicubic,
flip, ColorJitter p=0.8, grayscale 0.2, blur 1.0/0.1, solarize 0.0/0.2, ToTensor,
Normalize; torch DataLoader), pairs/s; (c) FFCV decode + one random-resized crop without
augmentation, images/s; (d) ours with FFCV's stock two pipelines (each image decoded twice),
pairs/s. Epochs run round robin (one of each pipeline per round) so that load changes on a
shared machine hit all pipelines alike. The first (JIT-compiling / worker-starting) epoch
is shown apart; the figures are the median [min-max] of the following epochs. Our
pipelines normalise on the CPU here, in the main thread; (a') shows ours without that
step, as a GPU machine (which normalises on the device) would see it. (e) is ours with
``aug.device: gpu``: the workers decode, crop, flip and emit each view's decisions, and the
other ops run on the training device; (e) times the workers' part. Then: the CPU cost per
pair of both modes in worker core-milliseconds (workers / rate of (a') and (e)), the time
per pair of the device-side ops on the training device (CUDA when present, else this CPU,
one torch thread), and the loader ratios of (a), (a') and (e).

Usage: python -m bench.loader [--data IMAGEFOLDER] [--res 224] [--workers 2] [--epochs 3]
Without --data, ~2000 synthetic photo-like JPEGs (about 256x340, quality 90) are generated
once into the cache folder.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from PIL import Image, ImageFilter, ImageOps
from tqdm import tqdm

from bench.synthetic_images import smooth_photo_folder

if TYPE_CHECKING:
    import torch

DEFAULT_CACHE = Path(__file__).resolve().parent.parent / "data" / "bench-cache"


# ----- the images --------------------------------------------------------------------------------
def folder_samples(folder: Path, limit: int | None) -> list:
    from ffcv_bt.data.image_folder import list_classes, scan_split

    classes, _ = list_classes(folder)
    samples, _ = scan_split(folder, classes)
    if not samples:
        raise SystemExit(f"--data {folder}: no images found in its class subfolders")
    return samples[:limit] if limit else samples


def beton_for(samples: list, cache: Path, workers: int) -> Path:
    """The samples as a JPEG (quality 90) .beton in the cache, written once."""
    from ffcv_bt.data.write import write_beton

    key = hashlib.sha1("\n".join(str(s.path) for s in samples).encode()).hexdigest()[:12]
    path = cache / f"bench-{len(samples)}-{key}.beton"
    if not path.exists():
        write_beton(samples, path, write_mode="jpg", max_resolution=None, compress_probability=1.0,
                    jpeg_quality=90, num_workers=workers, chunk_size=32, seed=0)
    return path


# ----- the reference pipeline (PIL + torchvision, as the Barlow Twins release) ------------------
class RandomPILBlur:
    """PIL Gaussian blur of radius sigma ~ U(0.1, 2.0) with probability p (the reference's)."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, image: Image.Image) -> Image.Image:
        if random.random() < self.p:
            return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))
        return image


class RandomPILSolarize:
    """PIL solarize at 128 with probability p (the reference's)."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, image: Image.Image) -> Image.Image:
        return ImageOps.solarize(image) if random.random() < self.p else image


def reference_view(res: int, blur_p: float, solarize_p: float):
    from torchvision import transforms as T

    return T.Compose([
        T.RandomResizedCrop(res, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(p=0.5),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        RandomPILBlur(blur_p),
        RandomPILSolarize(solarize_p),
        T.ToTensor(),
        T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])


class ReferencePairs:
    """(view1, view2) of each image file, decoded by PIL: the reference data set."""

    def __init__(self, paths: list[Path], res: int):
        self.paths = paths
        self.first = reference_view(res, blur_p=1.0, solarize_p=0.0)
        self.second = reference_view(res, blur_p=0.1, solarize_p=0.2)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = Image.open(self.paths[index]).convert("RGB")
        return self.first(image), self.second(image)


# ----- timing ----------------------------------------------------------------------------------
def time_epoch(iterable: Iterable, label: str) -> float:
    """Items (first dimension of each batch's first tensor) per second over one pass."""
    start = time.perf_counter()
    items = 0
    for batch in tqdm(iterable, desc=label, leave=False):
        items += len(batch[0])
    return items / (time.perf_counter() - start)


def summary(name: str, unit: str, rates: list[float]) -> str:
    steady = rates[1:]
    return (f"{name:<44} {unit:<9} {rates[0]:>9.0f} {statistics.median(steady):>9.0f} "
            f"[{min(steady):.0f}-{max(steady):.0f}]")


def device_ms_per_pair(loader, device: str, repeats: int = 3) -> float:
    """Milliseconds per pair of the device-side ops (``aug.device: gpu``) on ``device``,
    over a few batches of ``loader``'s raw (uint8 views, decisions) output."""
    import torch

    from ffcv_bt.augment.device_augment import augment_views

    batches = []
    for images, params in loader.ffcv_loader:
        batches.append((images.to(device).clone(), params.clone()))
        if len(batches) == 4:
            break
    threshold = loader.solarize_threshold

    def run() -> None:
        for images, params in batches:
            for v in range(2):
                augment_views(images[:, v], params[:, v], threshold)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a CPU: one core, as one GPU process would have spare
    try:
        run()  # warm up (CUDA kernels, allocator)
        start = time.perf_counter()
        for _ in range(repeats):
            run()
    finally:
        torch.set_num_threads(threads)
    pairs = repeats * sum(len(images) for images, _ in batches)
    return 1000 * (time.perf_counter() - start) / pairs


# ----- the GPU check's loader phase (bench.gpu_check c) ---------------------------------------
def loader_benchmark(loader: Any, resolutions: list[int], min_seconds: float) -> dict[str, float]:
    """Pairs/s of the FFCV two-view loader (uint8 pairs, no device work) per resolution:
    one untimed pass after each resolution change, then passes until ``min_seconds``."""
    rates = {}
    for res in resolutions:
        loader.set_resolution(res)
        for _ in loader.ffcv_loader:
            pass
        pairs, seconds, passes = 0, 0.0, 0
        while passes == 0 or (seconds < min_seconds and passes < 20):
            start = time.perf_counter()
            for batch in loader.ffcv_loader:
                pairs += batch[0].shape[0]
            seconds += time.perf_counter() - start
            passes += 1
        rates[res] = pairs / seconds
        print(f"  loader {res:>4} px: {rates[res]:,.0f} pairs/s with {loader_workers(loader)} "
              f"cores", flush=True)
    return rates


def device_augment_check(beton: Path, device: torch.device, resolutions: list[int],
                         batch: int, workers: int, min_seconds: float) -> dict[str, Any]:
    """``aug.device: gpu`` on this machine: its views against the numba path's (levels), the
    workers' pairs/s (their passes alone) and the device-side ops' milliseconds per pair (a
    pass of their own) at each resolution."""
    import torch

    from ffcv_bt.augment.device_augment import augment_views
    from ffcv_bt.config import RULES_DIR, load_recipe
    from ffcv_bt.data.normalize import IMAGENET_STD
    from ffcv_bt.data.pretrain_loader import AugmentationParams, make_pretrain_loader
    from ffcv_bt.stage.clock import sync_device

    aug = AugmentationParams.from_config(load_recipe(RULES_DIR / "base.yaml").aug)
    common = dict(batch_size_per_rank=batch, num_workers=workers, aug=aug,
                  res=resolutions[0], seed=0, device=device, order="sequential")
    numba_path = make_pretrain_loader(beton, augment_on="cpu", **common)
    device_path = make_pretrain_loader(beton, augment_on="gpu", **common)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    worst, compared = 0.0, 0
    for numba_batch, device_batch in zip(numba_path, device_path):
        for a, b in zip(numba_batch, device_batch):
            worst = max(worst, float(((a - b).abs() * std * 255).max()))
        compared += 1
        if compared == 3:
            break
    record: dict[str, Any] = {"max_level_difference_to_numba_path": worst,
                              "ok": worst <= 1.0, "workers_pairs_per_s": {}, "device_ms_per_pair": {}}
    for res in resolutions:
        device_path.set_resolution(res)
        for _ in device_path.ffcv_loader:  # untimed: reallocation after the change
            pass
        # The workers alone: whole passes, wall time, the loop doing nothing else. (Timing
        # only the waits between device ops overstated them: FFCV decodes ahead meanwhile.)
        pairs, seconds = 0, 0.0
        while pairs == 0 or seconds < min_seconds:
            start = time.perf_counter()
            for images, _ in device_path.ffcv_loader:
                pairs += images.shape[0]
            seconds += time.perf_counter() - start
        record["workers_pairs_per_s"][str(res)] = pairs / seconds
        done, device_seconds = 0, 0.0  # then the device ops alone, batch by batch
        for images, params in device_path.ffcv_loader:
            on_device = images.to(device)
            sync_device(device)
            began = time.perf_counter()
            for v in range(2):
                augment_views(on_device[:, v], params[:, v], aug.solarize_threshold)
            sync_device(device)
            device_seconds += time.perf_counter() - began
            done += images.shape[0]
        record["device_ms_per_pair"][str(res)] = 1000 * device_seconds / done
        print(f"  aug.device gpu {res:>4} px: workers {pairs / seconds:,.0f} pairs/s, device ops "
              f"{1000 * device_seconds / done:.3f} ms per pair", flush=True)
    print(f"  aug.device gpu vs cpu: views at most {worst:g} levels apart "
          f"({'ok' if record['ok'] else 'MISMATCH'})", flush=True)
    return record


def loader_workers(loader: Any) -> int:
    """The FFCV worker threads of a two-view loader."""
    return int(loader.ffcv_loader.num_workers)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="ImageFolder dir (<class>/<image>.jpg); "
                        "default: synthetic JPEGs")
    parser.add_argument("--res", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after the first")
    parser.add_argument("--images", type=int, default=2000, help="images to use")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help="where synthetic images and .beton files are kept")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.workers < 1 or args.images < args.batch_size:
        raise SystemExit("need --epochs >= 1, --workers >= 1 and --images >= --batch-size")
    args.cache.mkdir(parents=True, exist_ok=True)

    folder = args.data if args.data else smooth_photo_folder(args.cache, args.images)
    if not folder.is_dir():
        raise SystemExit(f"--data {folder}: not a directory")
    samples = folder_samples(folder, args.images)
    beton = beton_for(samples, args.cache, args.workers)

    import torch
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import ToTensor

    from ffcv_bt.config import RULES_DIR, load_recipe
    from ffcv_bt.data.pretrain_loader import AugmentationParams, make_pretrain_loader

    reference_aug = AugmentationParams.from_config(load_recipe(RULES_DIR / "base.yaml").aug)
    common = dict(batch_size_per_rank=args.batch_size, num_workers=args.workers,
                  aug=reference_aug, res=args.res, seed=0, device="cpu")
    ours = make_pretrain_loader(beton, **common)  # per-view ops fused (ffcv_bt/augment/fused.py)
    twice = make_pretrain_loader(beton, decode_once=False, **common)
    on_device = make_pretrain_loader(beton, augment_on="gpu", **common)
    decode_only = Loader(str(beton), batch_size=args.batch_size, num_workers=args.workers,
                         order=OrderOption.RANDOM, seed=0, drop_last=True,
                         pipelines={"image": [RandomResizedCropRGBImageDecoder((args.res, args.res)),
                                              ToTensor()], "label": None})
    reference = torch.utils.data.DataLoader(
        ReferencePairs([s.path for s in samples], args.res), batch_size=args.batch_size,
        shuffle=True, num_workers=args.workers, drop_last=True, persistent_workers=True)
    # 1 torch thread for our CPU-side normalisation, leaving the cores to the numba workers
    # (each reference DataLoader worker also uses 1). Our loaders keep the caller's count.
    torch.set_num_threads(1)
    pipelines = {  # name -> (iterable of one pass, unit)
        "(a) ours: decode once, two augmented views": (lambda: ours, "pairs/s"),
        "(a') ours, uint8 views before normalising": (lambda: ours.ffcv_loader, "pairs/s"),
        "(b) reference: PIL + torchvision DataLoader": (lambda: reference, "pairs/s"),
        "(c) bound: FFCV decode + 1 crop, no aug": (lambda: decode_only, "images/s"),
        "(d) ours with FFCV stock 2 pipelines": (lambda: twice, "pairs/s"),
        "(e) ours, aug.device gpu: the workers' part": (lambda: on_device.ffcv_loader, "pairs/s"),
    }
    # Round robin, one epoch of each per round, so a change in machine load hits all alike.
    rates: dict[str, list[float]] = {name: [] for name in pipelines}
    for round_ix in range(args.epochs + 1):
        for name, (make_iterable, _) in pipelines.items():
            rates[name].append(time_epoch(make_iterable(), f"{name[:4]} epoch {round_ix}"))

    cpu = platform.processor() or platform.machine()
    print(f"\nloader benchmark: {len(samples)} JPEGs from {folder}, {args.res} px, "
          f"{args.workers} workers, batch {args.batch_size}, {os.cpu_count()} CPUs ({cpu}), "
          f"torch {torch.__version__}")
    print(f"{'pipeline':<44} {'unit':<9} {'1st epoch':>9} {'median':>9} [min-max over {args.epochs}]")
    for name, (_, unit) in pipelines.items():
        print(summary(name, unit, rates[name]))
    ours_median = statistics.median(rates["(a) ours: decode once, two augmented views"][1:])
    reference_median = statistics.median(rates["(b) reference: PIL + torchvision DataLoader"][1:])
    decode_median = statistics.median(rates["(c) bound: FFCV decode + 1 crop, no aug"][1:])
    cpu_mode = statistics.median(rates["(a') ours, uint8 views before normalising"][1:])
    gpu_mode = statistics.median(rates["(e) ours, aug.device gpu: the workers' part"][1:])
    print(f"CPU cost per pair (worker core-ms): aug.device cpu {1000 * args.workers / cpu_mode:.2f}, "
          f"aug.device gpu {1000 * args.workers / gpu_mode:.2f} ({gpu_mode / cpu_mode:.2f}x fewer)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else "this CPU (1 torch thread)"
    print(f"device-side ops of aug.device gpu on {name}: "
          f"{device_ms_per_pair(on_device, device):.3f} ms per pair")
    print(f"loader ratio ours/reference: {ours_median / reference_median:.2f} "
          f"(decode-bound fraction: {ours_median / decode_median:.2f})")
    print(f"loader ratio ours, uint8 as a GPU machine sees it (a')/reference: "
          f"{cpu_mode / reference_median:.2f} (decode-bound fraction: {cpu_mode / decode_median:.2f})")
    print(f"loader ratio ours with aug.device gpu (workers' part)/reference: "
          f"{gpu_mode / reference_median:.2f} (decode-bound fraction: {gpu_mode / decode_median:.2f})")


if __name__ == "__main__":
    main()
