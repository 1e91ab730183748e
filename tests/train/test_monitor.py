"""The online pretraining monitor: its measures against independent computations, the
collapse warning, and a tiny pretraining run with the monitor on."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from recipes import write_tiny_recipe

from ffcv_bt.method.objective import barlow_twins_loss, correlation_terms
from ffcv_bt.train.monitor import (
    collapse_messages,
    embedding_std,
    evenly_spaced,
    rankme,
)


def _orthonormal(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=generator, dtype=torch.float64))
    return q


@pytest.mark.parametrize("r", [1, 5, 32])
def test_rankme_of_r_equal_singular_values_is_r(r: int) -> None:
    g = torch.Generator().manual_seed(r)
    u, v = _orthonormal(200, r, g), _orthonormal(64, r, g)
    z = 3.0 * u @ v.T  # rank r, every non-zero singular value 3
    assert rankme(z) == pytest.approx(r, rel=1e-3)  # the eps adds ~1e-4 at 64 dims


def test_rankme_grows_with_spread_of_the_spectrum() -> None:
    g = torch.Generator().manual_seed(0)
    u, v = _orthonormal(100, 8, g), _orthonormal(16, 8, g)
    skewed = u @ torch.diag(torch.tensor([100.0] + [1.0] * 7, dtype=torch.float64)) @ v.T
    assert 1.0 < rankme(skewed) < 3.0
    assert rankme(torch.zeros(10, 4)) == 1.0


def test_embedding_std_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 40)) + 0.5
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    expected = unit.std(axis=0, ddof=1).mean()
    assert embedding_std(torch.from_numpy(z).float()) == pytest.approx(expected, rel=1e-5)
    # Gaussian directions spread over the sphere: ~1/sqrt(d)
    iso = rng.normal(size=(5000, 64))
    assert embedding_std(torch.from_numpy(iso)) == pytest.approx(1 / 8, rel=0.02)


@pytest.mark.parametrize("n,d", [(16, 64), (128, 8)])
def test_correlation_terms_recombine_into_the_loss(n: int, d: int) -> None:
    g = torch.Generator().manual_seed(n)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64)
    z2 = z1 + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)
    on, off = correlation_terms(z1, z2)
    loss = barlow_twins_loss(z1, z2, lambd=0.0051, formulation="cross")
    assert on + 0.0051 * off == pytest.approx(float(loss), rel=1e-10)


def test_evenly_spaced_keeps_every_class_of_a_class_sorted_split() -> None:
    labels = np.repeat(np.arange(10), 100)  # written class by class
    picked = evenly_spaced(len(labels), 50)
    assert len(picked) == len(set(picked.tolist())) == 50
    assert np.bincount(labels[picked]).tolist() == [5] * 10
    assert evenly_spaced(7, 100).tolist() == list(range(7))


def test_collapse_messages() -> None:
    assert collapse_messages(50.0, 0.1, n=1000, dim=128, rank_fraction=0.1, std_threshold=0.01) == []
    low = collapse_messages(2.0, 0.001, n=1000, dim=128, rank_fraction=0.1, std_threshold=0.01)
    assert len(low) == 2 and "RankMe" in low[0] and "std" in low[1]


def _tiny_recipe(tmp_path: Path, data: Path, epochs: int, every: int):
    from ffcv_bt.config import load_recipe

    extra = (f"monitor: {{every_epochs: {every}, train_images: 100, val_images: 50, knn_k: 5, "
             f"knn_temperature: 0.07, collapse_rank_fraction: 0.05, collapse_std: 0.001}}\n")
    return load_recipe(write_tiny_recipe(tmp_path, data, epochs=epochs, extra=extra))


def test_a_projector_with_constant_output_triggers_the_collapse_warning_once(
        tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from ffcv_bt.distributed.process_group import DistInfo
    from ffcv_bt.stage.clock import StageClock
    from ffcv_bt.train.monitor import TrainingMonitor
    from ffcv_bt.train.pretrain import build_model

    recipe = _tiny_recipe(tmp_path, tiny_dataset, epochs=2, every=1)
    model = build_model(recipe)
    torch.nn.init.zeros_(model.projector[-1].weight)  # every embedding is the zero vector
    (tmp_path / "out").mkdir()
    monitor = TrainingMonitor(recipe, tmp_path / "out", DistInfo())
    clock = StageClock(torch.device("cpu"))
    first = monitor.run(model, 1, 10, clock)
    second = monitor.run(model, 2, 20, clock)
    monitor.close()
    assert first["rankme"] == pytest.approx(1.0) and first["embedding_std"] == 0.0
    assert len(first["collapse"]) == 2 and len(second["collapse"]) == 2
    assert capsys.readouterr().err.count("look collapsed") == 1
    records = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["monitor", "monitor"]
    assert all(r["collapse"] for r in records)


def test_pretraining_with_the_monitor_writes_records_plot_and_separate_hours(
        tiny_dataset: Path, tmp_path: Path) -> None:
    from ffcv_bt.distributed.process_group import DistInfo
    from ffcv_bt.train.pretrain import Pretrainer

    recipe = _tiny_recipe(tmp_path, tiny_dataset, epochs=3, every=2)
    out = tmp_path / "run" / "pretrain"
    result = Pretrainer(recipe, out, DistInfo()).run()
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    monitor = [r for r in records if r.get("kind") == "monitor"]
    assert [r["epochs_done"] for r in monitor] == [2, 3]  # every 2 epochs, and the last
    for r in monitor:
        assert 0.0 <= r["knn_top1"] <= r["knn_top5"] <= 100.0
        assert 1.0 <= r["rankme"] <= r["rankme_max"] == 50
        assert r["embedding_std"] > 0 and r["val_on_diag"] >= 0 and r["val_off_diag"] >= 0
        assert r["val_images"] == 50 and r["train_images"] == 100
    assert any("loss" in r for r in records if r.get("kind") is None)
    assert result["monitor_device_hours"] > 0 and result["device_hours"] > 0
    assert monitor[-1]["monitor_device_hours"] == pytest.approx(result["monitor_device_hours"])
    assert json.loads((out / "monitor_state.json").read_text())["last_epoch"] == 3
    assert (out / "monitor.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The monitor leaves training alone: the same losses and weights without it.
    plain = Pretrainer(_tiny_recipe(tmp_path, tiny_dataset, epochs=3, every=0),
                       tmp_path / "plain", DistInfo())
    plain_result = plain.run()
    plain_records = [json.loads(line) for line in (tmp_path / "plain" / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in plain_records] == [r["loss"] for r in records if r.get("kind") is None]
    ours = torch.load(result["backbone"])
    for key, value in torch.load(plain_result["backbone"]).items():
        assert torch.equal(value, ours[key]), key
    assert plain_result["monitor_device_hours"] == 0.0
    assert not (tmp_path / "plain" / "tensorboard").exists()
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_a_monitor_pass_cut_short_runs_on_restart_and_its_time_is_kept(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed during the monitor after the last epoch's checkpoint: the restart runs the
    missed pass before finishing, and the monitor's earlier seconds carry over."""
    from ffcv_bt.distributed.process_group import DistInfo
    from ffcv_bt.train.monitor import TrainingMonitor
    from ffcv_bt.train.pretrain import Pretrainer

    recipe = _tiny_recipe(tmp_path, tiny_dataset, epochs=2, every=1)
    out = tmp_path / "out"
    real_run = TrainingMonitor.run

    def dies_at_epoch_2(self, model, epochs_done, step, clock):
        if epochs_done == 2:
            raise KeyboardInterrupt("killed")
        return real_run(self, model, epochs_done, step, clock)

    monkeypatch.setattr(TrainingMonitor, "run", dies_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        Pretrainer(recipe, out, DistInfo()).run()
    first_seconds = json.loads((out / "monitor_state.json").read_text())["seconds"]
    assert first_seconds > 0 and not (out / "result.json").exists()
    monkeypatch.setattr(TrainingMonitor, "run", real_run)
    result = Pretrainer(recipe, out, DistInfo()).run()
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epochs_done"] for r in records if r.get("kind") == "monitor"] == [1, 2]
    assert result["monitor_device_seconds"] > first_seconds
