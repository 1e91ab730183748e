"""Every value of every protocol file reaches the code that uses it: the loaders the
trained protocols and the kNN build (resolution, centre-crop ratio res/resize, batch per
rank, split, label subset, seed) and the kNN vote (k, temperature), read off the calls
those stages make (spies on make_eval_loader and knn_accuracy)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from recipes import write_tiny_recipe

import ffcv_bt.evaluation.knn as knn_module
import ffcv_bt.evaluation.trained as trained_module
from ffcv_bt.config import RULES_DIR, load_recipe
from ffcv_bt.data.manifest import Manifest
from ffcv_bt.distributed.process_group import DistInfo
from ffcv_bt.evaluation.trained import Evaluation, ProtocolSettings

PROTOCOL_FILES = ("standard", "release2", "demo", "smoke")


def protocol_spec(name: str) -> dict:
    return yaml.safe_load((RULES_DIR / "protocols" / f"{name}.yaml").read_text())


class LoaderSpy:
    """Stands in for make_eval_loader: records each call's arguments, returns a marker."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, beton, batch_size_per_rank, split, num_workers=None, **kwargs):
        self.calls.append({"beton": Path(beton).name, "batch": batch_size_per_rank,
                           "split": split, **kwargs})
        return f"loader-{len(self.calls)}"


@pytest.mark.parametrize("protocol", ["linear", "semi1", "semi10"])
@pytest.mark.parametrize("name", PROTOCOL_FILES)
def test_trained_protocol_loaders_get_the_protocol_values(name, protocol, tiny_dataset, tmp_path,
                                                         monkeypatch):
    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_dataset),
                         {"eval.protocol": name, "train.seed": "7"})
    spec = protocol_spec(name)["linear" if protocol == "linear" else "semi"]
    spy = LoaderSpy()
    monkeypatch.setattr(trained_module, "make_eval_loader", spy)
    manifest = Manifest.read(tiny_dataset)
    stage = SimpleNamespace(settings=ProtocolSettings.from_recipe(recipe, protocol), recipe=recipe,
                            dist=DistInfo(), manifest=manifest, data_dir=tiny_dataset, device=torch.device("cpu"),
                            channels_last=False)
    assert Evaluation.create_loaders(stage) == ("loader-1", "loader-2")  # type: ignore[arg-type]
    train, val = spy.calls
    for call in (train, val):
        assert call["res"] == spec["res"], call
        assert call["resize_ratio"] == pytest.approx(spec["res"] / spec["resize"]), call
        assert call["batch"] == spec["batch_size"], call  # one rank: the whole global batch
        assert call["device"] == torch.device("cpu") and call["channels_last"] is False
    assert (train["beton"], train["split"], val["beton"], val["split"]) == (
        "train.beton", "train", "val.beton", "val")
    assert train["seed"] == 7
    if protocol == "linear":
        assert train["indices"] is None  # all labels
    else:
        subset = np.loadtxt(tiny_dataset / f"train_subset_{protocol[4:]}.txt", dtype=np.int64)
        assert np.array_equal(train["indices"], subset)
    assert np.array_equal(val["indices"], np.arange(manifest.num_images("val")))
    # the settings the result records are the protocol file's
    s = stage.settings
    assert (s.epochs, s.batch_size, s.res, s.resize) == (spec["epochs"], spec["batch_size"],
                                                         spec["res"], spec["resize"])
    assert s.precision == (spec["precision"] if protocol == "linear" else "fp32")


