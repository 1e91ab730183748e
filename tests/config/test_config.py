"""Strict recipe loading: every recipe loads; bad input names the file and key."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ffcv_bt.config import RULES_DIR, ConfigError, load_recipe, parse_overrides

RECIPES = sorted(RULES_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    assert all(v is not None for section in recipe.values.values() for v in section.values())


def test_1000ep_is_the_reference_recipe() -> None:
    r = load_recipe(RULES_DIR / "1000ep.yaml")
    assert r.model.arch == "resnet50" and r.model.projector == "8192-8192-8192"
    assert r.model.zero_init_residual is True
    assert r.loss.lambd == 0.0051
    o = r.optim
    # the first release: one learning rate, loss scale 0.024 / 16 GPUs
    assert (o["batch_size"], o["epochs"], o["lr_weights"], o["lr_biases"]) == (2048, 1000, 0.2, 0.2)
    assert r.loss.scale_loss == 0.0015
    assert (o["weight_decay"], o["momentum"], o["eta"], o["warmup_epochs"], o["final_lr_ratio"]) == \
        (1e-6, 0.9, 0.001, 10.0, 0.001)
    a = r.aug
    assert (a["blur_p1"], a["blur_p2"], a["solarize_p1"], a["solarize_p2"]) == (1.0, 0.1, 0.0, 0.2)
    assert (a["brightness"], a["contrast"], a["saturation"], a["hue"], a["jitter_p"],
            a["grayscale_p"], a["scale_min"]) == (0.4, 0.4, 0.2, 0.1, 0.8, 0.2, 0.08)
    assert r.resolution.min_res == r.resolution.max_res == 224
    assert r.linear.epochs == 100 and r.linear.batch_size == 256
    assert r.semi.epochs == 20 and r.semi.weight_decay == 0.0
    assert (r.linear.lr, r.semi.lr_backbone, r.semi.lr_classifier) == \
        (0.1, 0.002, 0.5)


def test_release2_recipe_and_protocol() -> None:
    r = load_recipe(RULES_DIR / "1000ep-release2.yaml")
    assert (r.loss.scale_loss, r.optim.lr_weights, r.optim.lr_biases) == \
        (0.0625, 0.2, 0.0048)
    assert (r.linear.lr, r.semi.lr_backbone, r.semi.lr_classifier) == \
        (0.3, 0.005, 0.5)


def _write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    """A recipe file; without its own ``extends`` it extends rules/base.yaml."""
    path = tmp_path / name
    if "extends:" not in text:
        text = f"extends: {RULES_DIR / 'base.yaml'}\n" + text
    path.write_text(text)
    return path


def test_layering_and_overrides(tmp_path: Path) -> None:
    base = _write(tmp_path, "data:\n  dir: x\noptim:\n  epochs: 7\n  batch_size: 64\n", "b.yaml")
    child = _write(tmp_path, f"extends: {base.name}\noptim:\n  epochs: 9\n")
    r = load_recipe(child, parse_overrides(["--optim.lr_weights=0.5", "--train.seed", "3"]))
    assert r.optim.epochs == 9 and r.optim.batch_size == 64
    assert r.optim.lr_weights == 0.5 and r.train.seed == 3
    assert r.data.dir == "x"
    assert r.files == [str(RULES_DIR / "base.yaml"), str(base.resolve()), str(child.resolve())]


def test_defaults_are_stated_once_in_base_yaml(tmp_path: Path) -> None:
    """No key has a default in code: a recipe that does not extend base.yaml must set them
    all, and the error says so."""
    lone = tmp_path / "lone.yaml"
    lone.write_text("data:\n  dir: x\neval:\n  protocol: standard\n")
    with pytest.raises(ConfigError, match=r"required key '\w+\.\w+' is not set; extend rules/base.yaml"):
        load_recipe(lone)


@pytest.mark.parametrize("text, needles", [
    ("data:\n  dir: x\nopitm:\n  epochs: 3\n", ["opitm", "unknown section", "optim"]),
    ("data:\n  dir: x\noptim:\n  epoch: 3\n", ["optim.epoch", "unknown key", "epochs"]),
    ("data:\n  dir: x\noptim:\n  epochs: 2.5\n", ["optim.epochs", "2.5", "an int"]),
    ("data:\n  dir: x\noptim:\n  epochs: true\n", ["optim.epochs", "an int"]),
    ("data:\n  dir: x\ntrain:\n  compile: maybe\n", ["train.compile", "boolean"]),
    ("data:\n  dir: x\naug:\n  blur_p1: 1.5\n", ["aug.blur_p1", "between 0.0 and 1.0"]),
    ("data:\n  dir: x\nloss:\n  formulation: fast\n", ["loss.formulation", "gram"]),
    ("data:\n  dir: x\nlinear:\n  epochs: 5\n", ["linear", "protocol"]),
    ("data:\n  dir: x\nresolution:\n  min_res: 256\n  max_res: 224\n", ["min_res"]),
    ("data:\n  dir: x\nmodel:\n  projector: 8192-x\n", ["model.projector"]),
    ("data:\n  dir: x\neval:\n  protocol: nope\n", ["nope", "standard"]),
])
def test_bad_recipes_name_file_and_key(tmp_path: Path, text: str, needles: list[str]) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    message = str(info.value)
    assert str(path.resolve()) in message or "rules/protocols" in message
    for needle in needles:
        assert needle in message, message


def test_bad_override_is_named() -> None:
    with pytest.raises(ConfigError, match="command line.*optim.momentum"):
        load_recipe(RULES_DIR / "100ep.yaml", {"optim.momentum": "high"})


def test_cli_exits_nonzero_on_bad_recipe(tmp_path: Path) -> None:
    path = _write(tmp_path, "data:\n  dir: x\noptim:\n  epochz: 3\n")
    proc = subprocess.run([sys.executable, "-m", "ffcv_bt.config", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "optim.epochz" in proc.stderr and str(path.resolve()) in proc.stderr


def test_recipe_is_read_only_with_attribute_access() -> None:
    r = load_recipe(RULES_DIR / "1000ep.yaml")
    assert r.optim.epochs == 1000 and dict(r.optim)["epochs"] == 1000
    with pytest.raises(AttributeError, match="optim.epochs"):
        r.optim.epochs = 3
    with pytest.raises(AttributeError, match="has no key 'epoch'"):
        _ = r.optim.epoch
    with pytest.raises(AttributeError, match="no section 'optimizer'"):
        _ = r.optimizer
    r.values["optim"]["epochs"] = 3  # a copy: the recipe does not change
    assert r.optim.epochs == 1000
    assert r.with_overrides({"optim.epochs": "7"}).optim.epochs == 7 and r.optim.epochs == 1000


def test_describe_lists_every_key_with_its_base_value() -> None:
    from ffcv_bt.config import describe, sections

    text = describe()
    assert "  optim.batch_size = 2048: GLOBAL batch size" in text
    assert sum(len(keys) for keys in sections().values()) == sum(
        line.startswith("  ") for line in text.splitlines())


def test_yaml_is_read_only_in_config() -> None:
    """One configuration mechanism: recipes, protocols and sweeps go through ffcv_bt.config."""
    repo = RULES_DIR.parent
    readers = sorted(str(p.relative_to(repo)) for folder in ("ffcv_bt", "bench")
                     for p in (repo / folder).rglob("*.py") if "import yaml" in p.read_text())
    assert readers == ["ffcv_bt/config.py"]
