"""bench/gpu_check.py --device cpu --quick end to end: the device file it writes, and that
its checks compared real numbers (recomputed here from what it recorded)."""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from ffcv_bt.reporting import device_profile

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("devices")
    before = set(device_profile.DEVICES_DIR.glob("*.json")) if device_profile.DEVICES_DIR.is_dir() else set()
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--device", "cpu",
                           "--quick", "--out", str(out)], env=ENV, cwd=REPO, capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = list(out.glob("*.json"))
    assert len(files) == 1 and files[0].name.startswith("cpu-")
    after = set(device_profile.DEVICES_DIR.glob("*.json")) if device_profile.DEVICES_DIR.is_dir() else set()
    assert after == before, "a CPU check must not write into results/devices"
    return device_profile.load(files[0]), proc.stdout


@pytest.mark.slow  # the full check with ffcv; the default suite runs the bare-node one
@pytest.mark.timeout(450)
def test_device_file_content(quick_run: tuple[dict, str]) -> None:
    profile, stdout = quick_run
    assert profile["device_type"] == "cpu" and profile["capability"] is None
    assert profile["command"] == "python -m bench.gpu_check --device cpu --quick --out " + \
        profile["command"].split("--out ")[1]
    steps = profile["checks"]["steps"]
    assert {r["res"] for r in steps} == {16, 32} and all(r["precision"] == "fp32" for r in steps)
    for res, entry in profile["pretrain"].items():
        record = next(r for r in steps if r["res"] == int(res))
        # images/s is the batch over the measured seconds per step
        assert entry["images_per_s"] == pytest.approx(16 / record["seconds_per_step"])
        assert entry["images_per_s"] == record["images_per_s"]
        losses = record["losses"]
        assert len(losses) == 1 + 3 and len(set(losses)) == 4
        assert record["falling"] == (statistics.mean(losses[-3:]) < losses[0]) is True
    loader = profile["loader"]
    for res in ("16", "32"):
        assert loader["pairs_per_s_per_core"][res] * loader["cores"] == pytest.approx(loader["pairs_per_s"][res])
        assert device_profile.loader_cores_needed(profile, int(res)) == pytest.approx(
            profile["pretrain"][res]["images_per_s"] / loader["pairs_per_s_per_core"][res])
    assert profile["eval_images_per_s"] > 0
    assert profile["checks"]["ok"] is True
    assert all(e["setting"] == "recipe" and e["ddp_factor"] is None  # 1 rank: no DDP cost applied
               for e in profile["pretrain"].values())
    jit = profile["checks"]["jit_compiles"]
    assert jit["compiles"] >= 1 and jit["seconds"] > 0  # FFCV's pipelines, compiled per process
    assert "loader cores/GPU" in stdout and "checkpoint resume (fp32)" in stdout


@pytest.mark.slow  # the full check with ffcv; the default suite runs the bare-node one
@pytest.mark.timeout(450)
def test_resume_compared_real_losses(quick_run: tuple[dict, str]) -> None:
    resume = quick_run[0]["checks"]["checkpoint_resume"]
    first, again = resume["losses_uninterrupted"], resume["losses_resumed"]
    assert len(first) == 3 and first == again  # exactly equal on a CPU in fp32
    assert resume["resumed_at_epoch_step"] == [1, 3]
    assert resume["max_weight_difference"] == 0.0 and resume["max_relative_difference"] == 0.0
    # They are the losses of new steps: different from each other and from epoch 0's.
    assert len(set(first)) == 3 and not set(first) & set(resume["epoch0_losses"])
    assert len(resume["epoch0_losses"]) == 3


