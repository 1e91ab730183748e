"""Shared fixtures (a tiny real dataset folder for loader, training and evaluation tests),
and the own_process marker (tests/own_process.py)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from own_process import pytest_collection_modifyitems, pytest_configure  # noqa: F401 (hooks)

if os.environ.get("PYTEST_XDIST_WORKER"):  # make test: one of two workers on 2 cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported: no oversubscription


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Dataset folder built from the real Fashion-MNIST files by write_dataset.

    10 classes, 20 train and 10 val 28x28 images per class, stored raw (exact pixels).
    Holds train.beton, val.beton, manifest.json, train_subset_1.txt, train_subset_10.txt,
    and the source JPEGs under images/{train,val}/<class>/.
    """
    from ffcv_bt.data.fashion_mnist import FASHION_MNIST_DIR, materialise_fashion_mnist
    from ffcv_bt.data.write import write_dataset

    if not FASHION_MNIST_DIR.is_dir():
        pytest.skip(f"{FASHION_MNIST_DIR} missing: apt-get install dataset-fashion-mnist")
    out_dir = tmp_path_factory.mktemp("tiny_dataset")
    images_dir = materialise_fashion_mnist(out_dir, train_per_class=20, val_per_class=10)
    write_dataset(images_dir, out_dir, write_mode="raw", num_workers=2)
    return out_dir


@pytest.fixture()
def data_copy(tiny_dataset: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny dataset folder (for tests that damage it)."""
    out = tmp_path / "data"
    out.mkdir()
    for f in tiny_dataset.iterdir():
        if f.is_file():
            (out / f.name).write_bytes(f.read_bytes())
    return out


@pytest.fixture(autouse=True)
def fresh_feature_memos() -> None:
    """Each test starts without features or fits kept by an earlier test in this process
    (ffcv_bt.evaluation.knn / logreg keep them for the next protocol of a run)."""
    import sys

    for module, memo in (("ffcv_bt.evaluation.knn", "_FEATURE_MEMO"),
                         ("ffcv_bt.evaluation.logreg", "_FIT_MEMO")):
        if module in sys.modules:
            getattr(sys.modules[module], memo).clear()
