"""write_dataset: folders of real-format images -> .beton files read back and checked pixel by pixel."""
from __future__ import annotations

import gzip
import hashlib
import json
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from ffcv_bt.data import write as write_module
from ffcv_bt.data.fashion_mnist import (
    CLASS_NAMES,
    FASHION_MNIST_DIR,
    materialise_fashion_mnist,
    read_idx,
)
from ffcv_bt.data.image_folder import Sample
from ffcv_bt.data.label_subsets import balanced_subset, subset_from_file, subset_size
from ffcv_bt.data.write import write_dataset
from ffcv_bt.errors import DataError

REPO = Path(__file__).resolve().parents[2]
RAW, JPG = 1, 0  # FFCV's stored image modes


# ------------------------------------------------------------------------------ helpers

def read_beton(path: Path) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """(RGB images, labels, stored modes) of a .beton, read from its bytes without a Loader."""
    from ffcv.reader import Reader

    reader = Reader(str(path))
    image_meta = reader.metadata[f"f{reader.field_names.index('image')}"]
    labels = reader.metadata[f"f{reader.field_names.index('label')}"]
    size_at = dict(zip(reader.alloc_table["ptr"].tolist(), reader.alloc_table["size"].tolist()))
    data = np.fromfile(path, np.uint8)
    images = []
    for meta in image_meta:
        ptr = int(meta["data_ptr"])
        stored = data[ptr: ptr + size_at[ptr]]
        height, width = int(meta["height"]), int(meta["width"])
        if meta["mode"] == RAW:
            images.append(stored[: height * width * 3].reshape(height, width, 3))
        else:
            images.append(cv2.cvtColor(cv2.imdecode(stored, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
    return images, np.array(labels), np.array(image_meta["mode"])


def save(path: Path, image: Image.Image | bytes, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, bytes):
        path.write_bytes(image)
    else:
        image.save(path, **kwargs)
    return path


def smooth_rgb(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth colour image (JPEG keeps it close), different for each seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    channels = [rng.uniform(40, 200) + rng.uniform(-1, 1) * 40 * np.sin((x + 2 * y) / rng.uniform(6, 12))
                for _ in range(3)]
    return np.stack(channels, -1).astype(np.uint8)


def composite_on_white(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    color, alpha = color.astype(float), alpha[..., None].astype(float)
    return np.round((color * alpha + 255 * (255 - alpha)) / 255)


# --------------------------------------------------------- a folder of every messy case

def build_messy_tree(root: Path) -> dict[str, tuple[np.ndarray, float]]:
    """Write the messy images under root/{train,val}; return expected RGB and tolerance per file."""
    expected: dict[str, tuple[np.ndarray, float]] = {}
    train, val = root / "train", root / "val"
    rng = np.random.default_rng(0)

    gray = rng.integers(0, 256, (3, 4), dtype=np.uint8)
    save(train / "a_gray" / "gray.png", Image.fromarray(gray))
    expected["gray.png"] = np.repeat(gray[..., None], 3, -1), 0

    sixteen = np.array([[0, 257, 65535], [1000, 32768, 65000]], dtype=np.uint16)
    save(train / "a_gray" / "g16.png", Image.fromarray(sixteen))
    expected["g16.png"] = np.repeat(np.round(sixteen / 257.0)[..., None], 3, -1), 0

    luminance, alpha = rng.integers(0, 256, (2, 5, 3), dtype=np.uint8)
    save(train / "a_gray" / "la.png", Image.fromarray(np.dstack([luminance, alpha])))
    expected["la.png"] = np.repeat(composite_on_white(luminance[..., None], alpha), 3, -1), 1

    rgba = rng.integers(0, 256, (4, 3, 4), dtype=np.uint8)
    save(train / "b_color" / "rgba.png", Image.fromarray(rgba))
    expected["rgba.png"] = composite_on_white(rgba[..., :3], rgba[..., 3]), 1

    palette = rng.integers(0, 256, (4, 3), dtype=np.uint8)
    indices = rng.integers(0, 4, (5, 6), dtype=np.uint8)
    indices[0, 0] = 0
    for name, transparency in [("p.png", None), ("p_trans.png", 0)]:
        image = Image.fromarray(indices)
        image.putpalette(palette.flatten().tolist())
        save(train / "b_color" / name, image, **({} if transparency is None else {"transparency": 0}))
        colours = palette[indices].astype(float)
        if transparency is not None:
            colours[indices == 0] = 255
        expected[name] = colours, 0

    save(train / "b_color" / "cmyk.jpg", Image.new("CMYK", (8, 8), (255, 0, 0, 0)), quality=100)
    expected["cmyk.jpg"] = np.broadcast_to(np.array([0, 255, 255.0]), (8, 8, 3)), 3

    stored = np.zeros((8, 16, 3), np.uint8)  # left half red, right half blue, as stored
    stored[:, :8] = (255, 0, 0)
    stored[:, 8:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    save(train / "b_color" / "exif.jpg", Image.fromarray(stored), exif=exif, quality=100, subsampling=0)
    expected["exif.jpg"] = np.rot90(stored, k=-1).astype(float), 4  # red on top, blue below

    photo = save(train / "b_color" / "photo.JPEG", Image.fromarray(smooth_rgb(20, 30, 1)), quality=90)
    expected["photo.JPEG"] = np.asarray(Image.open(photo).convert("RGB")).astype(float), 0

    one = rng.integers(0, 256, (1, 1, 3), dtype=np.uint8)
    save(train / "c_small" / "one.png", Image.fromarray(one))
    expected["one.png"] = one, 0
    two_by_three = rng.integers(0, 256, (2, 3, 3), dtype=np.uint8)
    save(train / "c_small" / "two_by_three.png", Image.fromarray(two_by_three))
    expected["two_by_three.png"] = two_by_three, 0

    blocks = rng.integers(0, 256, (4, 3), dtype=np.uint8)  # 2000x3: four 500-px colour blocks
    wide = np.repeat(blocks, 500, axis=0)[None].repeat(3, axis=0)
    save(train / "c_small" / "wide.png", Image.fromarray(wide))
    expected["wide.png"] = np.repeat(blocks, 125, axis=0)[None].astype(float), 0  # 500x1 at max 500

    save(train / "c_small" / "big.png", Image.new("RGB", (600, 400), (10, 200, 30)))
    expected["big.png"] = np.broadcast_to(np.array([10, 200, 30.0]), (333, 500, 3)), 0

    # Entries that must be ignored.
    save(train / "README.txt", b"stray file at class level")
    save(train / ".hidden_class" / "x.png", Image.new("RGB", (2, 2)))
    save(train / "b_color" / ".DS_Store", b"\x00\x01junk")
    save(train / "b_color" / "._photo.JPEG", b"AppleDouble junk")
    save(train / "a_gray" / "notes.txt", b"not an image")
    # val lacks a_gray: its labels must still use train's indices (b_color=1, c_small=2).
    for name, value in [("b_color", 60), ("c_small", 120)]:
        save(val / name / "v.png", Image.new("RGB", (4, 4), (value,) * 3))
    return expected


def train_order(root: Path) -> list[tuple[int, str]]:
    """(label, file name) in the order the spec fixes: classes by name, files by name."""
    classes = sorted(p.name for p in (root / "train").iterdir()
                     if p.is_dir() and not p.name.startswith("."))
    return [(label, path.name) for label, name in enumerate(classes)
            for path in sorted((root / "train" / name).iterdir(), key=lambda p: p.name)
            if not path.name.startswith(".") and path.suffix.lower() in {".png", ".jpg", ".jpeg"}]


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict, Path]:
    root = tmp_path_factory.mktemp("messy")
    expected = build_messy_tree(root / "data")
    subset_list = save(root / "1percent.txt", b"photo.JPEG\n\nwide.png\ngray.png\nphoto.JPEG\n")
    write_dataset(root / "data", root / "out", write_mode="raw", num_workers=2,
                  subset_files={1: str(subset_list)}, seed=3)
    return root / "data", root / "out", expected, subset_list


@pytest.mark.timeout(300)
def test_messy_images_round_trip_to_expected_rgb(messy):
    data, out, expected, _ = messy
    images, labels, modes = read_beton(out / "train.beton")
    order = train_order(data)
    assert len(images) == len(order) == len(expected)
    assert (modes == RAW).all()
    assert labels.tolist() == [label for label, _ in order]
    for image, (_, name) in zip(images, order):
        want, tolerance = expected[name]
        assert image.shape == want.shape, name
        assert np.abs(image.astype(float) - want).max() <= tolerance, name


@pytest.mark.timeout(300)
def test_val_uses_train_class_indices_and_manifest_counts(messy):
    data, out, expected, _ = messy
    images, labels, _ = read_beton(out / "val.beton")
    assert labels.tolist() == [1, 2]
    assert [int(image[0, 0, 0]) for image in images] == [60, 120]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == ["a_gray", "b_color", "c_small"]
    per_class = Counter(manifest["classes"][label] for label, _ in train_order(data))
    assert manifest["splits"]["train"]["per_class"] == dict(per_class)
    assert manifest["splits"]["train"]["num_images"] == len(expected)
    assert manifest["splits"]["val"]["per_class"] == {"a_gray": 0, "b_color": 1, "c_small": 1}
    assert manifest["settings"]["write_mode"] == "raw"
    assert manifest["settings"]["max_resolution"] == 500
    ignored = {Path(entry["path"]).relative_to(data).as_posix(): entry["reason"]
               for entry in manifest["skipped"]}
    assert ignored == {"train/README.txt": "not a class directory", "train/.hidden_class": "hidden",
                       "train/b_color/.DS_Store": "hidden", "train/b_color/._photo.JPEG": "hidden",
                       "train/a_gray/notes.txt": "not an image file extension"}


@pytest.mark.timeout(300)
def test_subset_files_from_list_and_from_seed(messy):
    data, out, _, subset_list = messy
    names = [name for _, name in train_order(data)]
    one = [int(line) for line in (out / "train_subset_1.txt").read_text().split()]
    assert one == sorted(names.index(n) for n in ["photo.JPEG", "wide.png", "gray.png"])
    ten = [int(line) for line in (out / "train_subset_10.txt").read_text().split()]
    labels = [label for label, _ in train_order(data)]
    assert ten == sorted(ten)
    assert sorted(labels[i] for i in ten) == [0, 1, 2]  # 10% of 3 or 6 rounds to 0: at least 1
    subsets = json.loads((out / "manifest.json").read_text())["subsets"]
    assert subsets["1"]["sha256"] == hashlib.sha256(subset_list.read_bytes()).hexdigest()
    assert subsets["1"]["source"] == str(subset_list) and subsets["1"]["count"] == 3
    assert subsets["10"]["drawn"] == "class-balanced random, seed=3" and subsets["10"]["count"] == 3


# --------------------------------------------------------------------------- subsets

@pytest.mark.parametrize("percent, class_size, size", [
    (1, 1300, 13), (1, 1250, 13), (1, 1249, 12), (10, 1300, 130), (10, 732, 73), (10, 4, 1), (1, 20, 1)])
def test_subset_size_rounds_half_up_with_at_least_one(percent, class_size, size):
    assert subset_size(percent, class_size) == size


def test_balanced_subset_is_class_balanced_and_seeded():
    labels = [label for label in range(5) for _ in range(30 + 7 * label)]
    rng = np.random.default_rng(1)
    labels = rng.permutation(labels).tolist()  # classes interleaved, not in blocks
    chosen = balanced_subset(labels, 10, seed=0)
    assert chosen == sorted(set(chosen))
    counts = np.bincount([labels[i] for i in chosen], minlength=5)
    assert counts.tolist() == [subset_size(10, 30 + 7 * label) for label in range(5)]
    assert balanced_subset(labels, 10, seed=0) == chosen
    assert balanced_subset(labels, 10, seed=1) != chosen


def test_subset_list_with_unknown_names_is_an_error_naming_file_and_names(tmp_path):
    samples = [Sample(Path(f"/d/train/c/img_{i}.JPEG"), 0) for i in range(5)]
    listing = save(tmp_path / "10percent.txt", b"img_1.JPEG\nnope_1.JPEG\nnope_2.JPEG\n")
    with pytest.raises(DataError, match=r"10percent\.txt.*2 of 3.*nope_1\.JPEG, nope_2\.JPEG"):
        subset_from_file(listing, samples, set())
    indices, how = subset_from_file(listing, samples, {"nope_1.JPEG", "nope_2.JPEG"})
    assert indices == [1] and how["dropped_unreadable"] == ["nope_1.JPEG", "nope_2.JPEG"]


# -------------------------------------------------------------------------- bad input

def build_bad_tree(root: Path) -> list[Path]:
    for split, count in [("train", 3), ("val", 1)]:
        for i in range(count):
            save(root / split / "cls" / f"ok_{i}.png", Image.fromarray(smooth_rgb(6, 5, i)))
    full = save(root / "full.jpg", Image.fromarray(smooth_rgb(64, 64, 9)), quality=90).read_bytes()
    (root / "full.jpg").unlink()
    return [save(root / "train" / "cls" / "truncated.jpg", full[: len(full) // 2]),
            save(root / "train" / "cls" / "empty.JPEG", b""),
            save(root / "val" / "cls" / "text.png", b"this is not a picture\n")]


def test_unreadable_files_fail_the_cli_before_anything_is_written(tmp_path):
    bad = build_bad_tree(tmp_path / "data")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "write_dataset.py", "--data-dir", str(tmp_path / "data"),
                             "--out-dir", str(out), "--num-workers", "2"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "3 unreadable image files" in result.stderr
    for path in bad:
        assert str(path) in result.stderr
    assert not out.exists()


@pytest.mark.timeout(300)
def test_skip_bad_leaves_them_out_and_lists_them(tmp_path):
    bad = build_bad_tree(tmp_path / "data")
    manifest = write_dataset(tmp_path / "data", tmp_path / "out", write_mode="raw", num_workers=2,
                             skip_bad=True)
    reasons = {entry["path"]: entry["reason"] for entry in manifest["skipped"]}
    assert set(reasons) == {str(path) for path in bad}
    assert all(reason.startswith("unreadable: ") for reason in reasons.values())
    assert manifest["splits"]["train"]["num_images"] == 3
    assert manifest["splits"]["val"]["num_images"] == 1
    images, _, _ = read_beton(tmp_path / "out" / "train.beton")
    for i, image in enumerate(images):
        assert np.array_equal(image, smooth_rgb(6, 5, i))


@pytest.mark.timeout(300)
def test_failure_while_writing_leaves_no_beton(tmp_path, monkeypatch):
    for i in range(4):
        save(tmp_path / "data" / "train" / "cls" / f"{i}.png", Image.fromarray(smooth_rgb(6, 5, i)))
    save(tmp_path / "data" / "val" / "cls" / "v.png", Image.fromarray(smooth_rgb(6, 5, 9)))
    # 2.png breaks after validation (validation is skipped here; the writer, in its own
    # processes, then meets a truncated file)
    (tmp_path / "data" / "train" / "cls" / "2.png").write_bytes(
        (tmp_path / "data" / "train" / "cls" / "1.png").read_bytes()[:40])
    monkeypatch.setattr(write_module, "find_unreadable", lambda paths, num_workers: [])
    save(tmp_path / "out" / "manifest.json", b"{}")  # from an earlier run: must not survive
    with pytest.raises(DataError, match=r"(?s)failed to load.*2\.png: UnidentifiedImageError"):
        write_dataset(tmp_path / "data", tmp_path / "out", write_mode="raw", num_workers=2)
    assert list((tmp_path / "out").iterdir()) == []  # neither the beton nor its temporary file


def make_tree(root: Path, files: list[str]) -> Path:
    for name in files:
        save(root / name, Image.new("RGB", (2, 2)) if name.endswith(".png") else b"x")
    return root


@pytest.mark.parametrize("files, message", [
    (["val/a/1.png"], r"train: missing directory"),
    (["train/a/1.png"], r"val: missing directory"),
    (["train/.a/1.png", "train/x.png", "val/a/1.png"], r"train: no class subfolders"),
    (["train/a/1.png", "val/a/1.png", "val/zebra/1.png"], r"classes missing from .*train: zebra"),
    (["train/a/1.png", "train/b/.hidden.png", "val/a/1.png"],
     r"train classes without readable images: .*train/b"),
    (["train/a/1.png", "val/a/notes.txt"], r"val: no readable images"),
])
def test_bad_layouts_are_errors_naming_the_path(tmp_path, files, message):
    data = make_tree(tmp_path / "data", files)
    with pytest.raises(DataError, match=message):
        write_dataset(data, tmp_path / "out", num_workers=1)
    assert not (tmp_path / "out").exists()


def test_bad_settings_are_errors_naming_the_value(tmp_path):
    with pytest.raises(DataError, match=r"write_mode='png'.*compress_probability=1.5"):
        write_dataset(tmp_path, tmp_path / "out", write_mode="png", compress_probability=1.5)


# ------------------------------------------------------------------ proportion mode

def write_proportion(root: Path, out: str, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    write_dataset(root / "data", root / out, write_mode="proportion", compress_probability=0.5,
                  jpeg_quality=90, num_workers=2, seed=seed)
    images, _, modes = read_beton(root / out / "train.beton")
    return images, modes


@pytest.mark.timeout(300)
def test_proportion_mode_mixes_jpeg_and_raw_reproducibly(tmp_path):
    sources = [smooth_rgb(32, 32, i) for i in range(24)]
    for i, source in enumerate(sources):
        save(tmp_path / "data" / "train" / f"c{i % 2}" / f"{i:02d}.png", Image.fromarray(source))
    save(tmp_path / "data" / "val" / "c0" / "v.png", Image.fromarray(sources[0]))
    order = sorted(range(24), key=lambda i: (i % 2, i))
    images, modes = write_proportion(tmp_path, "a", seed=0)
    assert set(modes.tolist()) == {RAW, JPG}
    for image, mode, i in zip(images, modes, order):
        error = np.abs(image.astype(float) - sources[i])
        assert error.max() == 0 if mode == RAW else error.mean() < 2.5
    assert np.array_equal(write_proportion(tmp_path, "b", seed=0)[1], modes)
    assert not np.array_equal(write_proportion(tmp_path, "c", seed=1)[1], modes)


# ----------------------------------------------------------------------- Fashion-MNIST

def write_idx(path: Path, array: np.ndarray, type_code: int = 0x08) -> Path:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))
    return path


def test_read_idx_parses_header_and_data(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a.gz", array)), array)
    with pytest.raises(DataError, match=r"b\.gz: not an idx file of unsigned bytes"):
        read_idx(write_idx(tmp_path / "b.gz", array, type_code=0x0D))
    short = tmp_path / "c.gz"
    short.write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"12345"))
    with pytest.raises(DataError, match=r"c\.gz: 5 bytes of data for shape \(10,\)"):
        read_idx(short)


def test_demo_source_is_where_the_demo_reads_the_idx_files(tmp_path, monkeypatch):
    """--demo-source (make demo without root: the Debian package fetched, not installed)
    reaches materialise_fashion_mnist; it needs --demo like the other demo options."""
    import write_dataset as cli
    from ffcv_bt.data import fashion_mnist

    seen = []

    def fake(out_dir, train_per_class, val_per_class, source_dir):
        seen.append(Path(source_dir))
        raise DataError("stop here")

    monkeypatch.setattr(fashion_mnist, "materialise_fashion_mnist", fake)
    base = ["--demo", "fashion-mnist", "--out-dir", str(tmp_path / "out")]
    for extra, expected in (([], FASHION_MNIST_DIR), (["--demo-source", str(tmp_path)], tmp_path)):
        with pytest.raises(DataError, match="stop here"):
            cli.main(base + extra)
        assert seen.pop() == expected
    with pytest.raises(SystemExit):
        cli.main(["--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "o"), "--demo-source", str(tmp_path)])


needs_fashion_mnist = pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(),
                                         reason=f"{FASHION_MNIST_DIR} missing (dataset-fashion-mnist)")


@needs_fashion_mnist
def test_materialise_reuses_a_complete_folder_and_redoes_another_size(tmp_path):
    images = materialise_fashion_mnist(tmp_path, train_per_class=2, val_per_class=1)
    first = sorted((images / "train" / CLASS_NAMES[3]).iterdir())[0]
    stamp = first.stat().st_mtime_ns
    assert materialise_fashion_mnist(tmp_path, train_per_class=2, val_per_class=1) == images
    assert first.stat().st_mtime_ns == stamp
    materialise_fashion_mnist(tmp_path, train_per_class=3, val_per_class=1)
    assert [len(list((images / "train" / name).iterdir())) for name in CLASS_NAMES] == [3] * 10
    assert not (tmp_path / ".images.partial").exists()
    with pytest.raises(DataError, match=r"val: 1001 images per class asked"):
        materialise_fashion_mnist(tmp_path, val_per_class=1001)


@needs_fashion_mnist
@pytest.mark.timeout(300)
def test_tiny_dataset_loads_with_ffcv_and_matches_the_idx_source(tiny_dataset):
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    manifest = json.loads((tiny_dataset / "manifest.json").read_text())
    assert manifest["classes"] == list(CLASS_NAMES)
    assert set(manifest["splits"]["train"]["per_class"].values()) == {20}
    assert set(manifest["splits"]["val"]["per_class"].values()) == {10}
    loader = Loader(str(tiny_dataset / "val.beton"), batch_size=40, num_workers=1, drop_last=False,
                    order=OrderOption.SEQUENTIAL,
                    pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
    batches = [(image.copy(), label.copy()) for image, label in loader]  # buffers are reused
    images = np.concatenate([image for image, _ in batches])
    labels = np.concatenate([label for _, label in batches]).ravel()
    source_images = read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    source_labels = read_idx(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    files = sorted((tiny_dataset / "images" / "val").glob("*/*.jpg"))
    assert images.shape == (100, 28, 28, 3) and len(files) == 100
    for image, label, path in zip(images, labels, files):
        index = int(path.stem.split("_")[1])
        assert label == source_labels[index] == CLASS_NAMES.index(path.parent.name)
        assert np.array_equal(image, np.asarray(Image.open(path).convert("RGB")))  # raw: exact
        assert np.abs(image.astype(float) - source_images[index][..., None]).mean() < 2  # JPEG q95
    subset = [int(line) for line in (tiny_dataset / "train_subset_10.txt").read_text().split()]
    assert sorted(i // 20 for i in subset) == [label for label in range(10) for _ in range(2)]