def test_distinct_values_do_not_swap(tiny_dataset, tmp_path, monkeypatch):
    """res, resize and batch all distinct, so a swap of any two shows."""
    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_dataset), {"eval.protocol": "smoke"})
    recipe = recipe.with_overrides({"linear.res": 12, "linear.resize": 20, "linear.batch_size": 24,
                                    "semi.res": 10, "semi.resize": 18, "semi.batch_size": 8})
    spy = LoaderSpy()
    monkeypatch.setattr(trained_module, "make_eval_loader", spy)
    for protocol in ("linear", "semi10"):
        stage = SimpleNamespace(settings=ProtocolSettings.from_recipe(recipe, protocol),
                                recipe=recipe, dist=DistInfo(), manifest=Manifest.read(tiny_dataset),
                                device=torch.device("cpu"), data_dir=tiny_dataset, channels_last=False)
        Evaluation.create_loaders(stage)  # type: ignore[arg-type]
    got = [(c["split"], c["res"], c["resize_ratio"], c["batch"]) for c in spy.calls]
    assert got == [("train", 12, 12 / 20, 24), ("val", 12, 12 / 20, 24),
                   ("train", 10, 10 / 18, 8), ("val", 10, 10 / 18, 8)]


@pytest.mark.parametrize("name", PROTOCOL_FILES)
def test_knn_gets_the_protocol_values(name, tiny_dataset, tmp_path, monkeypatch):
    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_dataset), {"eval.protocol": name})
    spec = protocol_spec(name)["knn"]
    spy = LoaderSpy()
    monkeypatch.setattr(knn_module, "make_eval_loader", spy)
    monkeypatch.setattr(knn_module, "_FEATURE_MEMO", {})  # no features kept by an earlier test
    monkeypatch.setattr(knn_module, "set_stage_threads", lambda *a: None)
    manifest = Manifest.read(tiny_dataset)
    classes = len(manifest.classes)

    def features(backbone, loader, device):
        n = manifest.num_images("train" if loader == "loader-1" else "val")
        g = torch.Generator().manual_seed(n)
        return torch.randn(n, 8, generator=g), torch.arange(n) % classes

    votes = []
    real_accuracy = knn_module.knn_accuracy

    def accuracy(*args, **kwargs):
        votes.append(kwargs)
        return real_accuracy(*args, **kwargs)

    monkeypatch.setattr(knn_module, "extract_features", features)
    monkeypatch.setattr(knn_module, "knn_accuracy", accuracy)
    result = knn_module._knn_stage(recipe, "random", tmp_path / "knn", DistInfo())
    assert [(c["beton"], c["split"]) for c in spy.calls] == [("train.beton", "val"),
                                                            ("val.beton", "val")]  # no augmentation
    for call, split in zip(spy.calls, ("train", "val")):
        assert call["batch"] == spec["batch_size"] and call["res"] == spec["res"]
        assert call["resize_ratio"] == pytest.approx(spec["res"] / spec["resize"])
        assert np.array_equal(call["indices"], np.arange(manifest.num_images(split)))
    assert votes == [{"k": spec["k"], "temperature": spec["temperature"], "sharded": True}]
    assert result["settings"]["k"] == spec["k"]
    assert result["settings"]["temperature"] == spec["temperature"]
    assert result["protocol_file"].endswith(f"protocols/{name}.yaml")


def test_knn_distinct_k_and_temperature(tiny_dataset, tmp_path, monkeypatch):
    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_dataset), {"eval.protocol": "smoke"})
    recipe = recipe.with_overrides({"knn.k": 3, "knn.temperature": 0.5, "knn.batch_size": 12,
                                    "knn.res": 14, "knn.resize": 21})
    spy = LoaderSpy()
    monkeypatch.setattr(knn_module, "make_eval_loader", spy)
    monkeypatch.setattr(knn_module, "_FEATURE_MEMO", {})  # no features kept by an earlier test
    monkeypatch.setattr(knn_module, "set_stage_threads", lambda *a: None)
    monkeypatch.setattr(knn_module, "extract_features",
                        lambda b, loader, d: (torch.eye(10), torch.arange(10)))
    votes = []
    monkeypatch.setattr(knn_module, "knn_accuracy", lambda *a, **kw: votes.append(kw) or (1.0, 2.0))
    knn_module._knn_stage(recipe, "random", tmp_path / "knn", DistInfo())
    assert votes == [{"k": 3, "temperature": 0.5, "sharded": True}]
    assert [(c["batch"], c["res"], c["resize_ratio"]) for c in spy.calls] == [(12, 14, 14 / 21)] * 2