@pytest.mark.slow  # the full check with ffcv; the default suite runs the bare-node one
@pytest.mark.timeout(450)
def test_torchrun_and_linear_probe(quick_run: tuple[dict, str]) -> None:
    checks = quick_run[0]["checks"]
    ddp = checks["torchrun"]
    assert ddp["returncode"] == 0 and ddp["world_size"] == 1 and ddp["backend"] == "gloo"
    assert ddp["batch_norm"] == "GlobalBatchNorm" and ddp["ddp"] == "DistributedDataParallel"
    # Same initial weights and batch as the plain step at that resolution: under DDP with
    # global batch norm the first loss is the same up to the normalisation's rounding.
    plain = next(r for r in checks["steps"] if r["res"] == ddp["res"])
    assert ddp["losses"][0] == pytest.approx(plain["losses"][0], rel=1e-4)
    lin = checks["linear_probe"]
    assert 0.0 <= lin["top1_after_one_epoch"] <= 100.0 and lin["images_per_s"] > 0
    # bf16 features differ from fp32 ones, but by a bf16-sized amount
    assert 0.0 < lin["features_max_abs_diff_over_max_abs"] < 0.05


@pytest.mark.slow  # the full check with ffcv; the default suite runs the bare-node one
@pytest.mark.timeout(450)
def test_device_augment_check(quick_run: tuple[dict, str]) -> None:
    """aug.device gpu, run on the CPU in quick mode: the same views as the numba loader
    (exactly, here) and a time for every resolution of the plan."""
    augment = quick_run[0]["checks"]["device_augment"]
    assert augment["ok"] and augment["max_level_difference_to_numba_path"] == 0.0
    assert set(augment["device_ms_per_pair"]) == set(augment["workers_pairs_per_s"]) == {"16", "32"}
    assert all(ms > 0 for ms in augment["device_ms_per_pair"].values())


MISSING_ON_GPU_NODES = ("ffcv", "fastargs", "submitit", "terminaltables", "assertpy",
                        "pytorch_pfn_extras")


@pytest.mark.timeout(600)
def test_bare_node_runs_the_torch_phases_and_skips_the_loader(tmp_path: Path) -> None:
    """As on a GPU node without ffcv, fastargs, submitit, ...: each of them shadowed by a
    package that fails to import. bench/gpu_node.sh runs the torch-only phases, says why
    the loader phases were skipped, and leaves a complete device file without a loader."""
    shadow = tmp_path / "shadow"
    for name in MISSING_ON_GPU_NODES:
        (shadow / name).mkdir(parents=True)
        (shadow / name / "__init__.py").write_text(f"raise ImportError('no {name} on this node')\n")
    out = tmp_path / "out"
    env = {**ENV, "PYTHONPATH": f"{shadow}{os.pathsep}{REPO}", "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_node.sh"), str(out), "--minutes", "8",
                           "--device", "cpu", "--quick"], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=560)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "loader phases skipped (ffcv not importable: ImportError: no ffcv" in proc.stdout
    assert "cross-rank paths not exercised" in proc.stdout
    files = [f for f in out.glob("*.json") if not f.name.endswith(".partial.json")]
    assert len(files) == 1
    profile = device_profile.load(files[0])
    assert profile["loader"] is None and profile["partial"] is False and profile["checks"]["ok"]
    checks = profile["checks"]
    assert checks["loader_phases"].startswith("skipped: ImportError")
    assert checks["jit_compiles"]["compiles"] == len(checks["jit_compiles"]["each"])  # counted
    assert [r["res"] for r in checks["steps"]][:1] == [32]  # the largest resolution first
    resume = checks["checkpoint_resume_torch"]
    assert resume["losses_uninterrupted"] == resume["losses_resumed"]  # exact on a CPU
    assert len(set(resume["losses_uninterrupted"])) == len(resume["losses_uninterrupted"])
    assert profile["eval_images_per_s"] == checks["frozen_forward"]["fp32_images_per_s"] > 0
    assert (out / "gpu_check.log").read_text().count("a. pretraining steps") == 1


def test_a_driver_torch_cannot_use_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from ffcv_bt.distributed import process_group
    from ffcv_bt.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(process_group, "nvidia_driver_version",
                        lambda: "NVRM version: NVIDIA UNIX x86_64 Kernel Module  470.82.01")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(ConfigError, match=r"CUDA build .*470\.82\.01"):
        process_group.check_cuda_usable()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the CPU asked for
    process_group.check_cuda_usable()
    monkeypatch.setattr(process_group, "nvidia_driver_version", lambda: None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    process_group.check_cuda_usable()  # no NVIDIA driver at all: a CPU machine
