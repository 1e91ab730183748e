"""The logistic-regression protocol: the fit reaches the optimum of its stated objective
(checked by the gradient, computed independently in numpy float64), it does not depend on
the scale of the features, and the stage on real images fits the standardised pixels of the
source image files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from folder_pixels import folder_pixels
from recipes import write_tiny_recipe

from ffcv_bt.config import load_recipe
from ffcv_bt.distributed.process_group import DistInfo
from ffcv_bt.evaluation import knn, logreg
from ffcv_bt.evaluation.logreg import (
    CLASSIFIER_FILE,
    choose_weight_decay,
    distinct_columns,
    evaluate_logreg,
    feature_moments,
    fit_logistic_regression,
    held_out_split,
)


def _objective_gradient(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray,
                        weight_decay: float) -> tuple[np.ndarray, np.ndarray]:
    """Gradient of mean cross-entropy + weight_decay / 2 ||W||^2, by hand."""
    logits = x @ w.T + b
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    p /= len(y)
    return p.T @ x + weight_decay * w, p.sum(axis=0)


def _blobs(seed: int, n: int = 300, d: int = 12, classes: int = 4,
           spread: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, spread, (classes, d))
    y = rng.integers(0, classes, n)
    return centres[y] + rng.normal(0, 1.0, (n, d)), y


@pytest.mark.parametrize("weight_decay", [1e-2, 1e-4])
def test_fit_reaches_the_optimum_of_the_stated_objective(weight_decay: float) -> None:
    x, y = _blobs(0)
    w, b, objective = fit_logistic_regression(torch.tensor(x, dtype=torch.float32),
                                              torch.tensor(y), 4, weight_decay, 500)
    w64, b64 = w.double().numpy(), b.double().numpy()
    grad_w, grad_b = _objective_gradient(x, y, w64, b64, weight_decay)
    assert np.abs(grad_w).max() < 2e-4 and np.abs(grad_b).max() < 2e-4
    logits = x @ w64.T + b64
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    want = -logp[np.arange(len(y)), y].mean() + 0.5 * weight_decay * (w64 ** 2).sum()
    assert objective == pytest.approx(want, rel=1e-4)
    assert objective < np.log(4)  # far below the zero start's log(C)


def test_standardised_fit_does_not_depend_on_feature_scale() -> None:
    x, y = _blobs(1)
    predictions = []
    for scale, shift in ((1.0, 0.0), (1e-3, 5.0), (300.0, -2.0)):
        features = torch.tensor(x * scale + shift, dtype=torch.float32)
        mean, std = feature_moments(features)
        standard = (features - mean) / std
        w, b, _ = fit_logistic_regression(standard, torch.tensor(y), 4, 1e-4, 500)
        predictions.append((standard @ w.T + b).argmax(1))
    assert torch.equal(predictions[0], predictions[1]) and torch.equal(predictions[0], predictions[2])


@pytest.mark.timeout(300)
def test_pixel_stage_fits_the_standardised_sourcefolder_pixels(tiny_dataset: Path, tmp_path: Path) -> None:
    # 28 px centre crop of a 28 px image: the loader's features are the stored pixels.
    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_dataset),
                         {"logreg.res": "28", "logreg.resize": "28",
                          "logreg.weight_decays": "0.01,1", "logreg.iterations": "300"})
    knn._FEATURE_MEMO.clear()
    logreg._FIT_MEMO.clear()
    result = evaluate_logreg(recipe, "pixels", tmp_path / "logreg-pixels", DistInfo())
    assert result["features_reused"] is False
    saved = torch.load(tmp_path / "logreg-pixels" / CLASSIFIER_FILE)

    train_x, train_y = folder_pixels(tiny_dataset / "images" / "train")
    val_x, val_y = folder_pixels(tiny_dataset / "images" / "val")
    mean = train_x.mean(0)
    std = train_x.std(0, ddof=1)
    std[std <= 1e-8] = 1.0
    np.testing.assert_allclose(saved["mean"].numpy(), mean, atol=1e-4)
    np.testing.assert_allclose(saved["std"].numpy(), std, rtol=1e-4, atol=1e-5)
    train_s, val_s = (train_x - mean) / std, (val_x - mean) / std
    # a grayscale image's three channels are one feature after standardising: fitted once
    columns = saved["columns"].numpy()
    assert 28 * 28 <= len(columns) < 1.1 * 28 * 28
    assert np.allclose(train_s[:, 784:1568], train_s[:, :784]) and 0 in columns and 784 not in columns
    train_s, val_s = train_s[:, columns], val_s[:, columns]
    w, b = saved["weight"].double().numpy(), saved["bias"].double().numpy()
    decay = saved["weight_decay"]
    assert result["weight_decay"] == decay and set(result["held_out_top1"]) == {"0.01", "1"}
    grad_w, grad_b = _objective_gradient(train_s, train_y, w, b, decay)
    assert np.abs(grad_w).max() < 1e-3 and np.abs(grad_b).max() < 1e-3  # the optimum on these pixels
    want = 100.0 * float(((val_s @ w.T + b).argmax(1) == val_y).mean())
    assert result["top1"] == pytest.approx(want, abs=1e-9)
    assert 30 < result["top1"] <= 100 and result["top5"] >= result["top1"]
    # the same extraction again in this process (the next seed's pixel floor): the kept
    # features and fit
    again = evaluate_logreg(recipe, "pixels", tmp_path / "again", DistInfo())
    assert again["features_reused"] is True and again["top1"] == result["top1"]
    on_disk = json.loads((tmp_path / "logreg-pixels" / "result.json").read_text())
    assert on_disk["protocol"] == "logreg" and on_disk["backbone"] == "pixels"
    assert on_disk["settings"]["feature_dim"] == 3 * 28 * 28 and on_disk["settings"]["train_images"] == 200
    assert on_disk["settings"]["distinct_features"] == len(columns)


def test_identical_columns_are_fitted_once() -> None:
    x = torch.tensor(_blobs(2, d=5)[0], dtype=torch.float32)
    wide = torch.cat([x, x[:, [1]], x[:, [0, 3]]], dim=1)  # columns 5, 6, 7 repeat 1, 0, 3
    assert distinct_columns(wide).tolist() == [0, 1, 2, 3, 4]
    assert distinct_columns(x).tolist() == [0, 1, 2, 3, 4]


def test_weight_decay_is_chosen_on_held_out_train_rows() -> None:
    fit, held = held_out_split(100, 0.2)
    assert len(held) == 20 and len(fit) == 80 and not set(fit.tolist()) & set(held.tolist())
    assert torch.equal(held, held_out_split(100, 0.2)[1])  # the same split every time
    x, y = _blobs(3, n=400, d=40, spread=0.25)
    # few rows, many features: the strongest penalty underfits and the weakest overfits
    features, labels = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    decay, scores = choose_weight_decay(features, labels, 4, [1e-5, 1e-2, 30.0], 300, 0.25)
    fit, held = held_out_split(400, 0.25)
    for d, score in scores.items():  # each score: that penalty's fit on the fit rows, scored held out
        w, b, _ = fit_logistic_regression(features[fit], labels[fit], 4, d, 300)
        assert score == pytest.approx(100.0 * float(((features[held] @ w.T + b).argmax(1) == labels[held])
                                                    .double().mean()), abs=1e-9)
    assert scores[decay] == max(scores.values()) and scores[30.0] < scores[decay]
