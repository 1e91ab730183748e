"""The kNN protocol end to end on real images: the pixel floor against a brute-force numpy
kNN over the source image files, and the result file's contents."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from folder_pixels import folder_pixels
from recipes import write_tiny_recipe

from ffcv_bt.config import load_recipe
from ffcv_bt.distributed.process_group import DistInfo
from ffcv_bt.evaluation.knn import evaluate_knn


def _brute_force_knn(train_x, train_y, val_x, val_y, classes: int, k: int, t: float) -> float:
    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    train_x, val_x = unit(train_x), unit(val_x)
    correct = 0
    for query, label in zip(val_x, val_y):
        similarity = train_x @ query
        nearest = np.argsort(-similarity, kind="stable")[:k]
        votes = np.zeros(classes)
        for i in nearest:
            votes[train_y[i]] += np.exp(similarity[i] / t)
        correct += int(np.argmax(votes) == label)
    return 100.0 * correct / len(val_y)


@pytest.mark.timeout(300)
def test_pixel_floor_matches_brute_force_over_the_source_images(tiny_dataset: Path,
                                                                 tmp_path: Path) -> None:
    # 28 px centre crop of a 28 px image: the loader's features are the stored pixels.
    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_dataset),
                         {"knn.res": "28", "knn.resize": "28", "knn.k": "5"})
    result = evaluate_knn(recipe, "pixels", tmp_path / "knn-pixels", DistInfo())

    train_x, train_y = folder_pixels(tiny_dataset / "images" / "train")
    val_x, val_y = folder_pixels(tiny_dataset / "images" / "val")
    want = _brute_force_knn(train_x, train_y, val_x, val_y, 10, k=5, t=0.07)
    assert result["top1"] == pytest.approx(want, abs=1e-9)
    assert 30 < result["top1"] <= 100 and result["top5"] >= result["top1"]  # pixels beat chance
    saved = json.loads((tmp_path / "knn-pixels" / "result.json").read_text())
    assert saved["protocol"] == "knn" and saved["backbone"] == "pixels"
    assert saved["settings"]["feature_dim"] == 3 * 28 * 28
    assert (saved["settings"]["train_images"], saved["settings"]["val_images"]) == (200, 100)
    # a finished stage is skipped: the same result comes back without recomputing
    assert evaluate_knn(recipe, "pixels", tmp_path / "knn-pixels", DistInfo()) == saved
