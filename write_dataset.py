"""Convert ImageNet-style image folders into FFCV .beton files, label subsets and a manifest.

    python write_dataset.py --data-dir /data/imagenet --out-dir /data/ffcv-imagenet
    python write_dataset.py --demo fashion-mnist --out-dir data/fashion-mnist
    python write_dataset.py --data-dir /data/imagenet --classes imagenet100 --out-dir /data/ffcv-in100

See ffcv_bt/data/write.py for what is written and how images are brought to RGB.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ffcv_bt.data.image_folder import IMAGENET100, read_class_list
from ffcv_bt.data.label_subsets import SUBSET_PERCENTS
from ffcv_bt.data.write import WRITE_MODES, default_num_workers, write_dataset


def parse_subset_file(text: str) -> tuple[int, str]:
    """Parse ``PERCENT=PATH`` (e.g. ``1=1percent.txt``) for --subset-file."""
    percent, sep, path = text.partition("=")
    if not sep or not path or not percent.strip().isdigit() or int(percent) not in SUBSET_PERCENTS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected PERCENT=PATH with PERCENT in {list(SUBSET_PERCENTS)}")
    return int(percent), path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-dir", type=Path,
                        help="folder holding train/ and val/, one subfolder per class")
    source.add_argument("--demo", choices=["fashion-mnist"],
                        help="materialise Debian's Fashion-MNIST as OUT_DIR/images, then convert it")
    add("--out-dir", type=Path, required=True, help="where the .beton files and manifest go")
    add("--write-mode", choices=WRITE_MODES, default="proportion",
        help="FFCV RGBImageField write mode (default: proportion)")
    add("--max-resolution", type=int, default=500, help="longest side stored (default: 500)")
    add("--compress-probability", type=float, default=0.5,
        help="share of images stored as JPEG in proportion mode (default: 0.5)")
    add("--jpeg-quality", type=int, default=90, help="JPEG quality (default: 90)")
    add("--num-workers", type=int, default=default_num_workers(),
        help="processes for validation and writing (default: all CPUs)")
    add("--chunk-size", type=int, default=100,
        help="images per FFCV writer work item (default: 100)")
    add("--subset-file", type=parse_subset_file, action="append", default=[],
        metavar="PERCENT=PATH",
        help="label subset as a list of train file names, e.g. 1=1percent.txt (repeatable); "
             "without it a class-balanced subset is drawn with --seed")
    add("--seed", type=int, default=0,
        help="seed for drawn subsets and for proportion mode's choices (default: 0)")
    add("--classes", metavar="FILE|imagenet100",
        help="convert only these classes: a file with one class folder name per line, or "
             "'imagenet100' for the 100-class ImageNet subset of CMC (Tian et al. 2019)")
    add("--skip-bad", action="store_true",
        help="leave unreadable images out (listed in the manifest) instead of failing")
    add("--demo-train-per-class", type=int, default=None,
        help="demo train images per class (default: all 6000)")
    add("--demo-val-per-class", type=int, default=None,
        help="demo val images per class (default: all 1000)")
    add("--demo-source", type=Path, default=None,
        help="folder of Fashion-MNIST's idx files (default: the Debian package's, "
             "/usr/share/datasets/fashion-mnist)")
    return parser


def summary(out_dir: Path, manifest: dict[str, Any]) -> str:
    """One line saying what was written where."""
    splits = ", ".join(f"{out_dir / split['file']} ({split['num_images']} images)"
                       for split in manifest["splits"].values())
    subsets = ", ".join(f"{out_dir / subset['file']} ({subset['count']})"
                        for subset in manifest["subsets"].values())
    return (f"wrote {splits}; {len(manifest['classes'])} classes; subsets {subsets}; "
            f"{len(manifest['skipped'])} entries skipped; manifest {out_dir / 'manifest.json'}")


def main(argv: list[str]) -> int:
    """Convert, print what was written; errors reach the user through ffcv_bt.cli."""
    parser = build_parser()
    args = parser.parse_args(argv)
    percents = [percent for percent, _ in args.subset_file]
    if len(percents) != len(set(percents)):
        parser.error(f"--subset-file given twice for the same percent: {sorted(percents)}")
    if args.demo is None and (args.demo_train_per_class or args.demo_val_per_class or args.demo_source):
        parser.error("--demo-train-per-class, --demo-val-per-class and --demo-source need --demo")
    data_dir = args.data_dir
    classes = None if args.classes is None else read_class_list(args.classes)
    classes_source = None
    if args.classes is not None:
        classes_source = IMAGENET100 if args.classes == IMAGENET100 else str(Path(args.classes).resolve())
    if args.demo == "fashion-mnist":
        from ffcv_bt.data.fashion_mnist import FASHION_MNIST_DIR, materialise_fashion_mnist

        data_dir = materialise_fashion_mnist(args.out_dir, args.demo_train_per_class,
                                             args.demo_val_per_class, args.demo_source or FASHION_MNIST_DIR)
    manifest = write_dataset(
        data_dir, args.out_dir, write_mode=args.write_mode, max_resolution=args.max_resolution,
        compress_probability=args.compress_probability, jpeg_quality=args.jpeg_quality,
        num_workers=args.num_workers, chunk_size=args.chunk_size,
        subset_files=dict(args.subset_file), seed=args.seed, skip_bad=args.skip_bad,
        classes=classes, classes_source=classes_source)
    print(summary(args.out_dir.resolve(), manifest))
    return 0


if __name__ == "__main__":
    from ffcv_bt.cli import run_command

    raise SystemExit(run_command(main))
